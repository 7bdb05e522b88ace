//! `apply` throughput and `rebuild` time against the local PostgreSQL.
//!
//! ```text
//! cargo bench -p metrics-aggregator --bench aggregator
//! ```
//!
//! Uses a throwaway database on `TEST_DATABASE_URL` (default: loopback). Prints one line per
//! figure; `BENCHMARKS.md` records them.
//!
//! The `apply` part also says where the time goes: how long decoding the batches' message bodies
//! takes (`metrics_events::decode_message`, timed apart from `apply`), and, through diesel's
//! connection instrumentation, how long each kind of statement takes from its start (before its
//! binds are encoded) to the arrival of its result. What `apply` spends outside its statements
//! (the fold, reading rows into structs) is the rest.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use metrics_aggregator::schema::daily_metrics;
use metrics_aggregator::{DateRange, TableName, apply, rebuild, register_table};
use metrics_events::{Event, EventKind, Limits, decode_message, encode, encode_batch};
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
    let timings = Arc::new(Mutex::new(Timings::default()));
    conn.set_instrumentation(StatementTimer {
        timings: Arc::clone(&timings),
        current: None,
    });
    for (batch, sessions, users, days) in apply_runs() {
        let name: TableName = format!("apply_batch_{batch}").parse().unwrap();
        let table = register_table(conn, &name).unwrap();
        let events = stream(sessions, users, days);
        let decode = decode_time(&events, batch);
        *timings.lock().unwrap() = Timings::default();
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            apply(conn, table, chunk).unwrap();
        }
        let elapsed = started.elapsed();
        let seconds = elapsed.as_secs_f64();
        println!(
            "apply: batches of {batch:>5}: {:>7} events in {seconds:>6.2} s = {:>8.0} events/s",
            events.len(),
            events.len() as f64 / seconds
        );
        let batches = events.len().div_ceil(batch);
        timings.lock().unwrap().print(batches, elapsed, decode);
    }
    conn.set_instrumentation(|_: InstrumentationEvent<'_>| {});
}

/// The `apply` runs: (batch size, sessions, users, days). By default batches of 1, 100 and
/// 1,000 events over 1,000, 10,000 and 25,000 sessions of 100 users in 7 days; `APPLY_RUNS`
/// replaces them, as space-separated `BATCH:SESSIONS[:USERS[:DAYS]]` (for example `12:50000:500:30`,
/// ingest's transactions of single-event messages on the drain benchmark's traffic).
fn apply_runs() -> Vec<(usize, usize, usize, u32)> {
    let Ok(runs) = std::env::var("APPLY_RUNS") else {
        return vec![
            (1, 1_000, 100, 7),
            (100, 10_000, 100, 7),
            (1_000, 25_000, 100, 7),
        ];
    };
    runs.split_whitespace()
        .map(|run| {
            let mut parts = run.split(':').map(|part| part.parse::<usize>().unwrap());
            let batch = parts.next().unwrap();
            let sessions = parts.next().unwrap();
            let users = parts.next().unwrap_or(100);
            let days = u32::try_from(parts.next().unwrap_or(7)).unwrap();
            (batch, sessions, users, days)
        })
        .collect()
}

/// How long decoding the batches of `events` takes, as the message bodies ingest receives: one
/// event per body for batches of one, else a JSON array per batch.
fn decode_time(events: &[Event], batch: usize) -> Duration {
    let bodies: Vec<Vec<u8>> = events
        .chunks(batch)
        .map(|chunk| {
            let body = if batch == 1 {
                encode(&chunk[0])
            } else {
                encode_batch(chunk)
            };
            serde_json::to_vec(&body.unwrap()).unwrap()
        })
        .collect();
    let limits = Limits::default();
    let started = Instant::now();
    for body in &bodies {
        let message = decode_message(body, &limits).unwrap();
        assert!(message.events.iter().all(Result::is_ok));
    }
    started.elapsed()
}

/// Time spent per kind of statement, in the order the kinds first ran.
#[derive(Default)]
struct Timings {
    statements: Vec<(String, u64, Duration)>,
}

