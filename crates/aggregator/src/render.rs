//! A day row as `GET /metrics` serves it: one `DayAggregatedMetrics` object of
//! `metrics-api.md`, keys in the contract's order.
//!
//! The writer renders every row it writes ([`render_day`]) and stores the text beside the row's
//! values (`rendered`), so that a read joins stored fragments ([`read_rendered`]); readers render
//! the rows that have none yet ([`DayJson`]). Both go through this one serialisation, so a
//! fragment is byte for byte what a reader would render from the row.
//!
//! [`read_rendered`]: crate::read_rendered

use bigdecimal::BigDecimal;
use chrono::{Datelike, NaiveDate};
use serde::ser::{Error as _, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::models::DailyMetrics;
use metrics_events::Tokens;

/// A row's JSON, as its `rendered` column keeps it.
///
/// # Errors
///
/// Serialisation errors, which only a stored `model_metrics` that is not a list of objects with
/// string keys could cause.
pub fn render_day(row: &DailyMetrics) -> serde_json::Result<String> {
    // About 650 bytes with one model.
    let mut out = Vec::with_capacity(720);
    serde_json::to_writer(&mut out, &DayJson(row))?;
    // serde_json writes UTF-8 only.
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// One `DayAggregatedMetrics`, fields in the contract's order.
#[derive(Debug, Clone, Copy)]
pub struct DayJson<'a>(pub &'a DailyMetrics);

impl Serialize for DayJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = self.0;
        let mut out = serializer.serialize_struct("DayAggregatedMetrics", 13)?;
        out.serialize_field("id", &row.id)?;
        out.serialize_field("agent_runs_count", &row.agent_runs_count)?;
        out.serialize_field("agent_sessions_count", &row.agent_sessions_count)?;
        out.serialize_field("team_runs_count", &row.team_runs_count)?;
        out.serialize_field("team_sessions_count", &row.team_sessions_count)?;
        out.serialize_field("workflow_runs_count", &row.workflow_runs_count)?;
        out.serialize_field("workflow_sessions_count", &row.workflow_sessions_count)?;
        out.serialize_field("users_count", &row.users_count)?;
        out.serialize_field("token_metrics", &TokenMetrics(row))?;
        out.serialize_field("model_metrics", &Models(&row.model_metrics))?;
        out.serialize_field("date", &Day(row.date))?;
        out.serialize_field("created_at", &row.created_at.timestamp())?;
        out.serialize_field("updated_at", &row.updated_at.timestamp())?;
        out.end()
    }
}

/// `model_metrics`, stored by the aggregator as `[{model_id, model_provider, count}]` in the
/// contract's row order; written with each object's keys in the contract's order too (a JSON
/// value would write them alphabetically).
struct Models<'a>(&'a serde_json::Value);

impl Serialize for Models<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(models) = self.0.as_array() else {
            return self.0.serialize(serializer);
        };
        let mut out = serializer.serialize_seq(Some(models.len()))?;
        for model in models {
            out.serialize_element(&Model(model))?;
        }
        out.end()
    }
}

struct Model<'a>(&'a serde_json::Value);

impl Serialize for Model<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("ModelMetrics", 3)?;
        out.serialize_field("model_id", &self.0["model_id"])?;
        out.serialize_field("model_provider", &self.0["model_provider"])?;
        out.serialize_field("count", &self.0["count"])?;
        out.end()
    }
}

/// The fourteen `token_metrics` keys of `metrics-api.md`: the contract's nine, Agno's four
/// aliases, and `cost`.
struct TokenMetrics<'a>(&'a DailyMetrics);

impl Serialize for TokenMetrics<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = self.0;
        let mut out = serializer.serialize_struct("TokenMetrics", 14)?;
        for (name, count) in Tokens::NAMES.into_iter().zip(row.tokens.counts()) {
            out.serialize_field(name, &count)?;
        }
        out.serialize_field("audio_total_tokens", &row.tokens.audio_tokens)?;
        out.serialize_field("audio_input_tokens", &row.tokens.input_audio_tokens)?;
        out.serialize_field("audio_output_tokens", &row.tokens.output_audio_tokens)?;
        out.serialize_field("cache_read_tokens", &row.tokens.cached_tokens)?;
        // The exact stored sum, digit for digit, as a JSON number in the shape of a float (as
        // Agno's): a double would round it, and past its range would even become `null`.
        let cost = serde_json::value::RawValue::from_string(decimal_number(&row.cost))
            .map_err(S::Error::custom)?;
        out.serialize_field("cost", &cost)?;
        out.end()
    }
}

