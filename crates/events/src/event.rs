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

/// Calls `$callback! { $args... input_tokens output_tokens ... }` with the names of the nine
/// token counts, in the order of the contract's `token_metrics` example: the one place that lists
/// them. [`Tokens`] is defined from it, and the aggregator reads and writes its token columns
/// with it.
#[macro_export]
macro_rules! with_token_names {
    ($callback:ident ! { $($args:tt)* }) => {
        $callback! {
            $($args)*
            input_tokens
            output_tokens
            total_tokens
            audio_tokens
            input_audio_tokens
            output_audio_tokens
            cached_tokens
            cache_write_tokens
            reasoning_tokens
        }
    };
}

macro_rules! token_counts {
    ($($name:ident)*) => {
        /// The nine token counts of a run or of a sum of runs, under the names of `GET /metrics`
        /// `token_metrics`; `total_tokens` is input + output when the producer omits it (Agno's
        /// aliases: `audio_total_tokens` for `audio_tokens`,
        /// `audio_input_tokens` and `audio_output_tokens` for `input_audio_tokens` and
        /// `output_audio_tokens`, `cache_read_tokens` for `cached_tokens`).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct Tokens {
            $(#[doc = concat!("`", stringify!($name), "`.")] pub $name: i64,)*
        }

        impl Tokens {
            /// The names of the counts, in the order of [`Tokens::counts`]: the contract's keys
            /// and the aggregator's column names.
            pub const NAMES: [&'static str; 9] = [$(stringify!($name),)*];

            /// The counts, in the order of [`Tokens::NAMES`].
            pub fn counts(&self) -> [i64; 9] {
                [$(self.$name,)*]
            }

            /// The counts, mutably, in the order of [`Tokens::NAMES`].
            pub fn counts_mut(&mut self) -> [&mut i64; 9] {
                [$(&mut self.$name,)*]
            }

            /// The counts given in the order of [`Tokens::NAMES`].
            pub fn from_counts(counts: [i64; 9]) -> Self {
                let [$($name,)*] = counts;
                Self { $($name,)* }
            }
        }
    };
}

with_token_names!(token_counts! {});

/// Token counts and cost of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The run's token counts.
    pub tokens: Tokens,
    /// `cost`, exact: summing decimals does not depend on the order of the runs.
    pub cost: BigDecimal,
}

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
    fn token_counts_keep_their_order() {
        let counts = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut tokens = Tokens::from_counts(counts);
        assert_eq!(tokens.counts(), counts);
        assert_eq!((tokens.input_tokens, tokens.reasoning_tokens), (1, 9));
        *tokens.counts_mut()[6] += 10;
        assert_eq!(tokens.cached_tokens, 17);
        assert_eq!(Tokens::NAMES[6], "cached_tokens");
    }

    #[test]
    fn date_bounds_are_the_contracts() {
        assert_eq!(MIN_DATE.to_string(), "2000-01-01");
        assert_eq!(MAX_DATE.to_string(), "2999-12-31");
    }
}
