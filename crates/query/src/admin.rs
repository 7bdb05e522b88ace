//! The admin listener, on its own port and without authentication: `/livez` (the process
//! answers), `/readyz` (every configured database answers a read, and not draining), and Prometheus
//! text at `/metrics`: what they answer is here, the listener is `metrics_service::admin`'s, as is
//! [`healthcheck`], the client side of `metrics-query healthcheck`.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{HttpResponse, ResponseError, web};
use metrics_service::admin::{self, Probes};
use serde_json::json;

pub use metrics_service::admin::healthcheck;

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
    admin::serve(listener, Arc::new(state))
}

impl Probes for AdminState {
    fn live(&self) -> HttpResponse {
        HttpResponse::Ok().json(json!({"status": "ok"}))
    }

    async fn ready(&self) -> HttpResponse {
        if self.draining.load(Ordering::Relaxed) {
            return HttpResponse::ServiceUnavailable().json(json!({"status": "draining"}));
        }
        let mut failed = Vec::new();
        for database in self.databases.iter() {
            let pool = database.pool();
            let table = database.tables.first().cloned().unwrap_or_default();
            // The stamp read every API request starts with: the database answers and holds the
            // schema.
            let check = web::block(move || -> anyhow::Result<()> {
                let mut conn = pool.get()?;
                metrics_aggregator::latest_change(&mut conn, table.as_str())?;
                Ok(())
            });
            let outcome = match tokio::time::timeout(self.timeout, check).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(err)) => Err(err.into()),
                Err(_) => Err(anyhow::anyhow!("no answer within {:?}", self.timeout)),
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

    fn exposition(&self) -> Result<String, std::fmt::Error> {
        for database in self.databases.iter() {
            let pool_state = database.pool().state();
            self.metrics.observe_pool(
                &database.id,
                pool_state.connections,
                pool_state.idle_connections,
                database.pool().max_size(),
            );
        }
        self.metrics.encode()
    }

    fn not_found(&self) -> HttpResponse {
        routes::not_found_error().error_response()
    }
}
