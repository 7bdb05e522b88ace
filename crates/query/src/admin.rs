//! The admin listener, on its own port and without authentication: `/livez` (the process
//! answers), `/readyz` (every configured database answers a read, and not draining), and Prometheus
//! text at `/metrics`. Also the client side of `metrics-query healthcheck`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use serde_json::json;

use crate::routes;
use crate::startup::Databases;
use crate::telemetry::Metrics;

/// What the admin handlers share with the API.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The databases whose reachability `/readyz` reports.
    pub databases: Arc<Databases>,
    /// The metrics `/metrics` exposes.
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: `/readyz` then fails so traffic moves elsewhere.
    pub draining: Arc<AtomicBool>,
    /// Longest `/readyz` waits for a database.
    pub timeout: Duration,
}

/// The admin server on `listener`, one worker.
///
/// # Errors
///
/// When the listener cannot be used.
pub fn server(listener: TcpListener, state: AdminState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(prometheus))
            .default_service(web::to(routes::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if state.draining.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "draining"}));
    }
    let mut failed = Vec::new();
    for database in state.databases.iter() {
        let pool = database.pool.clone();
        let table = database.tables.first().cloned().unwrap_or_default();
        // The stamp read every API request starts with: the database answers and holds the schema.
        let check = web::block(move || -> anyhow::Result<()> {
            let mut conn = pool.get()?;
            metrics_aggregator::latest_change(&mut conn, table.as_str())?;
            Ok(())
        });
        let outcome = match tokio::time::timeout(state.timeout, check).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(anyhow::anyhow!("no answer within {:?}", state.timeout)),
        };
        if let Err(err) = outcome {
            // Warn: the service is degraded; the orchestrator acts on the probe.
            tracing::warn!(
                db.id = database.id,
                error = format!("{err:#}"),
                "database unreachable"
            );
            failed.push(database.id.clone());
        }
    }
    if failed.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "databases": failed}))
    }
}

async fn prometheus(state: web::Data<AdminState>) -> HttpResponse {
    for database in state.databases.iter() {
        let pool_state = database.pool.state();
        state.metrics.observe_pool(
            &database.id,
            pool_state.connections,
            pool_state.idle_connections,
            database.pool.max_size(),
        );
    }
    match state.metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// `metrics-query healthcheck`: GETs `/readyz` of the admin listener at `listen` (an
/// unspecified address means this host) and succeeds on 200.
///
/// # Errors
///
/// When the listener cannot be reached within `timeout` or answers anything but 200.
pub fn healthcheck(listen: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to the admin listener at {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the /readyz response")?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .context("reading the /readyz status line")?;
    anyhow::ensure!(
        status == StatusCode::OK.as_u16(),
        "/readyz answered {status}: {}",
        response.split("\r\n\r\n").nth(1).unwrap_or_default()
    );
    Ok(())
}
