//! The `metrics-query` binary: parses arguments, loads settings, initialises telemetry and runs
//! the service until SIGTERM or Ctrl-C; `healthcheck` probes a running one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_query::{Application, Settings, telemetry};
use metrics_service::admin;
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
        return admin::healthcheck(settings.admin.listen, admin::HEALTHCHECK_TIMEOUT);
    }
    telemetry::init(&settings.log, std::io::stdout).context("initialising logging")?;
    let application = Application::build(settings).context("starting metrics-query")?;
    let shutdown = CancellationToken::new();
    let signals = metrics_service::shutdown::cancel_on_signal(shutdown.clone())?;
    let result = application.run_until_stopped(shutdown).await;
    signals.abort();
    result
}
