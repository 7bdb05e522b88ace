//! The admin listener (its own port; never the public API): `GET /livez` (the process answers),
//! `GET /readyz` (consuming with a usable channel and a usable database, and not draining), and
//! the Prometheus text exposition at `GET /metrics`. Also [`probe`], the tiny HTTP client behind
//! `metrics-ingest healthcheck`.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use lapin::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

impl Health {
    /// Not ready until a channel is set; not ready either while a batch has waited more than
    /// `stall_timeout` to be settled.
    pub fn new(database: Arc<Database>, stall_timeout: Duration) -> Self {
        Self {
            channel: Mutex::new(None),
            draining: AtomicBool::new(false),
            database,
            progress: Mutex::new(Progress::default()),
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
        let mut progress = self.progress();
        let waited = progress.busy_since?.elapsed();
        if waited < self.stall_timeout {
            return None;
        }
        let reason = format!(
            "no batch settled for {} s: {}",
            waited.as_secs(),
            progress
                .last_error
                .as_deref()
                .unwrap_or("the batch in hand is still being written")
        );
        if !progress.reported {
            progress.reported = true;
            error!(
                stalled_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                reason = %reason,
                "the consumer makes no progress; reporting not ready"
            );
        }
        Some(reason)
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
        if let Some(reason) = self.stalled() {
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

async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(health: web::Data<Arc<Health>>) -> HttpResponse {
    match health.check().await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {reason}\n")),
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    match metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
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
    registry: Metrics,
) -> std::io::Result<Server> {
    let health = web::Data::new(health);
    let registry = web::Data::new(registry);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(health.clone())
            .app_data(registry.clone())
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(|| async {
                HttpResponse::build(StatusCode::NOT_FOUND).finish()
            }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

/// `GET path` on the admin listener at `addr`; returns the status code and the body.
///
/// # Errors
///
/// When the listener cannot be reached, does not answer within `wait`, or answers garbage.
pub async fn probe(addr: SocketAddr, path: &str, wait: Duration) -> std::io::Result<(u16, String)> {
    tokio::time::timeout(wait, async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The address to probe for a listen address: a wildcard listens on loopback too.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let probe = |listen: &str| probe_address(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:9091"), "127.0.0.1:9091");
        assert_eq!(probe("[::]:9091"), "[::1]:9091");
        assert_eq!(probe("10.1.2.3:80"), "10.1.2.3:80");
    }
}
