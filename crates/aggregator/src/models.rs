//! Rows of the aggregator's tables, as diesel reads and writes them.

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use metrics_events::SessionType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::{daily_metrics, day_users, runs, sessions, user_daily_metrics};

/// One day of one metrics table: a row of `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = daily_metrics, check_for_backend(Pg))]
pub struct DailyMetrics {
    /// The metrics table (`metrics_tables.id`).
    pub table_id: i32,
    /// The UTC day.
    pub date: NaiveDate,
    /// The row's stable id.
    pub id: Uuid,
    /// Runs of agent sessions.
    pub agent_runs_count: i64,
    /// Agent sessions that started that day.
    pub agent_sessions_count: i64,
    /// Runs of team sessions.
    pub team_runs_count: i64,
    /// Team sessions that started that day.
    pub team_sessions_count: i64,
    /// Runs of workflow sessions.
    pub workflow_runs_count: i64,
    /// Workflow sessions that started that day.
    pub workflow_sessions_count: i64,
    /// Distinct users of the day's events.
    pub users_count: i64,
    /// Summed `input_tokens`.
    pub input_tokens: i64,
    /// Summed `output_tokens`.
    pub output_tokens: i64,
    /// Summed `total_tokens`.
    pub total_tokens: i64,
    /// Summed `audio_tokens`.
    pub audio_tokens: i64,
    /// Summed `input_audio_tokens`.
    pub input_audio_tokens: i64,
    /// Summed `output_audio_tokens`.
    pub output_audio_tokens: i64,
    /// Summed `cached_tokens`.
    pub cached_tokens: i64,
    /// Summed `cache_write_tokens`.
    pub cache_write_tokens: i64,
    /// Summed `reasoning_tokens`.
    pub reasoning_tokens: i64,
    /// Summed cost, exact.
    pub cost: BigDecimal,
    /// `[{model_id, model_provider, count}]`, count descending, then model_id and provider in
    /// byte order: ready to render.
    pub model_metrics: serde_json::Value,
    /// When the row was first written.
    pub created_at: DateTime<Utc>,
    /// When the row's values last changed.
    pub updated_at: DateTime<Utc>,
}

impl DailyMetrics {
    /// A row with nothing counted yet.
    pub(crate) fn empty(table_id: i32, date: NaiveDate, now: DateTime<Utc>) -> Self {
        Self {
            table_id,
            date,
            id: Uuid::new_v4(),
            agent_runs_count: 0,
            agent_sessions_count: 0,
            team_runs_count: 0,
            team_sessions_count: 0,
            workflow_runs_count: 0,
            workflow_sessions_count: 0,
            users_count: 0,
            input_tokens: 0,
            output_tokens: 0,
            total_tokens: 0,
            audio_tokens: 0,
            input_audio_tokens: 0,
            output_audio_tokens: 0,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost: BigDecimal::from(0),
            model_metrics: serde_json::Value::Array(Vec::new()),
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether the row counts nothing at all (no run, session, user, token, cost or model).
    pub(crate) fn counts_nothing(&self) -> bool {
        self.runs_counts() == [0; 3]
            && self.sessions_counts() == [0; 3]
            && self.users_count == 0
            && self.tokens() == [0; 9]
            && self.cost == 0
            && self.model_metrics.as_array().is_none_or(Vec::is_empty)
    }

    /// The runs counts by session type, in [`SessionType::ALL`] order.
    pub fn runs_counts(&self) -> [i64; 3] {
        [
            self.agent_runs_count,
            self.team_runs_count,
            self.workflow_runs_count,
        ]
    }

    /// The sessions counts by session type, in [`SessionType::ALL`] order.
    pub fn sessions_counts(&self) -> [i64; 3] {
        [
            self.agent_sessions_count,
            self.team_sessions_count,
            self.workflow_sessions_count,
        ]
    }

    /// The nine token sums, in [`metrics_events::TOKEN_KEYS`] order.
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

    pub(crate) fn runs_count_mut(&mut self, session_type: SessionType) -> &mut i64 {
        match session_type {
            SessionType::Agent => &mut self.agent_runs_count,
            SessionType::Team => &mut self.team_runs_count,
            SessionType::Workflow => &mut self.workflow_runs_count,
        }
    }

    pub(crate) fn sessions_count_mut(&mut self, session_type: SessionType) -> &mut i64 {
        match session_type {
            SessionType::Agent => &mut self.agent_sessions_count,
            SessionType::Team => &mut self.team_sessions_count,
            SessionType::Workflow => &mut self.workflow_sessions_count,
        }
    }

    pub(crate) fn tokens_mut(&mut self) -> [&mut i64; 9] {
        [
            &mut self.input_tokens,
            &mut self.output_tokens,
            &mut self.total_tokens,
            &mut self.audio_tokens,
            &mut self.input_audio_tokens,
            &mut self.output_audio_tokens,
            &mut self.cached_tokens,
            &mut self.cache_write_tokens,
            &mut self.reasoning_tokens,
        ]
    }

    /// The model counts, parsed from [`DailyMetrics::model_metrics`].
    ///
    /// # Errors
    ///
    /// The JSON error when the stored value is not a list of model counts.
    pub fn models(&self) -> Result<Vec<ModelCount>, serde_json::Error> {
        serde_json::from_value(self.model_metrics.clone())
    }
}

/// How many runs one (model, provider) served on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCount {
    /// The model id.
    pub model_id: String,
    /// The provider, `""` when the runs named none.
    pub model_provider: String,
    /// The number of runs.
    pub count: i64,
}

/// A session type as stored: `agent`, `team` or `workflow` in a `text` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub(crate) struct StoredSessionType(pub SessionType);

impl ToSql<Text, Pg> for StoredSessionType {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.0.as_str(), out)
    }
}

