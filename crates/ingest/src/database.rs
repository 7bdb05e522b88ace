//! The service's handle on PostgreSQL: a connection pool from the aggregator, the metrics table's
//! id, and `apply` run on the blocking pool.
//!
//! The aggregator uses synchronous diesel, so every call goes through `spawn_blocking`: a
//! transaction is a plain scope that commits or rolls back, never left half-done by a cancelled
//! `.await`. The pool tests every connection on checkout (`SELECT 1`), so one the server closed
//! while it sat idle (`pg_terminate_backend`, a restart) is discarded there and replaced, and a
//! failed batch needs nothing more than a retry. The pool is replaced only when a worker is
//! abandoned at its deadline: that worker keeps its (frozen) connection checked out until TCP
//! gives up on it, and the retry must not wait for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::ops::Range;

use diesel::{PgConnection, RunQueryDsl};
use lapin::message::Delivery;
use metrics_aggregator::{
    ApplyError, ApplyReport, Pool, RefusedEvent, Staged, StagedReport, TableId, TableName,
};
use metrics_events::{Decoded, Event, Limits, decode_message};
use secrecy::{ExposeSecret, SecretString};

use crate::config::DatabaseSettings;
use crate::consumer::error_chain;

/// How long a readiness probe waits for a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// No connection could be had (the server is down or every connection is busy).
    #[error("connecting to PostgreSQL")]
    Connect(#[source] diesel::r2d2::PoolError),
    /// Registering the metrics table failed.
    #[error("registering the metrics table")]
    Register(#[source] diesel::result::Error),
    /// `apply` failed; nothing of the batch was written.
    #[error("writing the batch")]
    Apply(#[source] ApplyError),
    /// The blocking worker panicked.
    #[error("the database worker stopped")]
    Worker(#[source] tokio::task::JoinError),
    /// No answer within the deadline: a connection frozen without being closed (packets
    /// dropped) leaves libpq waiting; the worker is abandoned and the pool replaced.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

impl DatabaseError {
    /// Whether trying the same batch again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DatabaseError::Connect(_) | DatabaseError::Register(_) | DatabaseError::Timeout(_) => {
                true
            }
            DatabaseError::Apply(err) => err.is_transient(),
            DatabaseError::Worker(_) => false,
        }
    }
}

/// PostgreSQL, as the consumer and the probes use it.
#[derive(Debug)]
pub struct Database {
    url: SecretString,
    pool_size: u32,
    connect_timeout: Duration,
    deadline: Duration,
    table: TableName,
    pool: Mutex<Pool>,
    table_id: Mutex<Option<TableId>>,
}

impl Database {
    /// A handle on the database of `settings`, writing into `table`. Connects lazily.
    ///
    /// # Errors
    ///
    /// When the pool cannot be built (a pool size of 0).
    pub fn new(
        settings: &DatabaseSettings,
        table: TableName,
    ) -> Result<Self, metrics_aggregator::PoolError> {
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let limits = settings.limits();
        let url = SecretString::from(limits.apply_to(settings.url.expose_secret()));
        let pool =
            metrics_aggregator::connect(url.expose_secret(), settings.pool_size, connect_timeout)?;
        Ok(Self {
            url,
            pool_size: settings.pool_size,
            connect_timeout,
            // The server ends a statement at its timeout and TCP gives up on a dead peer at
            // the other: past both (and a connection attempt), the worker is stuck on a
            // connection that neither closes nor answers.
            deadline: connect_timeout + limits.statement_timeout + limits.tcp_timeout,
            table,
            pool: Mutex::new(pool),
            table_id: Mutex::new(None),
        })
    }

    fn pool(&self) -> Pool {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops every pooled connection: the next use connects afresh.
    fn reset(&self) {
        if let Ok(pool) = metrics_aggregator::connect(
            self.url.expose_secret(),
            self.pool_size,
            self.connect_timeout,
        ) {
            *self.pool.lock().unwrap_or_else(PoisonError::into_inner) = pool;
        }
    }

    /// Applies `events` in one transaction on the blocking pool, registering the metrics table
    /// first if this process has not yet. Returns the report and how long `apply` took.
    ///
    /// # Errors
    ///
    /// [`DatabaseError`]; nothing was written. After a timeout the pool is replaced.
    pub async fn apply(
        self: &Arc<Self>,
        events: Arc<[Event]>,
    ) -> (Result<ApplyReport, DatabaseError>, Duration) {
        self.run(move |conn, table| {
            metrics_aggregator::apply(conn, table, &events).map_err(DatabaseError::Apply)
        })
        .await
    }

    /// Stores `staging`'s events in the inbox with one insert (`inbox.enabled`). Returns how
    /// long it took.
    ///
    /// # Errors
    ///
    /// [`DatabaseError`]; nothing was stored.
    pub async fn stage(
        self: &Arc<Self>,
        staging: Arc<Staging>,
    ) -> (Result<(), DatabaseError>, Duration) {
        self.run(move |conn, table| {
            let events = staging.rows();
            metrics_aggregator::stage(conn, table, &events).map_err(statement_failed)
        })
        .await
    }

    /// Applies the oldest staged events, `max_events` and about `max_bytes` at most, decoding
    /// them with `limits` (see [`metrics_aggregator::apply_staged`]).
    ///
    /// # Errors
    ///
    /// [`DatabaseError`]; nothing was applied.
    pub async fn apply_staged(
        self: &Arc<Self>,
        max_events: usize,
        max_bytes: usize,
        limits: Limits,
    ) -> (Result<StagedReport, DatabaseError>, Duration) {
        self.run(move |conn, table| {
            metrics_aggregator::apply_staged(
                conn,
                table,
                max_events,
                max_bytes,
                |bytes| decode_staged(bytes, &limits),
                refusal,
            )
            .map_err(DatabaseError::Apply)
        })
        .await
    }

    /// Whether the inbox holds anything at all, staged or refused, of any metrics table; asked
    /// without registering the table, so it writes nothing.
    ///
    /// # Errors
    ///
    /// [`DatabaseError`].
    pub async fn inbox_holds_events(self: &Arc<Self>) -> Result<bool, DatabaseError> {
        self.run_plain(|conn| {
            metrics_aggregator::inbox_holds_events(conn).map_err(statement_failed)
        })
        .await
        .0
    }

    /// Up to `limit` staged events refused for good, waiting for their dead letters.
    ///
    /// # Errors
    ///
    /// [`DatabaseError`].
    pub async fn refused_events(
        self: &Arc<Self>,
        limit: usize,
    ) -> Result<Vec<RefusedEvent>, DatabaseError> {
        self.run(move |conn, table| {
            metrics_aggregator::refused_events(conn, table, limit).map_err(statement_failed)
        })
        .await
        .0
    }

    /// Deletes refused events whose dead letters the broker has confirmed.
    ///
    /// # Errors
    ///
    /// [`DatabaseError`].
    pub async fn forget(self: &Arc<Self>, ids: Vec<i64>) -> Result<usize, DatabaseError> {
        self.run(move |conn, _| metrics_aggregator::forget(conn, &ids).map_err(statement_failed))
            .await
            .0
    }

    /// Runs `work` as [`Database::run_plain`] does, with the metrics table's id (registering
    /// the table first if this process has not yet).
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut PgConnection, TableId) -> Result<T, DatabaseError> + Send + 'static,
    ) -> (Result<T, DatabaseError>, Duration) {
        let database = Arc::clone(self);
        self.run_plain(move |conn| {
            let table = database.table_id(conn)?;
            work(conn, table)
        })
        .await
    }

    /// Runs `work` on the blocking pool with a pooled connection, within the deadline; returns
    /// its result and how long it took. After a timeout the pool is replaced.
    async fn run_plain<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut PgConnection) -> Result<T, DatabaseError> + Send + 'static,
    ) -> (Result<T, DatabaseError>, Duration) {
        let database = Arc::clone(self);
        let started = Instant::now();
        let worker = tokio::task::spawn_blocking(move || {
            let mut conn = database.pool().get().map_err(DatabaseError::Connect)?;
            work(&mut conn)
        });
        let result = match tokio::time::timeout(self.deadline, worker).await {
            Ok(joined) => joined
                .map_err(DatabaseError::Worker)
                .and_then(|result| result),
            Err(_) => Err(DatabaseError::Timeout(self.deadline)),
        };
        let elapsed = started.elapsed();
        if matches!(result, Err(DatabaseError::Timeout(_))) {
            self.reset();
        }
        (result, elapsed)
    }

    /// The metrics table's id, registered on first use.
    fn table_id(&self, conn: &mut PgConnection) -> Result<TableId, DatabaseError> {
        let cached = *self.table_id.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = cached {
            return Ok(id);
        }
        let id = metrics_aggregator::register_table(conn, &self.table)
            .map_err(DatabaseError::Register)?;
        *self.table_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(id);
        Ok(id)
    }

    /// Whether a connection can be had and answers `SELECT 1`.
    pub async fn is_usable(self: &Arc<Self>) -> bool {
        let pool = self.pool();
        tokio::task::spawn_blocking(move || {
            pool.get_timeout(PROBE_TIMEOUT)
                .is_ok_and(|mut conn| diesel::sql_query("SELECT 1").execute(&mut conn).is_ok())
        })
        .await
        .unwrap_or(false)
    }
}

