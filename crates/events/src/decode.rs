//! Decoding message bodies into validated events, exactly as `events.md` says.
//!
//! A body is one CloudEvent (a JSON object) or a batch (a JSON array of them). Whole-message
//! problems (too large, not JSON, neither an object nor an array, too many events) are a
//! [`MessageError`]; a problem with one event is an [`EventError`] for that event alone, so the
//! valid events of a batch still count. Every error names the event and the field and says what
//! was wrong, because it travels to the producer in the dead-letter header.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::{
    Event, EventKind, MAX_DATE, MIN_DATE, RUN_COMPLETED, RunCompleted, SESSION_CREATED,
    SPEC_VERSION, SessionCreated, Tokens, Usage,
};
use crate::wire::{RunCompletedData, RunMetrics, SessionCreatedData};

/// The size limits of `events.md`; every one is configurable, these are the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message body, in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// The most events in one batch message (default 1,000).
    pub max_batch_events: usize,
    /// The longest `id`, `session_id`, `run_id`, `parent_run_id`, `user_id`, `model` and
    /// `model_provider`, in characters (default 256).
    pub max_id_chars: usize,
    /// The longest `source`, in characters (default 1,024).
    pub max_source_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1000,
            max_id_chars: 256,
            max_source_chars: 1024,
        }
    }
}

/// One decoded element of a message.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every element is an event; boxing would allocate for each of them"
)]
pub enum Decoded {
    /// An event that counts.
    Event(Event),
    /// A well-formed event of a type this version does not read: acknowledged and ignored.
    Ignored(Ignored),
}

impl Decoded {
    /// The event's id.
    pub fn id(&self) -> &str {
        match self {
            Decoded::Event(event) => &event.id,
            Decoded::Ignored(ignored) => &ignored.id,
        }
    }
}

/// An event of a type this version does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Its `source`.
    pub source: String,
    /// Its `id`.
    pub id: String,
    /// Its `type`.
    pub event_type: String,
}

/// A decoded message body: one element for a single event, one per element for a batch.
#[derive(Debug, Clone)]
pub struct Message {
    /// Whether the body was a batch (a JSON array).
    pub is_batch: bool,
    /// Each event, or why it was refused, in the order of the body.
    pub events: Vec<Result<Decoded, EventError>>,
    /// Where each element of [`Message::events`] sits in the body, in bytes: the whole body for
    /// a single event, the element's own JSON text for a batch. A dead letter carries exactly
    /// these bytes (`events.md`), never a re-encoding.
    pub spans: Vec<Range<usize>>,
}

impl Message {
    /// The original bytes of element `index` of `body`, the body this message was decoded from.
    pub fn element<'a>(&self, body: &'a [u8], index: usize) -> Option<&'a [u8]> {
        self.spans
            .get(index)
            .and_then(|span| body.get(span.clone()))
    }
}

/// Why a whole message body was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The body is larger than [`Limits::max_body_bytes`].
    #[error("message body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not JSON (or nests deeper than the parser allows).
    #[error("message body is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON, but neither an event object nor a batch array.
    #[error("message body is a JSON {found}, not an event object or a batch array")]
    NotEventOrBatch {
        /// What the body was instead (`string`, `number`, ...).
        found: &'static str,
    },
    /// The batch holds more than [`Limits::max_batch_events`] events.
    #[error("batch of {len} events is over the limit of {limit} events")]
    BatchTooLarge {
        /// How many events the batch holds.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why one event was refused: which event, which field, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    /// The event's `id`, when it has a readable one.
    pub event_id: Option<String>,
    /// Its position in a batch.
    pub index: Option<usize>,
    /// The offending field as a dotted path (`data.metrics.input_tokens`), when one is at fault.
    pub field: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// The longest stretch of an id quoted back in an error message.
const QUOTED_ID_CHARS: usize = 64;

/// The longest reason kept: serde quotes the value it refuses (`unknown variant `...``), and the
/// reason travels in the dead-letter header, which has to fit in one AMQP content-header frame.
const REASON_CHARS: usize = 512;

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.index {
            write!(f, "batch element {index}")?;
        }
        match (&self.event_id, self.index) {
            (Some(id), Some(_)) => write!(f, " (event `{}`)", Quoted(id, QUOTED_ID_CHARS))?,
            (Some(id), None) => write!(f, "event `{}`", Quoted(id, QUOTED_ID_CHARS))?,
            (None, Some(_)) => {}
            (None, None) => f.write_str("event")?,
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Text shortened to its first characters for quoting, so that a hostile value cannot blow up a
/// log line or a header.
struct Quoted<'a>(&'a str, usize);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(self.1) {
            Some((end, _)) => write!(f, "{}...", &self.0[..end]),
            None => f.write_str(self.0),
        }
    }
}

