//! The `metrics-ingest` binary: parses arguments, loads the settings, initialises telemetry and
//! runs the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_ingest::Settings;
use metrics_service::telemetry;

/// Consume AgentOS events from RabbitMQ into the daily metrics rows in PostgreSQL.
///
/// Settings: embedded defaults < `--config FILE` < `METRICS_*` environment variables
/// (`METRICS_DATABASE__URL`, `METRICS_AMQP__URL`, ...; see docs/ingest.md).
#[derive(Debug, Parser)]
#[command(name = "metrics-ingest", version)]
struct Cli {
    /// A TOML file layered over the defaults (and under the environment).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume until SIGTERM or SIGINT (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Exit 0 when the running service's `/readyz` on the admin listener answers 200.
    Healthcheck,
}

fn main() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(start());
    // A database worker stuck on a frozen connection was abandoned (its write deadline passed);
    // exiting does not wait for it, as dropping the runtime would.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn start() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading the settings")?;
    telemetry::init(&settings.log, std::io::stdout, &[]).context("initialising logging")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => metrics_ingest::run(settings).await?,
        Command::Migrate => {
            metrics_ingest::migrate(&settings).await?;
        }
        Command::Healthcheck => {
            if let Err(err) = metrics_ingest::healthcheck(&settings).await {
                tracing::error!(error = format!("{err:#}"), "not healthy");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