/// A batch's events as the inbox stores them: where each one's bytes are in its delivery, and
/// each delivery's properties serialised (serde JSON), for the dead letter should the database
/// refuse the event after its delivery was acknowledged.
#[derive(Debug)]
pub struct Staging {
    /// The batch's deliveries.
    pub deliveries: Arc<[Delivery]>,
    /// The serialised properties of each delivery.
    pub properties: Vec<Vec<u8>>,
    /// The events, in order.
    pub events: Vec<StagedAt>,
}

/// Where a staged event's bytes are.
#[derive(Debug, Clone)]
pub struct StagedAt {
    /// Its delivery, by index in the batch.
    pub delivery: usize,
    /// Its bytes in the delivery's body: all of it, or its element of a batch.
    pub bytes: Range<usize>,
    /// Whether it is an element of a batch message.
    pub element: bool,
}

impl Staging {
    fn rows(&self) -> Vec<Staged<'_>> {
        self.events
            .iter()
            .filter_map(|at| {
                let delivery = self.deliveries.get(at.delivery)?;
                Some(Staged {
                    event: delivery.data.get(at.bytes.clone())?,
                    element: at.element,
                    routing_key: delivery.routing_key.as_str(),
                    properties: self.properties.get(at.delivery)?,
                })
            })
            .collect()
    }
}

