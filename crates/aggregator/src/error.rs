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
    /// A stored row's `model_metrics` is not a list of model counts: the row cannot be added to
    /// until it is repaired (a refresh recounts it from the records).
    #[error("the stored model counts of {date} are not a list of model counts")]
    StoredModels {
        /// The day of the row.
        date: chrono::NaiveDate,
        /// Why the stored value does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl ApplyError {
    /// Whether retrying the same batch later can succeed, decided by what the failure means.
    ///
    /// A database failure is classed by its SQLSTATE ([`database_error_is_transient`]); a sum
    /// past 2^63 - 1 is the event's fault; a stored row that does not parse is not, and waits
    /// for a repair (a refresh) rather than refusing valid events.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Database(error) => database_error_is_transient(error),
            ApplyError::Overflow { .. } => false,
            ApplyError::StoredModels { .. } => true,
        }
    }
}

/// Whether a statement that failed with `error` can succeed when retried, by the SQLSTATE class
/// of the failure (PostgreSQL documentation, appendix A):
///
/// - permanent, the data's fault: data exceptions (class 22: a value out of range, a NUL or an
///   invalid byte sequence in text, a value too long) and integrity constraint violations
///   (class 23); a value diesel could not encode for PostgreSQL;
/// - transient, the server's or the network's: connection exceptions (class 08, or a connection
///   libpq found broken), serialization failures (40001) and deadlocks (40P01), insufficient
///   resources (53), operator intervention (57: a cancelled statement, a server shutting down),
///   a read-only server mid-failover (25006), and any other failure.
///
/// Diesel 2.3 reports the SQLSTATE only for the codes it names in [`DatabaseErrorKind`] (the
/// class 23 codes, 40001, 25006 and class 08); every other code, class 22 included, arrives as
/// [`DatabaseErrorKind::Unknown`] with PostgreSQL's primary message and no code (its
/// `DatabaseErrorInformation` has no SQLSTATE accessor). A data exception is recognised there
/// by the primary message of the class 22 codes a statement can raise ([`DATA_EXCEPTIONS`],
/// PostgreSQL's English messages). A message it does not recognise, as from a server with
/// translated messages, is retried: a server-side problem must never dead-letter valid events,
/// and the data exceptions an event could cause are refused before any statement is sent (a NUL
/// at decoding, a sum past 2^63 - 1 as [`ApplyError::Overflow`]).
pub(crate) fn database_error_is_transient(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => false,
            DatabaseErrorKind::Unknown => !is_data_exception(info.message()),
            _ => true,
        },
        // The event's values could not be encoded for PostgreSQL: the same again next time.
        DieselError::SerializationError(_) => false,
        _ => true,
    }
}

/// The primary messages (their fixed part) of the class 22 SQLSTATEs the aggregator's statements
/// can meet: 22003 numeric value out of range, 22008 datetime field overflow, 22001 string data
/// right truncation, 22021 character not in repertoire, 22P05 untranslatable character, 22P02
/// invalid text representation, 22007 invalid datetime format, 22012 division by zero.
const DATA_EXCEPTIONS: [&str; 10] = [
    "out of range",
    "numeric field overflow",
    "value overflows numeric format",
    "value too long for type",
    "invalid byte sequence for encoding",
    "has no equivalent in encoding",
    "unsupported Unicode escape sequence",
    "invalid input syntax",
    "invalid value for",
    "division by zero",
];

fn is_data_exception(message: &str) -> bool {
    DATA_EXCEPTIONS
        .iter()
        .any(|pattern| message.contains(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn integrity_violations_and_data_exceptions_are_permanent() {
        for kind in [
            DatabaseErrorKind::UniqueViolation,
            DatabaseErrorKind::ForeignKeyViolation,
            DatabaseErrorKind::NotNullViolation,
            DatabaseErrorKind::CheckViolation,
        ] {
            assert!(!database_error_is_transient(&database(kind, "violation")));
        }
        for message in [
            "bigint out of range",
            "numeric field overflow",
            "value too long for type character varying(3)",
            "invalid byte sequence for encoding \"UTF8\": 0x00",
            "invalid input syntax for type bigint: \"x\"",
            "date/time field value out of range: \"2025-13-01\"",
        ] {
            let error = database(DatabaseErrorKind::Unknown, message);
            assert!(!database_error_is_transient(&error), "{message}");
        }
    }

    #[test]
    fn server_and_connection_failures_are_transient() {
        for kind in [
            DatabaseErrorKind::SerializationFailure,
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::ReadOnlyTransaction,
        ] {
            assert!(database_error_is_transient(&database(kind, "failure")));
        }
        for message in [
            "deadlock detected",
            "canceling statement due to statement timeout",
            "terminating connection due to administrator command",
            "could not extend file \"base/1/2\": No space left on device",
            "sorry, too many clients already",
        ] {
            let error = database(DatabaseErrorKind::Unknown, message);
            assert!(database_error_is_transient(&error), "{message}");
        }
        assert!(database_error_is_transient(
            &DieselError::BrokenTransactionManager
        ));
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
