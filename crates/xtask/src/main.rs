//! `xtask`: the project's tasks that need a running system, built from the same fixtures as the
//! tests (`metrics-test-support`), so the scripts do not re-implement them.
//!
//! `xtask stack [OPTIONS] -- COMMAND [ARGS...]` creates a throwaway database with every
//! migration, optionally seeds it, starts the services asked for on loopback ports they bind
//! themselves (port 0, read back from their startup line), waits until each is ready, runs
//! COMMAND with the stack's coordinates in its environment, then stops the services and drops
//! the database and broker names, whatever COMMAND's outcome; it exits with COMMAND's status.
//!
//! COMMAND sees:
//!
//! - `STACK_DATABASE_URL`: the database;
//! - `STACK_AMQP_URL`, `STACK_EXCHANGE`, `STACK_QUEUE` (with `--ingest`): the broker and the
//!   names the ingest service consumes;
//! - `STACK_API` and `STACK_QUERY_ADMIN` (`host:port`), `STACK_QUERY_PID` (with `--query`);
//! - `STACK_INGEST_ADMIN`, `STACK_INGEST_PID` (with `--ingest`).
//!
//! The servers are `TEST_DATABASE_URL` and `TEST_AMQP_URL`, as for the tests; the service
//! binaries are this program's siblings, or those in `METRICS_BIN_DIR`. The services get the
//! `METRICS_*` settings of this program's environment (but the database, broker and listen
//! addresses, which the stack sets), then those of `--setting`.
//!
//! `xtask delay --upstream HOST:PORT --micros N [--listen HOST:PORT]` forwards TCP connections
//! with N microseconds added in each direction (module `delay`): a benchmark's server as if it
//! were on another host.

mod delay;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use metrics_aggregator::schema::metrics_tables;
use metrics_aggregator::{DateRange, TableName, register_table, render_unrendered};
use metrics_test_support::process::{IngestTarget, Service, binary};
use metrics_test_support::{TestBroker, TestDatabase};

#[derive(Debug, Parser)]
#[command(about = "Project tasks that need a running system")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Runs a command against a throwaway database and services, then removes them.
    Stack(Stack),
    /// Forwards TCP connections with a fixed delay each way, until stopped.
    Delay(Delay),
}

#[derive(Debug, clap::Args)]
struct Delay {
    /// Where to accept connections.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: std::net::SocketAddr,
    /// The server to forward them to.
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// The delay added to each direction, in microseconds.
    #[arg(long)]
    micros: u64,
}

#[derive(Debug, clap::Args)]
struct Stack {
    /// Start metrics-query (API and admin listener).
    #[arg(long)]
    query: bool,
    /// Start metrics-ingest on broker names of its own.
    #[arg(long)]
    ingest: bool,
    /// The security key metrics-query requires (`OS_SECURITY_KEY`); none: the API is open.
    #[arg(long)]
    key: Option<String>,
    /// Seed this many days of rows ending yesterday first, through the aggregator (the `seed`
    /// example beside the binaries).
    #[arg(long)]
    seed_days: Option<u32>,
    /// Then run this SQL file on the database (after seeding, before the services start), one
    /// statement (ending in `;` at the end of a line) at a time.
    #[arg(long)]
    sql: Option<PathBuf>,
    /// A setting for the services, `METRICS_KEY=value` (repeatable).
    #[arg(long = "setting", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The settings the stack gives the services itself.
const OWNED: [&str; 7] = [
    "METRICS_DATABASE__URL",
    "METRICS_AMQP__URL",
    "METRICS_AMQP__EXCHANGE",
    "METRICS_AMQP__QUEUE",
    "METRICS_HTTP__LISTEN",
    "METRICS_ADMIN__LISTEN",
    "METRICS_BIN_DIR",
];

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=value"))
}

