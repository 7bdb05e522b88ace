//! Building and running the service: [`Application::build`] binds the admin listener and
//! reports its port; [`Application::run_until_stopped`] consumes until a shutdown token is
//! cancelled, then drains within `shutdown.timeout_ms`. Also the `migrate` and `healthcheck`
//! commands.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use anyhow::Context as _;
use diesel::{Connection, PgConnection};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use metrics_service::{admin, shutdown};

use crate::admin::Health;
use crate::config::{Settings, redacted_url};
use crate::consumer::{self, Context};
use crate::database::Database;
use crate::inbox;
use crate::telemetry::Metrics;
use crate::topology::Topology;

/// The service, built and listening, not yet consuming.
pub struct Application {
    admin_port: u16,
    server: Server,
    context: Arc<Context>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("admin_port", &self.admin_port)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Validates `settings`, binds the admin listener and prepares the database pool (which
    /// connects lazily, so the service starts, unready, while PostgreSQL is down).
    ///
    /// # Errors
    ///
    /// When the settings are invalid or the admin address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let table = settings.table_name()?;
        let listen = settings.admin_listen()?;
        // The inbox's applier holds a connection of its own while it applies, beside the one
        // that writes batches and the one that answers probes.
        let mut database_settings = settings.database.clone();
        if settings.inbox.enabled {
            database_settings.pool_size += 1;
        }
        let database = Arc::new(
            Database::new(&database_settings, table).context("preparing the database pool")?,
        );
        let metrics = Metrics::new();
        let health = Arc::new(Health::new(
            Arc::clone(&database),
            Duration::from_millis(settings.admin.stall_timeout_ms),
        ));
        let listener = TcpListener::bind(listen)
            .with_context(|| format!("binding the admin listener to {listen}"))?;
        let admin_port = listener.local_addr()?.port();
        let server = crate::admin::serve(listener, Arc::clone(&health), metrics.clone())
            .context("starting the admin listener")?;
        let context = Arc::new(Context {
            database_backoff: std::sync::Mutex::new(settings.backoff.policy()),
            topology: Topology::from_settings(&settings.amqp),
            settings,
            database,
            metrics,
            health,
            inbox: crate::inbox::Signals::default(),
        });
        Ok(Self {
            admin_port,
            server,
            context,
        })
    }

    /// The port the admin listener is bound to.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The service's metrics (the same values `/metrics` shows).
    pub fn metrics(&self) -> Metrics {
        self.context.metrics.clone()
    }

    /// Consumes until `shutdown` is cancelled; then stops consuming, settles the batch in hand,
    /// closes the channel and the connection and stops the admin listener, within
    /// `shutdown.timeout_ms` (beyond it, unacknowledged deliveries go back to the queue).
    ///
    /// # Errors
    ///
    /// Never after a successful build; the signature leaves room for listener failures.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            admin_port,
            server,
            context,
        } = self;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        info!(
            admin.port = admin_port,
            amqp.url = %redacted_url(&context.settings.amqp.url),
            database.url = %redacted_url(&context.settings.database.url),
            messaging.destination.name = %context.topology.queue,
            "metrics-ingest started"
        );
        let applier_stop = CancellationToken::new();
        let mut applier = tokio::spawn(inbox::run(Arc::clone(&context), applier_stop.clone()));
        let mut consumer = tokio::spawn(consumer::run(Arc::clone(&context), shutdown.clone()));
        // The consumer only returns once `shutdown` is cancelled, but a join handle must not be
        // polled again after it has completed, so remember whether it already has.
        let finished = tokio::select! {
            () = shutdown.cancelled() => false,
            _ = &mut consumer => true,
        };
        context.health.set_draining();
        context.metrics.set_ready(false);
        info!("shutdown requested: draining");
        let drain = Duration::from_millis(context.settings.shutdown.timeout_ms);
        let deadline = tokio::time::Instant::now() + drain;
        if !finished
            && tokio::time::timeout_at(deadline, &mut consumer)
                .await
                .is_err()
        {
            warn!(
                timeout_ms = context.settings.shutdown.timeout_ms,
                "draining took too long; closing with deliveries unacknowledged (they return to the queue)"
            );
            consumer.abort();
        }
        // The consumer has settled its last batch: the applier applies what is staged in the
        // time left, and leaves the rest staged for the next applier.
        applier_stop.cancel();
        if tokio::time::timeout_at(deadline, &mut applier)
            .await
            .is_err()
        {
            warn!("applying the inbox took too long; the rest stays staged for the next applier");
            applier.abort();
        }
        server_handle.stop(true).await;
        let _ = server_task.await;
        info!("metrics-ingest stopped");
        Ok(())
    }
}

/// Runs the service until SIGTERM or SIGINT.
///
/// # Errors
///
/// When the service cannot be built or the signal handlers cannot be installed.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    let signals = shutdown::cancel_on_signal(shutdown.clone())?;
    let result = application.run_until_stopped(shutdown).await;
    signals.abort();
    result
}

/// Applies the embedded migrations and returns how many ran.
///
/// # Errors
///
/// When the database cannot be reached or a migration fails.
pub async fn migrate(settings: &Settings) -> anyhow::Result<usize> {
    let url = settings.database.url.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(url.expose_secret())
            .with_context(|| format!("connecting to {}", redacted_url(&url)))?;
        metrics_aggregator::migrate(&mut conn).context("applying the migrations")
    })
    .await
    .context("running the migrations")??;
    info!(applied, "migrations applied");
    Ok(applied)
}

/// Asks the admin listener of `settings` whether the service is ready (for Docker's
/// `HEALTHCHECK`).
///
/// # Errors
///
/// When the listener cannot be reached or the service is not ready.
pub async fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    let listen = settings.admin_listen()?;
    tokio::task::spawn_blocking(move || admin::healthcheck(listen, admin::HEALTHCHECK_TIMEOUT))
        .await
        .context("asking /readyz")?
}
