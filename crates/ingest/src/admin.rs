//! The admin listener (its own port; never the public API): `GET /livez` (the process answers),
//! `GET /readyz` (consuming with a usable channel and a usable database, and not draining), and
//! the Prometheus text exposition at `GET /metrics`, served by `metrics_service::admin`. Also
//! [`probe`], the skeleton's HTTP client for tests.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::dev::Server;
use lapin::Channel;
use metrics_service::admin::{self, Probes};
use tracing::error;

use crate::database::Database;
use crate::telemetry::Metrics;

/// What readiness depends on.
#[derive(Debug)]
pub struct Health {
    channel: Mutex<Option<Channel>>,
    draining: AtomicBool,
    database: Arc<Database>,
    progress: Mutex<Progress>,
    /// The inbox's applier (`inbox.enabled`): since when it has failed, and why.
    applier: Mutex<Progress>,
    stall_timeout: Duration,
}

/// Whether the consumer is getting anywhere: since when the batch in hand has been waiting to be
/// settled, and the last reason it could not be.
#[derive(Debug, Default)]
struct Progress {
    busy_since: Option<Instant>,
    last_error: Option<String>,
    reported: bool,
}

impl Progress {
    /// Why no progress was made for `timeout`, if none was (`reason` of the seconds waited and
    /// the last error); logged as an error, with `log`, once per stall.
    fn stalled(
        &mut self,
        timeout: Duration,
        reason: impl FnOnce(u64, Option<&str>) -> String,
        log: &str,
    ) -> Option<String> {
        let waited = self.busy_since?.elapsed();
        if waited < timeout {
            return None;
        }
        let reason = reason(waited.as_secs(), self.last_error.as_deref());
        if !self.reported {
            self.reported = true;
            error!(
                stalled_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                reason = %reason,
                "{log}"
            );
        }
        Some(reason)
    }
}

impl Health {
    /// Not ready until a channel is set; not ready either while a batch has waited more than
    /// `stall_timeout` to be settled.
    pub fn new(database: Arc<Database>, stall_timeout: Duration) -> Self {
        Self {
            channel: Mutex::new(None),
            draining: AtomicBool::new(false),
            database,
            progress: Mutex::new(Progress::default()),
            applier: Mutex::new(Progress::default()),
            stall_timeout,
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A batch is being written: the clock of [`Health::check`]'s stall test starts, unless it
    /// already runs for an earlier batch still unsettled.
    pub fn batch_started(&self) {
        self.progress().busy_since.get_or_insert_with(Instant::now);
    }

    /// Why the batch in hand could not be settled yet (kept for the probe and the log).
    pub fn batch_failed(&self, reason: String) {
        self.progress().last_error = Some(reason);
    }

    /// A batch was settled: the consumer makes progress.
    pub fn batch_settled(&self) {
        *self.progress() = Progress::default();
    }

    /// Why the consumer has made no progress for longer than the stall timeout, if it has not.
    pub fn stalled(&self) -> Option<String> {
        self.progress().stalled(
            self.stall_timeout,
            |seconds, error| {
                format!(
                    "no batch settled for {seconds} s: {}",
                    error.unwrap_or("the batch in hand is still being written")
                )
            },
            "the consumer makes no progress; reporting not ready",
        )
    }

    /// The inbox's applier failed: the clock of its stall test starts, unless it already runs.
    pub fn applier_failed(&self, reason: String) {
        let mut applier = self.applier.lock().unwrap_or_else(PoisonError::into_inner);
        applier.busy_since.get_or_insert_with(Instant::now);
        applier.last_error = Some(reason);
    }

    /// The inbox's applier applied (or found nothing to apply).
    pub fn applier_succeeded(&self) {
        *self.applier.lock().unwrap_or_else(PoisonError::into_inner) = Progress::default();
    }

    /// Why the inbox's applier has failed for longer than the stall timeout, if it has: staged
    /// events are acknowledged and safe, but no longer counted.
    fn applier_stalled(&self) -> Option<String> {
        self.applier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stalled(
                self.stall_timeout,
                |seconds, error| {
                    format!(
                        "the inbox's applier has failed for {seconds} s: {}",
                        error.unwrap_or("unknown")
                    )
                },
                "staged events are not being applied; reporting not ready",
            )
    }

    /// Sets (or clears) the consuming channel.
    pub fn set_channel(&self, channel: Option<Channel>) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = channel;
    }

    /// Marks the service as draining: never ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else why not.
    pub async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".to_owned());
        }
        if let Some(reason) = self.stalled().or_else(|| self.applier_stalled()) {
            return Err(reason);
        }
        let connected = self
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|channel| channel.status().connected());
        if !connected {
            return Err("no usable AMQP channel".to_owned());
        }
        if !self.database.is_usable().await {
            return Err("database unreachable".to_owned());
        }
        Ok(())
    }
}

/// The answers of the admin listener ([`metrics_service::admin`] serves them).
#[derive(Debug)]
struct IngestProbes {
    health: Arc<Health>,
    metrics: Metrics,
}

impl Probes for IngestProbes {
    fn live(&self) -> HttpResponse {
        HttpResponse::Ok().content_type("text/plain").body("ok\n")
    }

    async fn ready(&self) -> HttpResponse {
        match self.health.check().await {
            Ok(()) => HttpResponse::Ok()
                .content_type("text/plain")
                .body("ready\n"),
            Err(reason) => HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body(format!("not ready: {reason}\n")),
        }
    }

    fn exposition(&self) -> Result<String, std::fmt::Error> {
        self.metrics.encode()
    }
}

/// Serves the admin routes on `listener` with one worker; the caller drives the returned server
/// and stops it through its handle (signals are the service's business, not the server's).
///
/// # Errors
///
/// When the listener cannot be used.
pub fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Metrics,
) -> std::io::Result<Server> {
    admin::serve(listener, Arc::new(IngestProbes { health, metrics }))
}

/// `GET path` on the admin listener at `addr`; returns the status code and the body.
///
/// # Errors
///
/// When the listener cannot be reached, does not answer within `wait`, or answers garbage.
pub async fn probe(addr: SocketAddr, path: &str, wait: Duration) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || admin::get(addr, &path, wait))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    fn health(stall_timeout: Duration) -> Health {
        let settings = Settings::from_sources(None, Some(HashMap::new())).unwrap();
        let database = Database::new(&settings.database, settings.table_name().unwrap()).unwrap();
        Health::new(Arc::new(database), stall_timeout)
    }

    #[tokio::test]
    async fn an_applier_failing_past_the_stall_timeout_makes_the_service_unready() {
        let health = health(Duration::from_millis(50));
        health.applier_failed("applying the inbox: the database is down".to_owned());
        assert_eq!(health.applier_stalled(), None, "not before the timeout");
        tokio::time::sleep(Duration::from_millis(60)).await;
        // A later failure keeps the clock of the first.
        health.applier_failed("applying the inbox: still down".to_owned());
        let reason = health.check().await.unwrap_err();
        assert!(
            reason.starts_with(
                "the inbox's applier has failed for 0 s: applying the inbox: still down"
            ),
            "{reason}"
        );
        health.applier_succeeded();
        assert_eq!(health.applier_stalled(), None);
    }
}
