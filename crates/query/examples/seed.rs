//! Benchmark fixture: migrates the database at `--url` and writes `--days` days of rows into
//! metrics table `agno_metrics` through the aggregator, ending yesterday (UTC). Each day is one
//! day of `metrics-publisher`'s synthetic traffic (`traffic::events`, seeded with the day's
//! number): `--sessions` sessions of 1 to 5 runs, on the generator's five models, by three
//! users. Used by `scripts/bench-query.sh`, `scripts/bench-query-users.sh` and
//! `scripts/schemathesis.sh` (through `xtask stack --seed-days`).
#![expect(
    clippy::print_stdout,
    reason = "a command-line fixture reports what it wrote"
)]

use anyhow::Context;
use chrono::{Days, Utc};
use clap::Parser;
use diesel::{Connection, PgConnection};
use metrics_aggregator::TableName;
use metrics_publisher::traffic::{self, TrafficOptions};

#[derive(Debug, Parser)]
struct Args {
    /// The database to seed.
    #[arg(long)]
    url: String,
    /// How many days of rows to write.
    #[arg(long, default_value_t = 400)]
    days: u64,
    /// Sessions a day.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut conn = PgConnection::establish(&args.url).context("connecting")?;
    metrics_aggregator::migrate(&mut conn).context("migrating")?;
    let table = metrics_aggregator::register_table(&mut conn, &TableName::default())?;
    let today = Utc::now().date_naive();
    for day in 1..=args.days {
        let date = today - Days::new(day);
        let start = date
            .and_hms_opt(0, 0, 0)
            .context("midnight is a valid time")?
            .and_utc();
        let events = traffic::events(&TrafficOptions {
            sessions: args.sessions,
            users: 3,
            start,
            days: 1,
            source: "bench".to_owned(),
            seed: day,
            ..TrafficOptions::default()
        });
        let events: Vec<_> = events
            .into_iter()
            .map(|mut event| {
                // The generator spreads the sessions over the whole day; halved, they start
                // before noon and their runs (at most 5 x 15 min later) stay on the day.
                let offset = event.time - start;
                event.time = start + offset / 2;
                event
            })
            .collect();
        metrics_aggregator::apply(&mut conn, table, &events)?;
    }
    println!("seeded {} days of agno_metrics", args.days);
    Ok(())
}