/// The exact value of `value` as JSON number text that always reads as a float: plain
/// (`0.25`, `12.0`) between 1e-6 and 1e21, else in exponent form (`3.4e308`, `1e-7`), as
/// JavaScript and serde_json write doubles, but with every digit of the decimal.
pub fn decimal_number(value: &BigDecimal) -> String {
    let (unscaled, scale) = value.normalized().as_bigint_and_exponent();
    let text = unscaled.to_string();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", text.as_str()),
    };
    if digits == "0" {
        return "0.0".to_owned();
    }
    let len = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // value = 0.<digits> x 10^point
    let point = len.saturating_sub(scale);
    match usize::try_from(point) {
        _ if !(-5..=21).contains(&point) => {
            let exponent = point - 1;
            match digits.split_at(1) {
                (first, "") => format!("{sign}{first}e{exponent}"),
                (first, rest) => format!("{sign}{first}.{rest}e{exponent}"),
            }
        }
        Ok(point) if point >= digits.len() => {
            format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
        }
        Ok(point) if point > 0 => format!("{sign}{}.{}", &digits[..point], &digits[point..]),
        _ => format!(
            "{sign}0.{}{digits}",
            "0".repeat(usize::try_from(-point).unwrap_or_default())
        ),
    }
}

/// A day as `YYYY-MM-DDT00:00:00Z`.
struct Day(NaiveDate);

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T00:00:00Z",
            self.0.year(),
            self.0.month(),
            self.0.day()
        )
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_metrics_keep_the_contracts_key_order() {
        let stored = serde_json::json!([
            {"count": 2, "model_id": "gpt-4o", "model_provider": "OpenAI"},
            {"count": 1, "model_id": "claude", "model_provider": ""},
        ]);
        assert_eq!(
            serde_json::to_string(&Models(&stored)).unwrap(),
            r#"[{"model_id":"gpt-4o","model_provider":"OpenAI","count":2},{"model_id":"claude","model_provider":"","count":1}]"#
        );
    }

    #[test]
    fn costs_render_with_every_digit_as_a_json_float() {
        for (stored, rendered) in [
            ("0", "0.0"),
            ("0.000", "0.0"),
            ("12", "12.0"),
            ("1200.00", "1200.0"),
            ("0.25", "0.25"),
            ("0.3", "0.3"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("0.00000012", "1.2e-7"),
            ("123456789012345678901", "123456789012345678901.0"),
            ("1234567890123456789012", "1.234567890123456789012e21"),
            (
                "12345678901234567890.123456789",
                "12345678901234567890.123456789",
            ),
            (
                "340000000000000000000000000000000000000000000000000000000000000000000000000000\
                 000000000000000000000000000000000000000000000000000000000000000000000000000000\
                 000000000000000000000000000000000000000000000000000000000000000000000000000000\
                 000000000000000000000000000000000000000000000000000000000000000000000000000",
                "3.4e308",
            ),
            (
                "340000000000000000000000.5",
                "3.400000000000000000000005e23",
            ),
            ("-2.5", "-2.5"),
        ] {
            let value: BigDecimal = stored.parse().unwrap();
            let text = decimal_number(&value);
            assert_eq!(text, rendered, "{stored}");
            // A JSON number in a float's shape, and the same decimal value.
            assert!(serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok());
            assert!(text.contains(['.', 'e']), "{text}");
            assert_eq!(text.parse::<BigDecimal>().unwrap(), value, "{stored}");
        }
    }

    #[test]
    fn days_render_at_utc_midnight() {
        let day = Day(NaiveDate::from_ymd_opt(812, 3, 4).unwrap());
        assert_eq!(day.to_string(), "0812-03-04T00:00:00Z");
    }

    #[test]
    fn a_row_renders_as_one_object_in_the_contracts_order() {
        let now = chrono::DateTime::from_timestamp(1_753_993_741, 0).unwrap();
        let mut row = DailyMetrics::empty(1, NaiveDate::from_ymd_opt(2025, 7, 31).unwrap(), now);
        row.id = uuid::Uuid::nil();
        row.agent_runs_count = 2;
        row.users_count = 1;
        row.tokens.input_tokens = 7;
        row.cost = "0.25".parse().unwrap();
        row.model_metrics = serde_json::json!([
            {"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 2}
        ]);
        let text = render_day(&row).unwrap();
        assert!(
            text.starts_with(
                r#"{"id":"00000000-0000-0000-0000-000000000000","agent_runs_count":2,"#
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                r#""model_metrics":[{"model_id":"gpt-4o","model_provider":"OpenAI","count":2}],"date":"2025-07-31T00:00:00Z","created_at":1753993741,"updated_at":1753993741}"#
            ),
            "{text}"
        );
        assert!(text.contains(r#""input_tokens":7,"#), "{text}");
        assert!(text.contains(r#""cost":0.25}"#), "{text}");
    }
}