fn main() -> anyhow::Result<ExitCode> {
    let stack = match Cli::parse().task {
        Task::Stack(stack) => stack,
        Task::Delay(Delay {
            listen,
            upstream,
            micros,
        }) => {
            delay::run(listen, upstream, Duration::from_micros(micros))?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_stack(stack))
}

async fn run_stack(stack: Stack) -> anyhow::Result<ExitCode> {
    if !stack.query && !stack.ingest && stack.seed_days.is_none() && stack.sql.is_none() {
        eprintln!("xtask stack: a database only (neither --query nor --ingest)");
    }
    let db = TestDatabase::migrated();
    if let Some(days) = stack.seed_days {
        let status = Command::new(binary("examples/seed"))
            .args(["--url", db.url(), "--days", &days.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running the seed example")?;
        if !status.success() {
            bail!("seeding {days} days failed ({status})");
        }
    }
    if let Some(file) = &stack.sql {
        let sql =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // One statement at a time, each in its own transaction, so `VACUUM` may be among them.
        let mut conn = db.connect();
        for statement in sql.split_inclusive(";\n").filter(|s| !s.trim().is_empty()) {
            conn.batch_execute(statement)
                .with_context(|| format!("running {}: {statement}", file.display()))?;
        }
        // Rows the SQL wrote have no rendered JSON: render them, as a refresh would.
        let names: Vec<String> = metrics_tables::table
            .select(metrics_tables::name)
            .load(&mut conn)?;
        for name in names {
            let table = register_table(&mut conn, &name.parse::<TableName>()?)?;
            render_unrendered(&mut conn, table, DateRange::default())?;
        }
        // Rendering left a dead version of every row it wrote: vacuum them, as autovacuum would
        // soon after, so that reads see the table as it settles rather than pruning it as they
        // go (a benchmark of reads right after the update ran 15% slower).
        conn.batch_execute("VACUUM ANALYZE")
            .context("vacuuming after rendering")?;
    }
    // `METRICS_*` settings of this environment reach the services (`METRICS_CACHE__ENTRIES=0
    // scripts/bench-query.sh`), except where the stack puts them; `--setting` comes last.
    let inherited: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key.starts_with("METRICS_") && !OWNED.contains(&key.as_str()))
        .collect();
    let settings: Vec<(&str, &str)> = inherited
        .iter()
        .chain(&stack.settings)
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let mut command = Command::new(&stack.command[0]);
    command
        .args(&stack.command[1..])
        .env("STACK_DATABASE_URL", db.url());

    let broker = if stack.ingest {
        Some(TestBroker::new().await)
    } else {
        None
    };
    let mut services = Vec::new();
    if let Some(broker) = &broker {
        let mut ingest = Service::ingest_at(&IngestTarget::new(&db, broker), &settings);
        ingest.ready_within(Duration::from_secs(60)).await;
        command
            .env("STACK_AMQP_URL", broker.url())
            .env("STACK_EXCHANGE", broker.exchange())
            .env("STACK_QUEUE", broker.queue())
            .env("STACK_INGEST_ADMIN", ingest.admin.to_string())
            .env("STACK_INGEST_PID", ingest.pid().to_string());
        services.push(ingest);
    }
    if stack.query {
        let mut query_settings = settings.clone();
        if let Some(key) = &stack.key {
            query_settings.push(("OS_SECURITY_KEY", key));
        }
        let mut query = Service::query_with(&db, &query_settings);
        query.ready_within(Duration::from_secs(60)).await;
        let api = query.http.context("metrics-query reported no API port")?;
        command
            .env("STACK_API", api.to_string())
            .env("STACK_QUERY_ADMIN", query.admin.to_string())
            .env("STACK_QUERY_PID", query.pid().to_string());
        services.push(query);
    }

    let status = command
        .status()
        .with_context(|| format!("running {}", stack.command[0]));
    for service in &mut services {
        service.terminate(Duration::from_secs(30));
    }
    drop(services);
    if let Some(broker) = broker {
        broker.cleanup().await;
    }
    drop(db);
    let status = status?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