/// A failed statement of the inbox's, as `apply`'s would fail (its transient-or-not class).
fn statement_failed(err: diesel::result::Error) -> DatabaseError {
    DatabaseError::Apply(err.into())
}

/// A staged event read back: its bytes were one valid event when staged, and decode the same
/// way now unless the limits changed in between.
fn decode_staged(bytes: &[u8], limits: &Limits) -> Result<Option<Event>, String> {
    let message = decode_message(bytes, limits).map_err(|err| error_chain(&err))?;
    match message.events.into_iter().next() {
        Some(Ok(Decoded::Event(event))) => Ok(Some(event)),
        Some(Ok(Decoded::Ignored(_))) => Ok(None),
        Some(Err(err)) => Err(err.to_string()),
        None => Err("a staged event holds no event".to_owned()),
    }
}

/// The reason in the dead letter of a staged event the database refused for good: the same as
/// for an event refused while its delivery was still held.
pub fn refusal(event: &Event, err: &ApplyError) -> String {
    // `DatabaseError::Apply`'s chain, as `isolate::Refusal` writes it.
    format!(
        "event `{}`: could not be counted: writing the batch: {}",
        event.id,
        error_chain(err)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_refusal_reads_as_one_refused_while_held() {
        let event = metrics_events::Event {
            source: "agno://test".to_owned(),
            id: "e1".to_owned(),
            time: chrono::DateTime::UNIX_EPOCH,
            kind: metrics_events::EventKind::SessionCreated(metrics_events::SessionCreated {
                session_id: "s1".to_owned(),
                session_type: metrics_events::SessionType::Agent,
                user_id: None,
            }),
        };
        let overflow = || ApplyError::Overflow {
            date: chrono::NaiveDate::MIN,
        };
        assert_eq!(
            refusal(&event, &overflow()),
            format!(
                "event `e1`: could not be counted: {}",
                error_chain(&DatabaseError::Apply(overflow()))
            )
        );
    }
}
