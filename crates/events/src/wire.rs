//! The wire shapes of the two events, as producers write them.
//!
//! These types are what `crate::decode` deserialises the `data` of an event into, and what the
//! published JSON Schema (`docs/events.schema.json`) is generated from, so the two cannot
//! drift apart: a test compares the committed schema with [`json_schema`].
//! Semantic rules that a JSON Schema cannot carry (configurable limits, alias agreement, the date
//! range) live in `crate::decode`.

use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::event::SessionType;

/// The only `specversion` this contract reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum SpecVersion {
    /// CloudEvents 1.0.
    #[serde(rename = "1.0")]
    V1,
}

/// The `type` of a session start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "SessionCreated")]
pub enum SessionCreatedType {
    /// `agentos.session.created`.
    #[serde(rename = "agentos.session.created")]
    SessionCreated,
}

/// The `type` of a finished run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "RunCompleted")]
pub enum RunCompletedType {
    /// `agentos.run.completed`.
    #[serde(rename = "agentos.run.completed")]
    RunCompleted,
}

/// A CloudEvents 1.0 envelope (structured mode) carrying `data` of type `D`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}Event")]
pub struct CloudEvent<T, D> {
    /// Always `"1.0"`.
    pub specversion: SpecVersion,
    /// Unique per `source`; at most 256 characters by default.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// The producer, e.g. `agno://my-app`; at most 1,024 characters by default.
    #[schemars(length(min = 1, max = 1024))]
    pub source: String,
    /// The event type; the routing key it is published with.
    #[serde(rename = "type")]
    pub event_type: T,
    /// When it happened (RFC 3339 with an offset); its UTC date, between 2000-01-01 and
    /// 2999-12-31, is the day the event counts on.
    pub time: DateTime<FixedOffset>,
    /// Usually `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The event's payload.
    pub data: D,
}

/// `agentos.session.created`: a session started.
pub type SessionCreatedEvent = CloudEvent<SessionCreatedType, SessionCreatedData>;
/// `agentos.run.completed`: a run finished.
pub type RunCompletedEvent = CloudEvent<RunCompletedType, RunCompletedData>;

/// The `data` of `agentos.session.created`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionCreatedData {
    /// The session; at most 256 characters by default.
    #[schemars(length(min = 1, max = 256))]
    pub session_id: String,
    /// Which session counter it adds to.
    pub session_type: SessionType,
    /// The user; an empty string or null means none. At most 256 characters by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub user_id: Option<String>,
    /// Kept for tracing, not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Kept for tracing, not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Kept for tracing, not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
}

/// The `data` of `agentos.run.completed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunCompletedData {
    /// The run; it counts once. At most 256 characters by default.
    #[schemars(length(min = 1, max = 256))]
    pub run_id: String,
    /// The session the run belongs to; at most 256 characters by default.
    #[schemars(length(min = 1, max = 256))]
    pub session_id: String,
    /// Which run counter the run adds to.
    pub session_type: SessionType,
    /// The user; an empty string or null means none. At most 256 characters by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub user_id: Option<String>,
    /// Set on a member run inside a team or workflow; the run counts like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub parent_run_id: Option<String>,
    /// The model id, e.g. `gpt-4o`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,
    /// Alias of `model`; when both are present they must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model_id: Option<String>,
    /// The model's provider, e.g. `OpenAI`; absent or null is `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model_provider: Option<String>,
    /// The run's own usage, not its children's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object_or_null"
    )]
    pub metrics: Option<RunMetrics>,
}

/// `metrics` as an object or `null`: serde reads a struct from an array too (by position), and
/// the contract wants an object.
fn object_or_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<RunMetrics>, D::Error> {
    struct ObjectOrNull;

    impl<'de> Visitor<'de> for ObjectOrNull {
        type Value = Option<RunMetrics>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an object or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RunMetrics::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_option(ObjectOrNull)
}

/// A run's usage. Agno's run-metrics names and the `/metrics` contract's names are both accepted;
/// a name and its alias, when both present, must agree. Absent (or null) counts are 0; other keys
/// (`duration`, `time_to_first_token`, ...) are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RunMetrics {
    /// Input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Total tokens; absent means input + output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    /// Audio tokens (contract name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_tokens: Option<u64>,
    /// Audio tokens (Agno name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_total_tokens: Option<u64>,
    /// Input audio tokens (contract name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio_tokens: Option<u64>,
    /// Input audio tokens (Agno name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_input_tokens: Option<u64>,
    /// Output audio tokens (contract name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_audio_tokens: Option<u64>,
    /// Output audio tokens (Agno name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_output_tokens: Option<u64>,
    /// Tokens read from the prompt cache (contract name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Tokens read from the prompt cache (Agno name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    /// Tokens written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    /// Reasoning tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Cost in the producer's currency; summed exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cost: Option<f64>,
}

/// The JSON Schema of a message body: one event, or a batch (an array) of them.
///
/// This is what `docs/events.schema.json` holds; regenerate that file with
/// `UPDATE_SCHEMA=1 cargo test -p metrics-events schema`.
pub fn json_schema() -> serde_json::Value {
    #[derive(JsonSchema)]
    #[schemars(
        title = "AgentOS Metrics event",
        description = "One CloudEvents 1.0 event in structured mode. Events of other types are \
                       acknowledged and ignored."
    )]
    #[expect(dead_code, reason = "only its schema is used")]
    #[expect(clippy::large_enum_variant, reason = "never constructed")]
    #[serde(untagged)]
    enum Event {
        SessionCreated(SessionCreatedEvent),
        RunCompleted(RunCompletedEvent),
    }

    #[derive(JsonSchema)]
    #[schemars(
        title = "AgentOS Metrics message",
        description = "A message body on the `agentos.events` exchange: one event, or a batch \
                       (`application/cloudevents-batch+json`) of at most 1,000 events."
    )]
    #[expect(dead_code, reason = "only its schema is used")]
    #[expect(clippy::large_enum_variant, reason = "never constructed")]
    #[serde(untagged)]
    enum Message {
        Event(Event),
        Batch(Vec<Event>),
    }

    serde_json::Value::from(schemars::schema_for!(Message))
}
