//! Encoding events back into CloudEvents JSON, for producers written in Rust and for tests.
//!
//! `decode(encode(event)) == event` for every valid event: the encoder writes the contract's
//! names and every count, so nothing is left to defaults. What the wire cannot carry (a negative
//! count, a cost no JSON double holds exactly) is an [`EncodeError`], never a different value.

use std::str::FromStr;

use bigdecimal::{BigDecimal, ToPrimitive};
use serde_json::Value;

use crate::event::{Event, EventKind, RunCompleted, SessionCreated};
use crate::wire::{
    CloudEvent, RunCompletedData, RunCompletedType, RunMetrics, SessionCreatedData,
    SessionCreatedType, SpecVersion,
};

/// Why an event could not be written as the contract's JSON.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A token count is negative; the wire carries counts as non-negative integers.
    #[error("`{field}` is {value}; a token count is non-negative")]
    NegativeCount {
        /// The count's name in `data.metrics`.
        field: &'static str,
        /// The count.
        value: i64,
    },
    /// The cost has no exact JSON double (the wire's number), so it would be read back as a
    /// different value.
    #[error("cost {0} has no exact JSON double")]
    InexactCost(BigDecimal),
    /// Serialising the event failed.
    #[error("serialising the event")]
    Json(#[from] serde_json::Error),
}

/// The CloudEvents structured-mode JSON of `event`.
///
/// # Errors
///
/// [`EncodeError`] when the event holds a value the wire cannot carry exactly.
pub fn encode(event: &Event) -> Result<Value, EncodeError> {
    let json = match &event.kind {
        EventKind::SessionCreated(session) => serde_json::to_value(envelope(
            event,
            SessionCreatedType::SessionCreated,
            session_data(session),
        ))?,
        EventKind::RunCompleted(run) => serde_json::to_value(envelope(
            event,
            RunCompletedType::RunCompleted,
            run_data(run)?,
        ))?,
    };
    Ok(json)
}

fn envelope<T, D>(event: &Event, event_type: T, data: D) -> CloudEvent<T, D> {
    CloudEvent {
        specversion: SpecVersion::V1,
        id: event.id.clone(),
        source: event.source.clone(),
        event_type,
        time: event.time.fixed_offset(),
        datacontenttype: Some("application/json".to_owned()),
        data,
    }
}

/// A batch body (`application/cloudevents-batch+json`) of `events`.
///
/// # Errors
///
/// The [`EncodeError`] of the first event that cannot be encoded.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Value, EncodeError> {
    events
        .into_iter()
        .map(encode)
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

fn session_data(session: &SessionCreated) -> SessionCreatedData {
    SessionCreatedData {
        session_id: session.session_id.clone(),
        session_type: session.session_type,
        user_id: session.user_id.clone(),
        agent_id: None,
        team_id: None,
        workflow_id: None,
    }
}

fn run_data(run: &RunCompleted) -> Result<RunCompletedData, EncodeError> {
    let usage = &run.usage;
    let tokens = &usage.tokens;
    let count = |field: &'static str, value: i64| match u64::try_from(value) {
        Ok(count) => Ok(Some(count)),
        Err(_) => Err(EncodeError::NegativeCount { field, value }),
    };
    Ok(RunCompletedData {
        run_id: run.run_id.clone(),
        session_id: run.session_id.clone(),
        session_type: run.session_type,
        user_id: run.user_id.clone(),
        parent_run_id: run.parent_run_id.clone(),
        model: run.model.clone(),
        model_id: None,
        model_provider: run.model_provider.clone(),
        metrics: Some(RunMetrics {
            input_tokens: count("input_tokens", tokens.input_tokens)?,
            output_tokens: count("output_tokens", tokens.output_tokens)?,
            total_tokens: count("total_tokens", tokens.total_tokens)?,
            audio_tokens: count("audio_tokens", tokens.audio_tokens)?,
            input_audio_tokens: count("input_audio_tokens", tokens.input_audio_tokens)?,
            output_audio_tokens: count("output_audio_tokens", tokens.output_audio_tokens)?,
            cached_tokens: count("cached_tokens", tokens.cached_tokens)?,
            cache_write_tokens: count("cache_write_tokens", tokens.cache_write_tokens)?,
            reasoning_tokens: count("reasoning_tokens", tokens.reasoning_tokens)?,
            cost: Some(exact_double(&usage.cost)?),
            ..RunMetrics::default()
        }),
    })
}

/// `cost` as the double that decodes back to it (decoding reads a double's shortest text).
fn exact_double(cost: &BigDecimal) -> Result<f64, EncodeError> {
    let inexact = || EncodeError::InexactCost(cost.clone());
    let double = cost
        .to_f64()
        .filter(|d| d.is_finite())
        .ok_or_else(inexact)?;
    match BigDecimal::from_str(&double.to_string()) {
        Ok(back) if back == *cost => Ok(double),
        _ => Err(inexact()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::event::{SessionType, Tokens, Usage};
    use crate::{Decoded, Limits, decode_event};

    fn run(usage: Usage) -> Event {
        Event {
            source: "test".to_owned(),
            id: "evt-1".to_owned(),
            time: Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap(),
            kind: EventKind::RunCompleted(RunCompleted {
                run_id: "run-1".to_owned(),
                session_id: "s-1".to_owned(),
                session_type: SessionType::Agent,
                user_id: None,
                parent_run_id: None,
                model: None,
                model_provider: None,
                usage,
            }),
        }
    }

    #[test]
    fn a_negative_count_is_an_error_not_its_absolute_value() {
        let event = run(Usage {
            tokens: Tokens {
                cached_tokens: -5,
                ..Tokens::default()
            },
            ..Usage::default()
        });
        match encode(&event) {
            Err(EncodeError::NegativeCount { field, value }) => {
                assert_eq!((field, value), ("cached_tokens", -5));
            }
            other => panic!("expected a negative count error, got {other:?}"),
        }
        assert!(matches!(
            encode_batch([&run(Usage::default()), &event]),
            Err(EncodeError::NegativeCount { .. })
        ));
    }

    #[test]
    fn a_cost_without_an_exact_double_is_an_error() {
        for cost in ["1e400", "0.12345678901234567890123"] {
            let event = run(Usage {
                cost: cost.parse().unwrap(),
                ..Usage::default()
            });
            assert!(
                matches!(encode(&event), Err(EncodeError::InexactCost(_))),
                "{cost}"
            );
        }
    }

    #[test]
    fn valid_events_encode_to_what_decodes_back() {
        let event = run(Usage {
            tokens: Tokens {
                input_tokens: 7,
                total_tokens: 7,
                ..Tokens::default()
            },
            cost: "0.0125".parse().unwrap(),
        });
        let json = encode(&event).unwrap();
        assert_eq!(json["data"]["metrics"]["cached_tokens"], 0);
        match decode_event(json, None, &Limits::default()) {
            Ok(Decoded::Event(decoded)) => assert_eq!(decoded, event),
            other => panic!("expected the event back, got {other:?}"),
        }
    }
}
