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

use diesel::RunQueryDsl;
use metrics_aggregator::{ApplyError, ApplyReport, Pool, TableId, TableName};
use metrics_events::Event;
use secrecy::{ExposeSecret, SecretString};

use crate::config::DatabaseSettings;

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
        let database = Arc::clone(self);
        let started = Instant::now();
        let worker = tokio::task::spawn_blocking(move || database.apply_blocking(&events));
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

    fn apply_blocking(&self, events: &[Event]) -> Result<ApplyReport, DatabaseError> {
        let mut conn = self.pool().get().map_err(DatabaseError::Connect)?;
        let cached = *self.table_id.lock().unwrap_or_else(PoisonError::into_inner);
        let table_id = match cached {
            Some(id) => id,
            None => {
                let id = metrics_aggregator::register_table(&mut conn, &self.table)
                    .map_err(DatabaseError::Register)?;
                *self.table_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(id);
                id
            }
        };
        metrics_aggregator::apply(&mut conn, table_id, events).map_err(DatabaseError::Apply)
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
