//! What the service knows of each database's committed changes without asking per request: a
//! connection of its own that `LISTEN`s on `metrics_changed`, where the daily tables' triggers
//! announce every committed change (see the aggregator's migrations).
//!
//! [`Changes::version`] is a number that moves with every notification, and whenever the
//! connection is lost or (re)established; it is `None` while no connection listens. A response
//! cached under a version is therefore current while the version has not moved:
//!
//! - a change committed after a request read the version moves it (its notification arrives
//!   after the commit), so a body rendered by that request is never served under a version that
//!   could hide the change;
//! - changes committed while nobody listened are covered by the move when listening starts: the
//!   version changes only once `LISTEN` has taken effect, and every earlier version is dead;
//! - while no connection listens, the version is `None` and requests read the table's stamp as
//!   before (`crate::cache`).
//!
//! Notifications reach the service a fraction of a millisecond after the commit: a request that
//! arrives in that moment is answered as of just before the change, like a request that arrived
//! a moment earlier. The connection is checked every second (a lost one stops serving versions
//! within [`PING_TIMEOUT`] plus a second), reconnects with the workspace's backoff, and is closed
//! when the cache is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_backoff::Backoff;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// The channel the aggregator's triggers notify.
pub const CHANNEL: &str = "metrics_changed";

/// The `application_name` of the listening connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "metrics-query-listener";

/// The triggers without which notifications never come: a database whose migrations are older
/// is read as if nobody listened.
const TRIGGERS: &str = "SELECT count(*) FROM pg_trigger \
     WHERE tgname IN ('daily_metrics_notify_changed', 'user_daily_metrics_notify_changed')";

/// How often the connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Longest a check or a connection attempt may take before the connection counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The committed-change version of one database (see the module docs).
#[derive(Debug, Default)]
pub struct Changes {
    /// The count of moves, shifted left by one; the lowest bit is set while listening.
    state: AtomicU64,
}

impl Changes {
    /// The current version while a connection listens; `None` otherwise.
    pub fn version(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Acquire);
        (state & 1 == 1).then_some(state)
    }

    /// A change was announced.
    fn changed(&self) {
        self.state.fetch_add(2, Ordering::AcqRel);
    }

    /// Listening started or stopped: every earlier version is dead.
    fn set_listening(&self, listening: bool) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some((((state >> 1) + 1) << 1) | u64::from(listening))
            });
    }
}

/// Starts listening for the changes of the database at `url` on a thread of its own, until
/// `stop` is cancelled.
///
/// # Errors
///
/// When the thread cannot be started.
pub fn spawn(url: String, changes: Arc<Changes>, stop: CancellationToken) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-listener".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(listen(&url, &changes, &stop)),
                Err(err) => tracing::error!(error = %err, "cannot start the change listener"),
            }
        })
        .map(drop)
}

/// Listens, reconnecting after each loss, until `stop` is cancelled.
async fn listen(url: &str, changes: &Changes, stop: &CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = session(url, changes, &mut backoff) => ended,
        };
        changes.set_listening(false);
        let wait = backoff.next_wait();
        tracing::warn!(
            error = %format!("{ended:#}"),
            retry_in_ms = wait.as_millis(),
            "not listening for changes: reading the tables' stamps per request meanwhile"
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One connection: listens until it fails; returns why.
async fn session(url: &str, changes: &Changes, backoff: &mut Backoff) -> anyhow::Error {
    let mut config: tokio_postgres::Config = match url.parse() {
        Ok(config) => config,
        Err(err) => return anyhow::Error::new(err).context("parsing the database URL"),
    };
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(PING_TIMEOUT);
    let (client, mut connection) =
        match tokio::time::timeout(PING_TIMEOUT, config.connect(NoTls)).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(err)) => return anyhow::Error::new(err).context("connecting"),
            Err(_) => return anyhow::anyhow!("connecting took over {PING_TIMEOUT:?}"),
        };
    // Drives the connection: every notification on the channel moves the version.
    let driver = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification)))
                    if notification.channel() == CHANNEL =>
                {
                    changes.changed();
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return anyhow::Error::new(err).context("the connection failed"),
                None => return anyhow::anyhow!("the connection closed"),
            }
        }
    };
    let control = keep_listening(&client, changes, backoff);
    tokio::select! {
        err = driver => err,
        Err(err) = control => err,
    }
}

/// Checks for the triggers, starts listening, then checks the connection every second; returns
/// only when something fails.
async fn keep_listening(
    client: &tokio_postgres::Client,
    changes: &Changes,
    backoff: &mut Backoff,
) -> anyhow::Result<std::convert::Infallible> {
    let triggers: i64 = client
        .query_one(TRIGGERS, &[])
        .await
        .context("looking for the change triggers")?
        .try_get(0)?;
    anyhow::ensure!(
        triggers == 2,
        "the database has no change triggers (its migrations are older than this service)"
    );
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .context("starting to listen")?;
    // From here on every commit is announced: earlier versions are dead.
    changes.set_listening(true);
    backoff.succeeded();
    tracing::info!("listening for changes");
    loop {
        tokio::time::sleep(PING_EVERY).await;
        tokio::time::timeout(PING_TIMEOUT, client.simple_query(""))
            .await
            .map_err(|_| anyhow::anyhow!("no answer to a check within {PING_TIMEOUT:?}"))?
            .context("checking the connection")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_exist_only_while_listening_and_never_repeat() {
        let changes = Changes::default();
        assert_eq!(changes.version(), None);
        changes.changed();
        assert_eq!(changes.version(), None);
        changes.set_listening(true);
        let first = changes.version().unwrap();
        changes.changed();
        let second = changes.version().unwrap();
        assert_ne!(first, second);
        changes.set_listening(false);
        assert_eq!(changes.version(), None);
        changes.set_listening(true);
        let third = changes.version().unwrap();
        assert!(third > second, "{third} after {second}");
    }
}