/// Decodes a message body: one event or a batch of events.
///
/// # Errors
///
/// [`MessageError`] when the body as a whole is unusable; errors of single events are returned
/// inside [`Message::events`].
pub fn decode_message(body: &[u8], limits: &Limits) -> Result<Message, MessageError> {
    if body.len() > limits.max_body_bytes {
        return Err(MessageError::TooLarge {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    // A batch is split into its elements' raw JSON first, so that each element's original bytes
    // are known; then each element is parsed on its own.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(MessageError::NotJson)?;
        if items.len() > limits.max_batch_events {
            return Err(MessageError::BatchTooLarge {
                len: items.len(),
                limit: limits.max_batch_events,
            });
        }
        let mut spans = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let text = item.get();
            // A `&RawValue` borrows its text from `body`, so its offset is its address there.
            let start = (text.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
            spans.push(start..start + text.len());
            events.push(match decode_direct(text.as_bytes(), Some(index), limits) {
                Some(decoded) => Ok(decoded),
                // The raw text is well-formed JSON; only what a `Value` cannot hold (nesting past
                // serde_json's recursion limit, a number beyond a double's range) can fail here,
                // and that refuses the whole body as it would a single event.
                None => decode_event(
                    serde_json::from_str::<Value>(text).map_err(MessageError::NotJson)?,
                    Some(index),
                    limits,
                ),
            });
        }
        return Ok(Message {
            is_batch: true,
            events,
            spans,
        });
    }
    if let Some(decoded) = decode_direct(body, None, limits) {
        return Ok(Message {
            is_batch: false,
            events: vec![Ok(decoded)],
            spans: std::iter::once(0..body.len()).collect(),
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(MessageError::NotJson)?;
    match value {
        Value::Object(_) => Ok(Message {
            is_batch: false,
            events: vec![decode_event(value, None, limits)],
            spans: std::iter::once(0..body.len()).collect(),
        }),
        other => Err(MessageError::NotEventOrBatch {
            found: json_kind(&other),
        }),
    }
}

/// The CloudEvents attributes this contract reads, before the `type` is known; `data` as a
/// [`Value`] (the checked path) or as its raw text (the direct path, see [`decode_direct`]).
#[derive(Deserialize)]
struct Envelope<D> {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    time: String,
    #[serde(default = "Option::default")]
    data: Option<D>,
}

/// Builds the errors of one event.
struct Context {
    event_id: Option<String>,
    index: Option<usize>,
}

impl Context {
    fn error(&self, field: Option<&str>, reason: impl Into<String>) -> EventError {
        let mut reason = reason.into();
        if reason.chars().nth(REASON_CHARS).is_some() {
            reason = Quoted(&reason, REASON_CHARS).to_string();
        }
        EventError {
            event_id: self.event_id.clone(),
            index: self.index,
            field: field.map(str::to_owned),
            reason,
        }
    }

    fn field(&self, field: &str, reason: impl Into<String>) -> EventError {
        self.error(Some(field), reason)
    }

    /// Deserialises `value` into `T`, naming the failing field below `prefix`.
    fn deserialize<T: DeserializeOwned>(
        &self,
        prefix: Option<&str>,
        value: Value,
    ) -> Result<T, EventError> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let field = match (prefix, path.as_str()) {
                (prefix, ".") => prefix.map(str::to_owned),
                (Some(prefix), path) => Some(format!("{prefix}.{path}")),
                (None, path) => Some(path.to_owned()),
            };
            self.error(field.as_deref(), err.into_inner().to_string())
        })
    }

    fn string(&self, field: &str, value: &str, max_chars: usize) -> Result<(), EventError> {
        if value.is_empty() {
            return Err(self.field(field, "must not be empty"));
        }
        self.optional_string(field, value, max_chars)
    }

    fn optional_string(
        &self,
        field: &str,
        value: &str,
        max_chars: usize,
    ) -> Result<(), EventError> {
        // Count characters only as far as the limit: an id of a million characters costs no more
        // to refuse than one just over.
        if value.chars().nth(max_chars).is_some() {
            return Err(self.field(
                field,
                format!("is longer than the limit of {max_chars} characters"),
            ));
        }
        Ok(())
    }

    /// An optional string where empty means absent.
    fn optional(
        &self,
        field: &str,
        value: Option<String>,
        max_chars: usize,
    ) -> Result<Option<String>, EventError> {
        match value {
            Some(value) if !value.is_empty() => {
                self.optional_string(field, &value, max_chars)?;
                Ok(Some(value))
            }
            _ => Ok(None),
        }
    }
}

/// Deepest nesting of arrays and objects [`decode_direct`] takes on; anything deeper goes the
/// checked way, which refuses nesting past serde_json's recursion limit (128) as not JSON.
const DIRECT_MAX_DEPTH: usize = 64;

/// Decodes one event straight from its bytes into the wire types, without a [`Value`] tree in
/// between: the common case, several times cheaper. It gives up (`None`) on anything it cannot
/// vouch for, and the caller then takes the checked way ([`decode_event`] of a [`Value`]), which
/// finds and words the error; so where it returns an event, that is exactly the event the checked
/// way returns. It gives up on:
///
/// - a text that is not an object, or whose `data` is not one;
/// - a `\u0000` escape anywhere (the checked way names the field holding the NUL), nesting
///   deeper than [`DIRECT_MAX_DEPTH`] (serde_json skips unknown fields at any depth, but the
///   checked way's `Value` stops at 128 levels), and a number beyond a double's range
///   anywhere (`1e400`: skipped unread, but no `Value` holds it);
/// - any error of serde_json (a duplicated attribute, which a `Value` takes the last of, among
///   them) and any failed check.
fn decode_direct(text: &[u8], index: Option<usize>, limits: &Limits) -> Option<Decoded> {
    if text.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') || !is_plain(text) {
        return None;
    }
    let envelope: Envelope<&RawValue> = serde_json::from_slice(text).ok()?;
    let cx = Context {
        event_id: None,
        index,
    };
    validate(&cx, envelope, limits).ok()
}

/// Whether `text` holds no `\u0000` escape in a string, nests arrays and objects at most
/// [`DIRECT_MAX_DEPTH`] deep and holds no number beyond a double's range. Reads JSON's lexical
/// structure only: malformed text is serde_json's to refuse.
fn is_plain(text: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut bytes = text.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'-' | b'0'..=b'9' => {
                let start = text.len() - bytes.len() - 1;
                let len = text[start..]
                    .iter()
                    .take_while(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                    .count();
                if !is_finite_number(&text[start..start + len]) {
                    return false;
                }
                bytes = text[start + len..].iter();
            }
            b'"' => loop {
                match bytes.next() {
                    None | Some(b'"') => break,
                    Some(b'\\') => {
                        if bytes.next() == Some(&b'u') && bytes.as_slice().starts_with(b"0000") {
                            return false;
                        }
                    }
                    Some(_) => {}
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > DIRECT_MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Whether a JSON number token stays finite as a double, as serde_json reads it: one with an
/// exponent or over 300 digits may not (`1e400`), and serde_json refuses those where it builds a
/// [`Value`]. The short ones every event holds are not parsed.
fn is_finite_number(token: &[u8]) -> bool {
    if token.len() <= 300 && !token.iter().any(|b| matches!(b, b'e' | b'E')) {
        return true;
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|token| token.parse::<f64>().ok())
        .is_none_or(f64::is_finite)
}

/// Decodes one event: `index` is its position in a batch.
///
/// # Errors
///
/// [`EventError`] naming the field at fault.
pub fn decode_event(
    value: Value,
    index: Option<usize>,
    limits: &Limits,
) -> Result<Decoded, EventError> {
    let mut cx = Context {
        event_id: None,
        index,
    };
    if !value.is_object() {
        return Err(cx.error(
            None,
            format!("is a JSON {}, not an event object", json_kind(&value)),
        ));
    }
    cx.event_id = value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        // A NUL would travel into the dead-letter header and the log; quote it escaped.
        .map(|id| id.replace('\0', "\\u0000"));
    // PostgreSQL text cannot hold a NUL (`events.md`: a NUL anywhere is bad input). Refusing it
    // here keeps it from ever reaching the database, where it would fail the whole batch.
    if let Some(field) = nul_path(&value) {
        // A hostile key could make the path as long as the body; the header must stay short.
        let field = Quoted(&field, QUOTED_ID_CHARS).to_string();
        return Err(cx.error(
            (!field.is_empty()).then_some(field.as_str()),
            "contains a NUL character (\\u0000), which cannot be stored",
        ));
    }
    let envelope: Envelope<Value> = cx.deserialize(None, value)?;
    validate(&cx, envelope, limits)
}

/// What `data` is read from: a [`Value`] (the checked path) or the raw text of an object (the
/// direct path, which gives up on anything unusual and never reports an error of its own).
trait Data: Sized {
    /// `data` itself, once it is known to be an object with an object (or null) `metrics`,
    /// whatever the event's type.
    fn object(self, cx: &Context, event_type: &str) -> Result<Self, EventError>;
    /// `data` deserialised into `T`, errors naming the field below `data`.
    fn read<T: DeserializeOwned>(self, cx: &Context) -> Result<T, EventError>;
}

impl Data for Value {
    fn object(self, cx: &Context, _: &str) -> Result<Self, EventError> {
        let Value::Object(_) = &self else {
            return Err(cx.field(
                "data",
                format!("is a JSON {}, not an object", json_kind(&self)),
            ));
        };
        // serde reads a struct from an array too (by position); the contract wants an object.
        if let Some(metrics) = self.get("metrics")
            && !(metrics.is_object() || metrics.is_null())
        {
            return Err(cx.field(
                "data.metrics",
                format!("is a JSON {}, not an object", json_kind(metrics)),
            ));
        }
        Ok(self)
    }

    fn read<T: DeserializeOwned>(self, cx: &Context) -> Result<T, EventError> {
        cx.deserialize(Some("data"), self)
    }
}

impl Data for &RawValue {
    fn object(self, cx: &Context, event_type: &str) -> Result<Self, EventError> {
        let text = self.get();
        // A run's `metrics` is checked by its own deserializer (`wire::object_or_null`); a
        // session's is no field of its wire type, so a text that may name it (outright, or with
        // an escape in a key) is left to the checked way.
        let unchecked_metrics =
            event_type == SESSION_CREATED && (text.contains("metrics") || text.contains("\\u"));
        if text.starts_with('{') && !unchecked_metrics {
            Ok(self)
        } else {
            Err(cx.field("data", "is left to the checked way"))
        }
    }

    fn read<T: DeserializeOwned>(self, cx: &Context) -> Result<T, EventError> {
        serde_json::from_str(self.get()).map_err(|err| cx.field("data", err.to_string()))
    }
}

/// The checks and the domain event that follow the envelope, alike on both paths.
fn validate<D: Data>(
    cx: &Context,
    envelope: Envelope<D>,
    limits: &Limits,
) -> Result<Decoded, EventError> {
    if envelope.specversion != SPEC_VERSION {
        return Err(cx.field(
            "specversion",
            format!(
                "`{}` is not supported (expected `{SPEC_VERSION}`)",
                envelope.specversion
            ),
        ));
    }
    cx.string("id", &envelope.id, limits.max_id_chars)?;
    cx.string("source", &envelope.source, limits.max_source_chars)?;
    cx.string("type", &envelope.event_type, limits.max_source_chars)?;
    let time = DateTime::parse_from_rfc3339(&envelope.time)
        .map_err(|err| {
            cx.field(
                "time",
                format!("is not an RFC 3339 timestamp with an offset ({err})"),
            )
        })?
        .with_timezone(&Utc)
        // PostgreSQL keeps microseconds; deciding ties on what is stored keeps replays exact.
        .trunc_subsecs(6);
    let date = time.date_naive();
    if !(MIN_DATE..=MAX_DATE).contains(&date) {
        return Err(cx.field(
            "time",
            format!("falls on {date} (UTC), outside {MIN_DATE} to {MAX_DATE}"),
        ));
    }

    let event_type = envelope.event_type.as_str();
    if event_type != SESSION_CREATED && event_type != RUN_COMPLETED {
        return Ok(Decoded::Ignored(Ignored {
            source: envelope.source,
            id: envelope.id,
            event_type: envelope.event_type,
        }));
    }
    let data = match envelope.data {
        Some(data) => data.object(cx, event_type)?,
        None => return Err(cx.field("data", "is required")),
    };
    let kind = if event_type == SESSION_CREATED {
        EventKind::SessionCreated(session_created(cx, data.read(cx)?, limits)?)
    } else {
        EventKind::RunCompleted(run_completed(cx, data.read(cx)?, limits)?)
    };
    Ok(Decoded::Event(Event {
        source: envelope.source,
        id: envelope.id,
        time,
        kind,
    }))
}

fn session_created(
    cx: &Context,
    data: SessionCreatedData,
    limits: &Limits,
) -> Result<SessionCreated, EventError> {
    cx.string("data.session_id", &data.session_id, limits.max_id_chars)?;
    Ok(SessionCreated {
        session_id: data.session_id,
        session_type: data.session_type,
        user_id: cx.optional("data.user_id", data.user_id, limits.max_id_chars)?,
    })
}

fn run_completed(
    cx: &Context,
    data: RunCompletedData,
    limits: &Limits,
) -> Result<RunCompleted, EventError> {
    let max = limits.max_id_chars;
    cx.string("data.run_id", &data.run_id, max)?;
    cx.string("data.session_id", &data.session_id, max)?;
    let model = cx.optional("data.model", data.model, max)?;
    let model_id = cx.optional("data.model_id", data.model_id, max)?;
    let model = match (model, model_id) {
        (Some(model), Some(model_id)) if model != model_id => {
            return Err(cx.field(
                "data.model",
                format!("`{model}` disagrees with its alias `model_id` (`{model_id}`)"),
            ));
        }
        (model, model_id) => model.or(model_id),
    };
    Ok(RunCompleted {
        run_id: data.run_id,
        session_id: data.session_id,
        session_type: data.session_type,
        user_id: cx.optional("data.user_id", data.user_id, max)?,
        parent_run_id: cx.optional("data.parent_run_id", data.parent_run_id, max)?,
        model,
        model_provider: cx.optional("data.model_provider", data.model_provider, max)?,
        usage: usage(cx, data.metrics.unwrap_or_default())?,
    })
}

fn usage(cx: &Context, metrics: RunMetrics) -> Result<Usage, EventError> {
    // A count under a contract name and under its Agno alias must agree; either alone is taken.
    let aliased = |name: &str, value: Option<u64>, alias: &str, alias_value: Option<u64>| match (
        value,
        alias_value,
    ) {
        (Some(a), Some(b)) if a != b => Err(cx.field(
            &format!("data.metrics.{name}"),
            format!("{a} disagrees with its alias `{alias}` ({b})"),
        )),
        (value, alias_value) => count(cx, name, value.or(alias_value)),
    };
    let input_tokens = count(cx, "input_tokens", metrics.input_tokens)?;
    let output_tokens = count(cx, "output_tokens", metrics.output_tokens)?;
    let total_tokens = match metrics.total_tokens {
        Some(total) => count(cx, "total_tokens", Some(total))?,
        None => input_tokens.checked_add(output_tokens).ok_or_else(|| {
            cx.field(
                "data.metrics.total_tokens",
                "input_tokens + output_tokens overflows a 64-bit count",
            )
        })?,
    };
    let cost = match metrics.cost {
        None => BigDecimal::from(0),
        Some(cost) if cost.is_finite() && cost >= 0.0 => {
            // `Display` of an f64 is its shortest exact round-trip text, with no exponent.
            BigDecimal::from_str(&cost.to_string())
                .map_err(|err| cx.field("data.metrics.cost", format!("is not a number ({err})")))?
        }
        Some(cost) => {
            return Err(cx.field(
                "data.metrics.cost",
                format!("{cost} is negative; a cost is a non-negative number"),
            ));
        }
    };
    let tokens = Tokens {
        input_tokens,
        output_tokens,
        total_tokens,
        audio_tokens: aliased(
            "audio_tokens",
            metrics.audio_tokens,
            "audio_total_tokens",
            metrics.audio_total_tokens,
        )?,
        input_audio_tokens: aliased(
            "input_audio_tokens",
            metrics.input_audio_tokens,
            "audio_input_tokens",
            metrics.audio_input_tokens,
        )?,
        output_audio_tokens: aliased(
            "output_audio_tokens",
            metrics.output_audio_tokens,
            "audio_output_tokens",
            metrics.audio_output_tokens,
        )?,
        cached_tokens: aliased(
            "cached_tokens",
            metrics.cached_tokens,
            "cache_read_tokens",
            metrics.cache_read_tokens,
        )?,
        cache_write_tokens: count(cx, "cache_write_tokens", metrics.cache_write_tokens)?,
        reasoning_tokens: count(cx, "reasoning_tokens", metrics.reasoning_tokens)?,
    };
    Ok(Usage { tokens, cost })
}

/// A token count as stored (`bigint`): absent is 0.
fn count(cx: &Context, name: &str, value: Option<u64>) -> Result<i64, EventError> {
    i64::try_from(value.unwrap_or(0)).map_err(|_| {
        cx.field(
            &format!("data.metrics.{name}"),
            format!("is over the largest count, {}", i64::MAX),
        )
    })
}

/// The dotted path of the first string (or object key) holding a NUL character, if any: `""` for
/// the top level, `data.session_id`, `data.tags[2]`.
fn nul_path(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(String::new),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            nul_path(item).map(|rest| format!("[{index}]{}", dotted(&rest)))
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some(key.replace('\0', "\\u0000"));
            }
            nul_path(item).map(|rest| format!("{key}{}", dotted(&rest)))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// `rest` joined to a parent path: indexes attach directly, names after a dot.
fn dotted(rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') {
        rest.to_owned()
    } else {
        format!(".{rest}")
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    /// The checked way alone: the text parsed into a [`Value`], then [`decode_event`].
    fn checked(text: &str, limits: &Limits) -> Option<Result<Decoded, EventError>> {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|value| decode_event(value, None, limits))
    }

    /// One `"key":value` member, or none: mostly the first of `values` (the usual one), so that
    /// most events differ from a valid one in a field or two.
    fn member(key: &str, values: &[&str]) -> BoxedStrategy<Option<String>> {
        let values: Vec<String> = values.iter().map(|v| format!("\"{key}\":{v}")).collect();
        let usual = values[0].clone();
        prop::option::weighted(0.95, prop_oneof![6 => Just(usual), 1 => select(values)]).boxed()
    }

    /// `{...}` of the members present, in any order, one of them possibly twice (a `Value`
    /// keeps the last, a struct refuses the duplicate).
    fn object(members: Vec<BoxedStrategy<Option<String>>>) -> BoxedStrategy<String> {
        (
            members,
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.1),
        )
            .prop_flat_map(|(members, twice, repeat)| {
                let mut members: Vec<String> = members.into_iter().flatten().collect();
                if repeat && !members.is_empty() {
                    members.push(twice.get(&members).clone());
                }
                Just(members).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(", ")))
            .boxed()
    }

    fn metrics() -> BoxedStrategy<String> {
        let counts = [
            "0",
            "7",
            "-1",
            "1.5",
            "18446744073709551615",
            "9223372036854775808",
            "null",
            "\"3\"",
        ];
        prop_oneof![
            Just("null".to_owned()),
            Just("[1, 2]".to_owned()),
            Just("[3]".to_owned()),
            Just("\"tokens\"".to_owned()),
            object(vec![
                member("input_tokens", &counts),
                member("output_tokens", &counts),
                member("total_tokens", &counts),
                member("audio_tokens", &counts),
                member("audio_total_tokens", &counts),
                member("cache_read_tokens", &counts),
                member(
                    "cost",
                    &["0.25", "1e-3", "-0.5", "3", "1e400", "null", "\"1\""]
                ),
                member("extra", &["{\"a\": [[[]]]}", "\"\\u0000\""]),
            ]),
        ]
        .boxed()
    }

    fn data() -> BoxedStrategy<String> {
        let ids = [
            "\"r1\"",
            "\"\"",
            "null",
            "5",
            "\"a\\u0000b\"",
            "\"\\u00e9\\\"q\"",
        ];
        let users = ["\"u1\"", "\"\"", "null", "[\"u\"]"];
        metrics()
            .prop_flat_map(move |metrics| {
                object(vec![
                    member("run_id", &ids),
                    member("session_id", &ids),
                    member(
                        "session_type",
                        &["\"agent\"", "\"team\"", "\"workflow\"", "\"robot\"", "1"],
                    ),
                    member("user_id", &users),
                    member("parent_run_id", &users),
                    member("model", &["\"gpt\"", "\"\"", "null", "\"o1\""]),
                    member("model_id", &["\"gpt\"", "null"]),
                    member("model_provider", &["\"openai\"", "null", "{}"]),
                    prop::option::weighted(0.5, Just(format!("\"metrics\":{metrics}"))).boxed(),
                    member("notes", &["[{\"x\": null}]", "\"\\\\u0000\"", "true"]),
                    prop::option::weighted(
                        0.2,
                        select(vec![
                            "\"\\u006detrics\":[3]".to_owned(),
                            "\"\\u006detrics\":{}".to_owned(),
                        ]),
                    )
                    .boxed(),
                ])
            })
            .boxed()
    }

    fn event() -> BoxedStrategy<String> {
        prop_oneof![
            4 => data(),
            1 => select(vec!["[]", "\"data\"", "null", "7"]).prop_map(str::to_owned),
        ]
        .prop_flat_map(|data| {
            object(vec![
                member("specversion", &["\"1.0\"", "\"0.3\"", "1"]),
                member("id", &["\"e1\"", "\"\"", "2", "\"\\u0000\""]),
                member("source", &["\"agno://app\"", "\"\"", "null"]),
                prop_oneof![
                    2 => Just(Some("\"type\":\"agentos.run.completed\"".to_owned())),
                    2 => Just(Some("\"type\":\"agentos.session.created\"".to_owned())),
                    1 => member("type", &["\"other\"", "\"\""]),
                ]
                .boxed(),
                member(
                    "time",
                    &[
                        "\"2025-07-31T10:00:00Z\"",
                        "\"2025-07-31T23:30:00.1234567-05:00\"",
                        "\"2025-07-31T10:00:00\"",
                        "\"1999-12-31T23:00:00Z\"",
                        "0",
                    ],
                ),
                member("data", &[&data]),
            ])
        })
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Where the direct way returns an event, the checked way returns the same one.
        #[test]
        fn the_direct_way_agrees_with_the_checked_way(text in event()) {
            let limits = Limits { max_id_chars: 4, ..Limits::default() };
            if let Some(direct) = decode_direct(text.as_bytes(), None, &limits) {
                prop_assert_eq!(Some(Ok(direct)), checked(&text, &limits), "{}", text);
            }
        }
    }

    /// The direct way takes the common event, and leaves to the checked way what it cannot
    /// vouch for.
    #[test]
    fn the_direct_way_gives_up_on_what_it_cannot_vouch_for() {
        let limits = Limits::default();
        let event = r#"{"specversion":"1.0","id":"e","source":"s","type":"agentos.run.completed","time":"2025-07-31T10:00:00Z","data":{"run_id":"r","session_id":"s","session_type":"agent","metrics":{"input_tokens":3}}}"#;
        assert_eq!(
            decode_direct(event.as_bytes(), None, &limits),
            checked(event, &limits).and_then(Result::ok)
        );
        assert!(decode_direct(event.as_bytes(), None, &limits).is_some());
        let session = r#"{"specversion":"1.0","id":"e","source":"s","type":"agentos.session.created","time":"2025-07-31T10:00:00Z","data":{"session_id":"s","session_type":"team","user_id":"u"}}"#;
        assert!(decode_direct(session.as_bytes(), None, &limits).is_some());
        for text in [
            event.replace(r#""id":"e""#, r#""id":"e","id":"f""#),
            event.replace(r#"{"input_tokens":3}"#, "[3]"),
            event.replace(r#""r""#, r#""r\u0000""#),
            event.replace("}}}", r#"},"deep":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"#),
            format!("[{event}]"),
        ] {
            assert_eq!(decode_direct(text.as_bytes(), None, &limits), None, "{text}");
        }
        // An escaped backslash before `u0000` is no NUL.
        let text = event.replace(r#""r""#, r#""r\\u0000""#);
        assert!(decode_direct(text.as_bytes(), None, &limits).is_some());
    }
}
