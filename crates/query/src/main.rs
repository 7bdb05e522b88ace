//! The `metrics-query` binary: parses arguments, loads settings, initialises telemetry and runs
//! the service until SIGTERM or Ctrl-C; `healthcheck` probes a running one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_query::{Application, Settings, admin, telemetry};
use tokio_util::sync::CancellationToken;

/// Serves AgentOS `GET /metrics` from PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "metrics-query", version)]
struct Cli {
    /// A TOML file over the defaults (environment variables `METRICS_*` override both).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the admin listener (the default).
    Serve,
    /// Exit 0 when the admin listener's `/readyz` answers 200 (for container health checks).
    Healthcheck,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading the configuration")?;
    if let Some(Command::Healthcheck) = cli.command {
        return admin::healthcheck(settings.admin.listen, Duration::from_secs(5));
    }
    telemetry::init(&settings.log, std::io::stdout).context("initialising logging")?;
    let application = Application::build(settings).context("starting metrics-query")?;
    let shutdown = CancellationToken::new();
    actix_web::rt::spawn(cancel_on_signal(shutdown.clone()));
    application.run_until_stopped(shutdown).await
}

/// Cancels `shutdown` on SIGTERM (orchestrators) or Ctrl-C (terminals).
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
