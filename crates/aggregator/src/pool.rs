//! The r2d2 connection pool the services share between their blocking workers, and the limits
//! every connection gets so that nothing waits forever on a dead or frozen server.

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

/// What a connection may not exceed, set through libpq connection parameters (PostgreSQL
/// documentation, "Parameter Key Words", and "Client Connection Defaults"): so that a statement,
/// a lock wait, an open transaction or a silent network never holds a worker forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout` of the
    /// session: the server ends what runs (or waits, or idles in a transaction) longer.
    pub statement_timeout: Duration,
    /// `tcp_user_timeout`: sent data unacknowledged this long breaks the connection; TCP
    /// keepalives probe an idle connection so that a dead peer is found within it too.
    pub tcp_timeout: Duration,
}

impl ConnectionLimits {
    /// `url` (a `postgres://` URI or a `key=value` connection string) with the libpq parameters
    /// of these limits added. A parameter the URL already sets is left as it is, `options`
    /// included.
    pub fn apply_to(&self, url: &str) -> String {
        let millis = |duration: Duration| duration.as_millis().max(1).to_string();
        let tcp_secs = self.tcp_timeout.as_secs();
        let statement = millis(self.statement_timeout);
        let parameters = [
            ("keepalives", "1".to_owned()),
            // Probes start after a third of the timeout and three of them, a ninth apart, fail
            // within two thirds of it.
            ("keepalives_idle", (tcp_secs / 3).max(1).to_string()),
            ("keepalives_interval", (tcp_secs / 9).max(1).to_string()),
            ("keepalives_count", "3".to_owned()),
            ("tcp_user_timeout", millis(self.tcp_timeout)),
            (
                "options",
                format!(
                    "-c statement_timeout={statement} -c lock_timeout={statement} \
                     -c idle_in_transaction_session_timeout={statement}"
                ),
            ),
        ];
        let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut out = url.to_owned();
        for (name, value) in parameters {
            if sets_parameter(url, is_uri, name) {
                continue;
            }
            if is_uri {
                out.push(if out.contains('?') { '&' } else { '?' });
                // libpq decodes percent escapes only (no `+` for a space).
                out.push_str(name);
                out.push('=');
                out.push_str(&value.replace(' ', "%20").replace('=', "%3D"));
            } else {
                out.push_str(&format!(" {name}='{value}'"));
            }
        }
        out
    }
}

/// Whether the connection string already sets the parameter `name`.
fn sets_parameter(url: &str, is_uri: bool, name: &str) -> bool {
    if is_uri {
        url.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(name))
        })
    } else {
        url.split_whitespace()
            .any(|word| word.split('=').next().map(str::trim) == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        statement_timeout: Duration::from_secs(30),
        tcp_timeout: Duration::from_secs(20),
    };

    #[test]
    fn limits_are_added_to_a_uri() {
        assert_eq!(
            LIMITS.apply_to("postgres://u:p@db:5432/metrics"),
            "postgres://u:p@db:5432/metrics?keepalives=1&keepalives_idle=6&keepalives_interval=2\
             &keepalives_count=3&tcp_user_timeout=20000&options=-c%20statement_timeout%3D30000\
             %20-c%20lock_timeout%3D30000%20-c%20idle_in_transaction_session_timeout%3D30000"
        );
    }

    #[test]
    fn parameters_the_url_sets_are_kept() {
        let url = LIMITS.apply_to(
            "postgresql://db/m?sslmode=require&tcp_user_timeout=5000&options=-c%20search_path%3Dx",
        );
        assert!(url.starts_with("postgresql://db/m?sslmode=require&tcp_user_timeout=5000&options"));
        assert_eq!(url.matches("tcp_user_timeout").count(), 1);
        assert_eq!(url.matches("options").count(), 1);
        assert!(url.ends_with("&keepalives_count=3"), "{url}");
    }

    #[test]
    fn limits_are_added_to_a_key_value_string() {
        assert_eq!(
            LIMITS.apply_to("host=db dbname=metrics keepalives=0"),
            "host=db dbname=metrics keepalives=0 keepalives_idle='6' keepalives_interval='2' \
             keepalives_count='3' tcp_user_timeout='20000' options='-c statement_timeout=30000 \
             -c lock_timeout=30000 -c idle_in_transaction_session_timeout=30000'"
        );
    }
}
