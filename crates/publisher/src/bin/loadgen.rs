//! `metrics-loadgen`: publishes realistic synthetic AgentOS traffic to RabbitMQ.
//!
//! ```text
//! metrics-loadgen --sessions 10000 --days 7 --rate 1000 --duplicates 0.05 --shuffle --poison 0.01
//! ```
//!
//! Prints what it sent (`--json` for a machine-readable summary): the totals the `GET /metrics`
//! rows must add up to once ingest has consumed everything.
#![expect(
    clippy::print_stdout,
    reason = "the summary on stdout is this tool's output"
)]

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{NaiveDate, TimeZone, Utc};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use metrics_publisher::traffic::{TrafficOptions, generate};
use metrics_publisher::{Publisher, PublisherOptions};

/// Publish synthetic AgentOS run and session events to RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "metrics-loadgen", version)]
struct Args {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "METRICS_AMQP__URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    url: String,
    /// The producers' exchange.
    #[arg(long, env = "METRICS_AMQP__EXCHANGE", default_value = "agentos.events")]
    exchange: String,
    /// Sessions to generate (each has 1 to --max-runs runs).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// The most runs of one session.
    #[arg(long, default_value_t = 5)]
    max_runs: u32,
    /// Distinct users.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Spread sessions over this many days.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// First day (YYYY-MM-DD, UTC); default: --days days ago.
    #[arg(long)]
    start: Option<NaiveDate>,
    /// Events per message: 1 publishes single events, more publishes batch messages.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Events per second to publish at; 0 publishes as fast as confirms allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of runs re-sent later as new events with the same run_id.
    #[arg(long, default_value_t = 0.0)]
    resent_runs: f64,
    /// Publish in random order instead of time order.
    #[arg(long)]
    shuffle: bool,
    /// Fraction of extra poison messages (each ends in the dead-letter queue).
    #[arg(long, default_value_t = 0.0)]
    poison: f64,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The CloudEvents source.
    #[arg(long, default_value = "agno://metrics-loadgen")]
    source: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let start = match args.start {
        Some(day) => Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN)),
        None => Utc::now() - chrono::Duration::days(i64::from(args.days)),
    };
    let traffic = generate(&TrafficOptions {
        sessions: args.sessions,
        max_runs_per_session: args.max_runs,
        users: args.users,
        start,
        days: args.days,
        source: args.source.clone(),
        batch: args.batch,
        duplicates: args.duplicates,
        resent_runs: args.resent_runs,
        shuffle: args.shuffle,
        poison: args.poison,
        seed: args.seed,
    });

    let publisher = Publisher::connect(
        &args.url,
        PublisherOptions {
            exchange: args.exchange.clone(),
            connection_name: "metrics-loadgen".to_owned(),
            ..PublisherOptions::default()
        },
    )
    .await
    .context("connecting to RabbitMQ")?;

    let progress = ProgressBar::new(traffic.messages.len() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} messages ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?,
    );
    // At a rate, publish in slices of a tenth of a second's worth; otherwise in big windows.
    let events_per_message = args.batch.max(1) as u64;
    let slice = if args.rate == 0 {
        1024
    } else {
        usize::try_from((args.rate / 10 / events_per_message).max(1)).unwrap_or(1)
    };
    let started = Instant::now();
    let mut sent_events: u64 = 0;
    for chunk in traffic.messages.chunks(slice) {
        if args.rate > 0 {
            let due = Duration::from_secs_f64(sent_events as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        publisher
            .publish_all(chunk)
            .await
            .context("publishing to RabbitMQ")?;
        sent_events += chunk.len() as u64 * events_per_message;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    publisher.close().await;
    let elapsed = started.elapsed().as_secs_f64();

    let summary = &traffic.summary;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(summary).context("rendering the summary")?
        );
    } else {
        println!(
            "published {} messages ({} events, {} distinct, {} redelivered, {} runs re-sent, {} \
             poison) to `{}` in {elapsed:.1} s",
            summary.messages,
            summary.events_sent,
            summary.distinct_events,
            summary.redeliveries,
            summary.resent_runs,
            summary.poison_messages,
            args.exchange
        );
        println!(
            "days {} to {}: sessions agent/team/workflow {:?}, runs {:?}, {} users",
            summary.first_day, summary.last_day, summary.sessions, summary.runs, summary.users
        );
        println!(
            "tokens input {} output {} total {}, cost {}",
            summary.input_tokens, summary.output_tokens, summary.total_tokens, summary.cost
        );
    }
    Ok(())
}
