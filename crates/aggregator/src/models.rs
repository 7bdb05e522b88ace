//! Rows of the aggregator's tables, as diesel reads and writes them.

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow, QueryableByName};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::row::NamedRow;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Text};
use metrics_events::{SessionType, Tokens, with_token_names};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::{daily_metrics, day_users, runs, sessions, user_daily_metrics};

/// The nine token columns of `$table` as a tuple, in [`Tokens::NAMES`] order; an expression and,
/// diesel's columns being unit structs, its type too. Called through [`with_token_names`].
macro_rules! token_columns {
    ($table:ident $($name:ident)*) => {
        ($($table::$name,)*)
    };
}

/// The columns of a day row of `$table` (`daily_metrics` or `user_daily_metrics`) in the order of
/// [`DailyMetrics`]'s fields: what both tables' rows are read with.
macro_rules! day_columns {
    ($table:ident) => {
        (
            $table::table_id,
            $table::date,
            $table::id,
            $table::agent_runs_count,
            $table::agent_sessions_count,
            $table::team_runs_count,
            $table::team_sessions_count,
            $table::workflow_runs_count,
            $table::workflow_sessions_count,
            $table::users_count,
            with_token_names!(token_columns! { $table }),
            $table::cost,
            $table::model_metrics,
            $table::created_at,
            $table::updated_at,
        )
    };
}

/// The run, session and user counts of a day row, in the order of [`DailyMetrics`]'s fields.
pub(crate) const COUNT_COLUMNS: [&str; 7] = [
    "agent_runs_count",
    "agent_sessions_count",
    "team_runs_count",
    "team_sessions_count",
    "workflow_runs_count",
    "workflow_sessions_count",
    "users_count",
];

/// The nine token columns of a row, read as one [`Tokens`]: by position (a tuple of the nine
/// columns) or by name ([`Tokens::NAMES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenColumns(pub Tokens);

type TokenSqlTypes = (
    BigInt,
    BigInt,
    BigInt,
    BigInt,
    BigInt,
    BigInt,
    BigInt,
    BigInt,
    BigInt,
);

impl Queryable<TokenSqlTypes, Pg> for TokenColumns {
    type Row = (i64, i64, i64, i64, i64, i64, i64, i64, i64);

    fn build((a, b, c, d, e, f, g, h, i): Self::Row) -> deserialize::Result<Self> {
        Ok(Self(Tokens::from_counts([a, b, c, d, e, f, g, h, i])))
    }
}

impl QueryableByName<Pg> for TokenColumns {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        let mut counts = [0; 9];
        for (count, name) in counts.iter_mut().zip(Tokens::NAMES) {
            *count = NamedRow::get::<BigInt, i64>(row, name)?;
        }
        Ok(Self(Tokens::from_counts(counts)))
    }
}

impl From<TokenColumns> for Tokens {
    fn from(columns: TokenColumns) -> Self {
        columns.0
    }
}

/// One day of one metrics table: a row of `GET /metrics`, or of one user's
/// (`GET /metrics?user_id=`).
#[derive(Debug, Clone, PartialEq, Queryable)]
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
    /// The summed token counts.
    #[diesel(deserialize_as = TokenColumns)]
    pub tokens: Tokens,
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

impl Selectable<Pg> for DailyMetrics {
    type SelectExpression = day_columns!(daily_metrics);

    fn construct_selection() -> Self::SelectExpression {
        day_columns!(daily_metrics)
    }
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
            tokens: Tokens::default(),
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
            && self.tokens == Tokens::default()
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
#[derive(Debug, Clone, PartialEq, QueryableByName)]
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
    #[diesel(embed)]
    pub tokens: TokenColumns,
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

/// One user's day of one metrics table: a row of `GET /metrics?user_id=`, read with the columns
/// of [`DailyMetrics`].
#[derive(Debug, Clone, PartialEq, Queryable)]
pub(crate) struct UserDailyMetrics {
    pub user_id: String,
    pub row: DailyMetrics,
}

impl Selectable<Pg> for UserDailyMetrics {
    type SelectExpression = (
        user_daily_metrics::user_id,
        day_columns!(user_daily_metrics),
    );

    fn construct_selection() -> Self::SelectExpression {
        (
            user_daily_metrics::user_id,
            day_columns!(user_daily_metrics),
        )
    }
}

/// By name, for the statements diesel's query builder cannot write (see
/// `store::load_day_rows`): the columns of [`Selectable`], named as in the tables of day rows.
impl QueryableByName<Pg> for DailyMetrics {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        use diesel::sql_types::{Date, Integer, Jsonb, Numeric, Timestamptz};
        let count = |name: &str| NamedRow::get::<BigInt, i64>(row, name);
        Ok(Self {
            table_id: NamedRow::get::<Integer, i32>(row, "table_id")?,
            date: NamedRow::get::<Date, NaiveDate>(row, "date")?,
            id: NamedRow::get::<diesel::sql_types::Uuid, Uuid>(row, "id")?,
            agent_runs_count: count("agent_runs_count")?,
            agent_sessions_count: count("agent_sessions_count")?,
            team_runs_count: count("team_runs_count")?,
            team_sessions_count: count("team_sessions_count")?,
            workflow_runs_count: count("workflow_runs_count")?,
            workflow_sessions_count: count("workflow_sessions_count")?,
            users_count: count("users_count")?,
            tokens: <TokenColumns as QueryableByName<Pg>>::build(row)?.0,
            cost: NamedRow::get::<Numeric, BigDecimal>(row, "cost")?,
            model_metrics: NamedRow::get::<Jsonb, serde_json::Value>(row, "model_metrics")?,
            created_at: NamedRow::get::<Timestamptz, DateTime<Utc>>(row, "created_at")?,
            updated_at: NamedRow::get::<Timestamptz, DateTime<Utc>>(row, "updated_at")?,
        })
    }
}

/// A stored day row of either table, read by name: `user_id` is null for an all-users row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredDay {
    pub user_id: Option<String>,
    pub row: DailyMetrics,
}

impl QueryableByName<Pg> for StoredDay {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        Ok(Self {
            user_id: NamedRow::get::<diesel::sql_types::Nullable<Text>, Option<String>>(
                row, "user_id",
            )?,
            row: <DailyMetrics as QueryableByName<Pg>>::build(row)?,
        })
    }
}

impl UserDailyMetrics {
    /// The user and the row in the shape every reader renders.
    pub fn into_parts(self) -> (String, DailyMetrics) {
        (self.user_id, self.row)
    }
}