impl Timings {
    fn add(&mut self, kind: String, elapsed: Duration) {
        match self.statements.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, calls, total)) => {
                *calls += 1;
                *total += elapsed;
            }
            None => self.statements.push((kind, 1, elapsed)),
        }
    }

    /// Prints the mean time per batch of each kind of statement, and of the rest of `apply`.
    fn print(&self, batches: usize, elapsed: Duration, decode: Duration) {
        let per_batch = |total: Duration| total.as_secs_f64() * 1e3 / batches as f64;
        let share = |total: Duration| 100.0 * total.as_secs_f64() / elapsed.as_secs_f64();
        println!(
            "  decode (not in apply's time): {:>7.3} ms per batch",
            per_batch(decode)
        );
        println!("  apply, per batch:    ms   calls  share  statement");
        let mut statements = Duration::ZERO;
        for (kind, calls, total) in &self.statements {
            statements += *total;
            println!(
                "    {:>13.3} {:>7.2} {:>5.1}%  {kind}",
                per_batch(*total),
                *calls as f64 / batches as f64,
                share(*total)
            );
        }
        let rest = elapsed.saturating_sub(statements);
        println!(
            "    {:>13.3} {:>7} {:>5.1}%  outside statements (the fold, rows to structs)",
            per_batch(rest),
            "",
            share(rest)
        );
        println!(
            "    {:>13.3} {:>7} {:>6}  total",
            per_batch(elapsed),
            "",
            ""
        );
    }
}

/// A diesel [`Instrumentation`] that times each statement by its kind ([`statement_kind`]).
struct StatementTimer {
    timings: Arc<Mutex<Timings>>,
    current: Option<(String, Instant)>,
}

impl Instrumentation for StatementTimer {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                let mut sql = FirstWrite::default();
                // The query's text is its first write; the binds that follow are cut off.
                let _ = write!(sql, "{query}");
                self.current = Some((statement_kind(&sql.0), Instant::now()));
            }
            InstrumentationEvent::FinishQuery { .. } => {
                if let Some((kind, started)) = self.current.take() {
                    self.timings.lock().unwrap().add(kind, started.elapsed());
                }
            }
            _ => {}
        }
    }
}

/// A [`std::fmt::Write`] that keeps the first piece written and refuses the rest.
#[derive(Default)]
struct FirstWrite(String);

impl std::fmt::Write for FirstWrite {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.is_empty() {
            self.0.push_str(s);
            Ok(())
        } else {
            Err(std::fmt::Error)
        }
    }
}

/// A short name of what a statement does: its verb and the tables it reads or writes
/// (`upsert user_daily_metrics`, `select runs`).
fn statement_kind(sql: &str) -> String {
    const TABLES: [&str; 5] = [
        "user_daily_metrics",
        "daily_metrics",
        "day_users",
        "sessions",
        "runs",
    ];
    let sql = sql.replace('"', "");
    let words: Vec<String> = sql
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .to_owned()
        })
        .collect();
    let upper = |i: usize| {
        words
            .get(i)
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default()
    };
    match upper(0).as_str() {
        "BEGIN" | "COMMIT" | "ROLLBACK" => return upper(0).to_lowercase(),
        _ if sql.contains("pg_advisory_xact_lock") => return "lock".to_owned(),
        _ => {}
    }
    // Each verb applied to a table, in the order written (a `WITH` may hold several).
    let mut parts: Vec<String> = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let verb = match word.to_ascii_uppercase().as_str() {
            "INSERT" if upper(i + 1) == "INTO" => {
                // Up to the next statement of a `WITH`.
                let end = (i + 1..words.len())
                    .find(|&j| upper(j) == "INSERT")
                    .unwrap_or(words.len());
                if (i..end).any(|j| upper(j) == "DO" && upper(j + 1) == "UPDATE") {
                    "upsert"
                } else {
                    "insert"
                }
            }
            "DELETE" if upper(i + 1) == "FROM" => "delete",
            "UPDATE" if i == 0 || upper(i - 1) != "DO" => "update",
            "COPY" => "copy",
            "FROM" | "JOIN" if i > 0 && upper(i - 1) != "DELETE" => "select",
            _ => continue,
        };
        let target = words[i + 1..]
            .iter()
            .find(|w| !w.eq_ignore_ascii_case("INTO") && !w.eq_ignore_ascii_case("FROM"));
        if let Some(table) = target.filter(|t| TABLES.contains(&t.as_str())) {
            let part = format!("{verb} {table}");
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    if parts.is_empty() {
        words.iter().take(3).cloned().collect::<Vec<_>>().join(" ")
    } else {
        parts.join(", ")
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
