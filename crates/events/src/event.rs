//! Domain events: what a validated CloudEvent means to the metrics pipeline.
//!
//! Every value here has passed validation (`crate::decode`): ids are non-empty and within their
//! limits, counts are non-negative, the time is truncated to microseconds (the precision
//! PostgreSQL stores) and its UTC date lies within [`MIN_DATE`, `MAX_DATE`].

use std::fmt;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};

/// The CloudEvents `type` of a session start.
pub const SESSION_CREATED: &str = "agentos.session.created";
/// The CloudEvents `type` of a finished run.
pub const RUN_COMPLETED: &str = "agentos.run.completed";
/// The only CloudEvents `specversion` this contract reads.
pub const SPEC_VERSION: &str = "1.0";

/// The earliest UTC date an event may fall on (`events.md`).
pub const MIN_DATE: NaiveDate = match NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(date) => date,
    None => unreachable!(),
};
/// The latest UTC date an event may fall on (`events.md`).
pub const MAX_DATE: NaiveDate = match NaiveDate::from_ymd_opt(2999, 12, 31) {
    Some(date) => date,
    None => unreachable!(),
};

/// Which kind of AgentOS component a session (and so its runs) belongs to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    /// A single agent.
    Agent,
    /// A team of agents.
    Team,
    /// A workflow.
    Workflow,
}

impl SessionType {
    /// Every session type, in their canonical order.
    pub const ALL: [SessionType; 3] =
        [SessionType::Agent, SessionType::Team, SessionType::Workflow];

    /// The wire and database spelling: `agent`, `team` or `workflow`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Agent => "agent",
            SessionType::Team => "team",
            SessionType::Workflow => "workflow",
        }
    }
}

impl fmt::Display for SessionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`SessionType`] from a string other than the three it knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a session type (expected `agent`, `team` or `workflow`)")]
pub struct UnknownSessionType(pub String);

impl FromStr for SessionType {
    type Err = UnknownSessionType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(SessionType::Agent),
            "team" => Ok(SessionType::Team),
            "workflow" => Ok(SessionType::Workflow),
            other => Err(UnknownSessionType(other.to_owned())),
        }
    }
}

/// A validated event of a type this version reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The producer (CloudEvents `source`).
    pub source: String,
    /// The event's id, unique per `source`.
    pub id: String,
    /// When it happened, in UTC, truncated to microseconds.
    pub time: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The UTC day the event counts on.
    pub fn date(&self) -> NaiveDate {
        self.time.date_naive()
    }

    /// The session the event belongs to.
    pub fn session_id(&self) -> &str {
        match &self.kind {
            EventKind::SessionCreated(session) => &session.session_id,
            EventKind::RunCompleted(run) => &run.session_id,
        }
    }

    /// The user the event names, if any (never an empty string).
    pub fn user_id(&self) -> Option<&str> {
        match &self.kind {
            EventKind::SessionCreated(session) => session.user_id.as_deref(),
            EventKind::RunCompleted(run) => run.user_id.as_deref(),
        }
    }

    /// The session type the event names.
    pub fn session_type(&self) -> SessionType {
        match &self.kind {
            EventKind::SessionCreated(session) => session.session_type,
            EventKind::RunCompleted(run) => run.session_type,
        }
    }

    /// The CloudEvents `type` of this event.
    pub fn event_type(&self) -> &'static str {
        match self.kind {
            EventKind::SessionCreated(_) => SESSION_CREATED,
            EventKind::RunCompleted(_) => RUN_COMPLETED,
        }
    }
}

/// The two kinds of events that count.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "runs outnumber sessions; boxing would allocate for most events"
)]
pub enum EventKind {
    /// `agentos.session.created`.
    SessionCreated(SessionCreated),
    /// `agentos.run.completed`.
    RunCompleted(RunCompleted),
}

/// The data of `agentos.session.created`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCreated {
    /// The session.
    pub session_id: String,
    /// Which session counter it adds to.
    pub session_type: SessionType,
    /// The user, when known and non-empty.
    pub user_id: Option<String>,
}

/// The data of `agentos.run.completed`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCompleted {
    /// The run; it counts once.
    pub run_id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// Which run counter it adds to.
    pub session_type: SessionType,
    /// The user, when known and non-empty.
    pub user_id: Option<String>,
    /// The enclosing run of a team or workflow member run.
    pub parent_run_id: Option<String>,
    /// The model that served the run.
    pub model: Option<String>,
    /// The model's provider; `None` is stored and rendered as `""` next to a model.
    pub model_provider: Option<String>,
    /// The run's own token usage and cost.
    pub usage: Usage,
}

/// Token counts and cost of one run, under the names of `GET /metrics` `token_metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `input_tokens`.
    pub input_tokens: i64,
    /// `output_tokens`.
    pub output_tokens: i64,
    /// `total_tokens` (input + output when the producer omits it).
    pub total_tokens: i64,
    /// `audio_tokens` (Agno: `audio_total_tokens`).
    pub audio_tokens: i64,
    /// `input_audio_tokens` (Agno: `audio_input_tokens`).
    pub input_audio_tokens: i64,
    /// `output_audio_tokens` (Agno: `audio_output_tokens`).
    pub output_audio_tokens: i64,
    /// `cached_tokens` (Agno: `cache_read_tokens`).
    pub cached_tokens: i64,
    /// `cache_write_tokens`.
    pub cache_write_tokens: i64,
    /// `reasoning_tokens`.
    pub reasoning_tokens: i64,
    /// `cost`, exact: summing decimals does not depend on the order of the runs.
    pub cost: BigDecimal,
}

impl Usage {
    /// The nine token counts in the order of the contract's `token_metrics` example.
    pub fn tokens(&self) -> [i64; 9] {
        [
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.audio_tokens,
            self.input_audio_tokens,
            self.output_audio_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        ]
    }
}

/// The names of the nine token counts, in the order of [`Usage::tokens`].
pub const TOKEN_KEYS: [&str; 9] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "audio_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_type_round_trips_through_its_spelling() {
        for session_type in SessionType::ALL {
            assert_eq!(session_type.as_str().parse(), Ok(session_type));
        }
        assert_eq!(
            "Agent".parse::<SessionType>(),
            Err(UnknownSessionType("Agent".to_owned()))
        );
    }

    #[test]
    fn date_bounds_are_the_contracts() {
        assert_eq!(MIN_DATE.to_string(), "2000-01-01");
        assert_eq!(MAX_DATE.to_string(), "2999-12-31");
    }
}
