//! The errors of the aggregator's operations.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Why [`apply`](crate::apply) failed; nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database refused or could not run a statement.
    #[error("applying events to the database")]
    Database(#[from] DieselError),
    /// A daily sum would leave the range of a 64-bit count.
    #[error("a daily token sum of {date} overflows a 64-bit count")]
    Overflow {
        /// The day whose sum overflowed.
        date: chrono::NaiveDate,
    },
}

impl ApplyError {
    /// Whether retrying the same batch later can succeed, decided by what the failure means.
    ///
    /// PostgreSQL says it in the SQLSTATE (PostgreSQL documentation, appendix A), and diesel
    /// reports the classes that matter here as [`DatabaseErrorKind`]: integrity constraint
    /// violations (class 23) are the event's fault and fail the same way again; connection
    /// exceptions (class 08, or a connection libpq found broken), serialization failures
    /// (40001) and a read-only server mid-failover (25006) pass. A statement diesel could not
    /// send went over a broken connection. Diesel 2.3 hides every other SQLSTATE (data
    /// exceptions, deadlocks, lack of resources, operator intervention and timeouts alike) as
    /// `Unknown`: those are retried, since a server-side problem must never dead-letter valid
    /// events; the data exceptions an event could cause (a NUL in text, a sum past 2^63 - 1) are
    /// refused before any statement is sent ([`ApplyError::Overflow`] and event decoding).
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Database(DieselError::DatabaseError(kind, _)) => !matches!(
                kind,
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::RestrictViolation
                    | DatabaseErrorKind::ExclusionViolation
            ),
            // The event's values could not be encoded for PostgreSQL: the same again next time.
            ApplyError::Database(DieselError::SerializationError(_)) => false,
            ApplyError::Database(_) => true,
            ApplyError::Overflow { .. } => false,
        }
    }
}

/// Why [`migrate`](crate::migrate) or [`revert_all`](crate::revert_all) failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Taking or releasing the migration lock failed.
    #[error("taking the migration lock")]
    Lock(#[source] DieselError),
    /// A migration failed; the database keeps the migrations before it.
    #[error("running migrations")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a connection pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A pool needs room for at least one connection.
    #[error("a connection pool needs a size of at least 1")]
    ZeroSize,
}
