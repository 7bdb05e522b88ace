//! The r2d2 connection pool the services share between their blocking workers.

use std::time::Duration;

use diesel::PgConnection;
use diesel::r2d2::ConnectionManager;

use crate::error::PoolError;

/// A pool of PostgreSQL connections.
pub type Pool = diesel::r2d2::Pool<ConnectionManager<PgConnection>>;
/// A connection checked out of a [`Pool`].
pub type PooledConnection = diesel::r2d2::PooledConnection<ConnectionManager<PgConnection>>;

/// Builds a pool of at most `max_size` connections to `url`, waiting at most `connect_timeout`
/// for a connection when all are busy or the database is unreachable.
///
/// The pool starts empty and connects lazily, so a service can start (and report not ready)
/// while the database is down.
///
/// # Errors
///
/// [`PoolError::ZeroSize`] when `max_size` is 0.
pub fn connect(url: &str, max_size: u32, connect_timeout: Duration) -> Result<Pool, PoolError> {
    if max_size == 0 {
        return Err(PoolError::ZeroSize);
    }
    Ok(diesel::r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        // A connection the server closed while it sat idle (restart, `pg_terminate_backend`,
        // idle timeout) is found out at checkout, one `SELECT 1`, instead of failing the caller.
        .test_on_check_out(true)
        .build_unchecked(ConnectionManager::<PgConnection>::new(url)))
}

/// Opens one connection to `url` outside any pool, for work that holds a session-level lock for
/// its whole length (a refresh): the lock must end with the work's connection, never stay with
/// one a pool hands out again.
///
/// # Errors
///
/// The connection error.
pub fn connect_one(url: &str) -> diesel::ConnectionResult<PgConnection> {
    use diesel::Connection;
    PgConnection::establish(url)
}