impl FromSql<Text, Pg> for StoredSessionType {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(Self(text.parse()?))
    }
}

/// The counted `run.completed` of one run.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = runs, check_for_backend(Pg))]
pub(crate) struct RunRecord {
    pub table_id: i32,
    pub run_id: String,
    pub date: NaiveDate,
    pub time: DateTime<Utc>,
    pub source: String,
    pub event_id: String,
    pub session_id: String,
    pub session_type: StoredSessionType,
    pub model: Option<String>,
    pub model_provider: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub audio_tokens: i64,
    pub input_audio_tokens: i64,
    pub output_audio_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: BigDecimal,
    /// The winning event's user, `""` when it names none.
    pub user_id: String,
}

impl RunRecord {
    /// Which of two events of the same run counts: the earliest, then by source and id. Any
    /// total order would do; this one makes the first report of a run win.
    pub fn precedence(&self) -> (DateTime<Utc>, &str, &str) {
        (self.time, &self.source, &self.event_id)
    }

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

/// The counted state of one session.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = sessions, check_for_backend(Pg))]
pub(crate) struct SessionRecord {
    pub table_id: i32,
    pub session_id: String,
    pub date: NaiveDate,
    pub first_time: DateTime<Utc>,
    pub session_type: StoredSessionType,
    pub type_from_run: bool,
    pub type_time: DateTime<Utc>,
    pub created_time: Option<DateTime<Utc>>,
    pub created_user_id: Option<String>,
    pub first_run_time: Option<DateTime<Utc>>,
    pub first_run_user_id: Option<String>,
}

impl SessionRecord {
    /// The session's user (`events.md` as extended by `agentos-compat.md`): the user of its
    /// earliest `session.created`, else (none seen, or it names no user) of its earliest run,
    /// else `""`.
    pub fn user_id(&self) -> &str {
        match (&self.created_user_id, &self.first_run_user_id) {
            (Some(created), _) if !created.is_empty() => created,
            (_, Some(run)) => run,
            _ => "",
        }
    }
}

/// A user (or, with `""`, an event without one) seen on a day.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Queryable, QueryableByName, Insertable,
)]
#[diesel(table_name = day_users, check_for_backend(Pg))]
pub(crate) struct DayUser {
    pub table_id: i32,
    pub date: NaiveDate,
    pub user_id: String,
}

/// One user's day of one metrics table: a row of `GET /metrics?user_id=`, with the columns of
/// [`DailyMetrics`] and the user.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = user_daily_metrics, check_for_backend(Pg))]
pub(crate) struct UserDailyMetrics {
    pub table_id: i32,
    pub user_id: String,
    pub date: NaiveDate,
    pub id: Uuid,
    pub agent_runs_count: i64,
    pub agent_sessions_count: i64,
    pub team_runs_count: i64,
    pub team_sessions_count: i64,
    pub workflow_runs_count: i64,
    pub workflow_sessions_count: i64,
    pub users_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub audio_tokens: i64,
    pub input_audio_tokens: i64,
    pub output_audio_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: BigDecimal,
    pub model_metrics: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserDailyMetrics {
    /// The user and the row in the shape every reader renders.
    pub fn into_parts(self) -> (String, DailyMetrics) {
        (
            self.user_id,
            DailyMetrics {
                table_id: self.table_id,
                date: self.date,
                id: self.id,
                agent_runs_count: self.agent_runs_count,
                agent_sessions_count: self.agent_sessions_count,
                team_runs_count: self.team_runs_count,
                team_sessions_count: self.team_sessions_count,
                workflow_runs_count: self.workflow_runs_count,
                workflow_sessions_count: self.workflow_sessions_count,
                users_count: self.users_count,
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                total_tokens: self.total_tokens,
                audio_tokens: self.audio_tokens,
                input_audio_tokens: self.input_audio_tokens,
                output_audio_tokens: self.output_audio_tokens,
                cached_tokens: self.cached_tokens,
                cache_write_tokens: self.cache_write_tokens,
                reasoning_tokens: self.reasoning_tokens,
                cost: self.cost,
                model_metrics: self.model_metrics,
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
        )
    }

    /// `row` as the row of `user_id`.
    pub fn from_parts(user_id: String, row: DailyMetrics) -> Self {
        Self {
            table_id: row.table_id,
            user_id,
            date: row.date,
            id: row.id,
            agent_runs_count: row.agent_runs_count,
            agent_sessions_count: row.agent_sessions_count,
            team_runs_count: row.team_runs_count,
            team_sessions_count: row.team_sessions_count,
            workflow_runs_count: row.workflow_runs_count,
            workflow_sessions_count: row.workflow_sessions_count,
            users_count: row.users_count,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            total_tokens: row.total_tokens,
            audio_tokens: row.audio_tokens,
            input_audio_tokens: row.input_audio_tokens,
            output_audio_tokens: row.output_audio_tokens,
            cached_tokens: row.cached_tokens,
            cache_write_tokens: row.cache_write_tokens,
            reasoning_tokens: row.reasoning_tokens,
            cost: row.cost,
            model_metrics: row.model_metrics,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}
