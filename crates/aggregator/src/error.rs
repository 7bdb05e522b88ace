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
    /// Whether retrying the same batch later can succeed. Connection loss, a server shutting
    /// down, lock and serialization conflicts all pass; a constraint violation or an overflow
    /// would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Database(DieselError::DatabaseError(kind, _)) => !matches!(
                kind,
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation
            ),
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
