//! `apply` throughput and `rebuild` time against the local PostgreSQL.
//!
//! ```text
//! cargo bench -p metrics-aggregator --bench aggregator
//! ```
//!
//! Uses a throwaway database on `TEST_DATABASE_URL` (default: loopback). Prints one line per
//! figure; `BENCHMARKS.md` records them.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::time::Instant;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use metrics_aggregator::schema::daily_metrics;
use metrics_aggregator::{DateRange, TableName, apply, rebuild, register_table};
use metrics_events::{Event, EventKind};
use metrics_publisher::traffic::{self, TrafficOptions};
use metrics_test_support::TestDatabase;

/// `metrics-publisher`'s synthetic traffic (`traffic::events`, seed 1): `sessions` sessions of
/// 1 to 5 runs (3 on average), `users` users, spread over `days` days from 2025-01-01.
fn stream(sessions: usize, users: usize, days: u32) -> Vec<Event> {
    traffic::events(&TrafficOptions {
        sessions,
        users,
        start: DateTime::<Utc>::from_timestamp(1_735_689_600, 0).unwrap(),
        days,
        source: "agno://bench".to_owned(),
        seed: 1,
        ..TrafficOptions::default()
    })
}

fn runs(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::RunCompleted(_)))
        .count()
}

#[derive(QueryableByName)]
struct Size {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes: i64,
}

/// Bytes on disk (heap, indexes, TOAST) per stored row of each table.
fn storage(conn: &mut PgConnection) {
    diesel::sql_query("VACUUM ANALYZE").execute(conn).unwrap();
    let sizes: Vec<Size> = diesel::sql_query(
        "SELECT c.relname::text AS name, c.reltuples::bigint AS rows, \
         pg_total_relation_size(c.oid) AS bytes FROM pg_class c \
         WHERE c.relname IN ('runs', 'sessions', 'day_users', 'daily_metrics') ORDER BY 1",
    )
    .load(conn)
    .unwrap();
    for size in sizes {
        println!(
            "storage: {:<13} {:>8} rows {:>10} bytes = {:>5} bytes per row",
            size.name,
            size.rows,
            size.bytes,
            size.bytes / size.rows.max(1)
        );
    }
}

/// Resets the peak resident memory of this process to its current value (Linux `clear_refs`).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Peak resident memory of this process since start or [`reset_peak_rss`].
fn peak_rss_mib() -> f64 {
    rss_field("VmHWM:")
}

/// Resident memory of this process now.
fn rss_mib() -> f64 {
    rss_field("VmRSS:")
}

fn rss_field(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    // `cargo bench ... -- apply` or `-- rebuild` runs one part; cargo's own flags are ignored.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let db = TestDatabase::migrated();
    let mut conn = db.connect();

    if wants("apply") {
        bench_apply(&mut conn);
    }
    if wants("rebuild") {
        bench_rebuild(&mut conn);
    }
}

fn bench_apply(conn: &mut PgConnection) {
    for (batch, sessions) in [(1usize, 1_000usize), (100, 10_000), (1_000, 25_000)] {
        let name: TableName = format!("apply_batch_{batch}").parse().unwrap();
        let table = register_table(conn, &name).unwrap();
        let events = stream(sessions, 100, 7);
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            apply(conn, table, chunk).unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "apply: batches of {batch:>5}: {:>7} events in {elapsed:>6.2} s = {:>8.0} events/s",
            events.len(),
            events.len() as f64 / elapsed
        );
    }
}

fn bench_rebuild(conn: &mut PgConnection) {
    let name: TableName = "rebuild_year".parse().unwrap();
    let table = register_table(conn, &name).unwrap();
    let events = stream(100_000, 100, 365);
    let started = Instant::now();
    for chunk in events.chunks(1_000) {
        apply(conn, table, chunk).unwrap();
    }
    let seeded = started.elapsed().as_secs_f64();
    println!(
        "seed: a year of 100,000 sessions and {} runs ({} events) applied in {seeded:.2} s",
        runs(&events),
        events.len()
    );
    drop(events);
    storage(conn);
    reset_peak_rss();
    let rss_before = rss_mib();

    let started = Instant::now();
    let report = rebuild(conn, table, DateRange::default()).unwrap();
    println!(
        "rebuild: a year, rows already exact: {:.3} s ({report:?})",
        started.elapsed().as_secs_f64()
    );

    diesel::delete(daily_metrics::table.filter(daily_metrics::table_id.eq(table.get())))
        .execute(conn)
        .unwrap();
    let started = Instant::now();
    let report = rebuild(conn, table, DateRange::default()).unwrap();
    println!(
        "rebuild: a year, every row rewritten: {:.3} s ({report:?})",
        started.elapsed().as_secs_f64()
    );
    println!(
        "memory: resident {rss_before:.1} MiB before the rebuilds, peak {:.1} MiB during them",
        peak_rss_mib()
    );
}
