//! A crash loop of ingest: SIGKILLed mid-batch again and again, more times than the queue's
//! delivery limit. Every kill returns the deliveries the process held to the queue, and the
//! broker counts each return towards `x-delivery-limit`; valid messages must still never reach
//! the limit (which would dead-letter them), and every run must count once when ingest finally
//! runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl};
use metrics_publisher::traffic::{TrafficOptions, generate};
use metrics_test_support::process::{IngestTarget, Service};
use metrics_test_support::rows::reference;
use metrics_test_support::{TestBroker, TestDatabase, eventually};

use crate::{TABLE, check_dead_letters, converge, drain_dead_letters, publish, queue_state, split};

/// The default `amqp.delivery_limit` (`crates/ingest/config/default.toml`).
const DELIVERY_LIMIT: usize = 20;

/// The default `amqp.prefetch`, the most deliveries a replica holds.
const PREFETCH: usize = 24;

/// How long one step of the loop (a replica taking its deliveries, or the broker noticing it is
/// gone) may take.
const STEP: Duration = Duration::from_secs(30);

/// Holds `EXCLUSIVE` locks on every table of the database while it lives: readers pass, every
/// write waits, so a replica takes its deliveries and then hangs in the middle of writing its
/// first batch, which is where the loop kills it.
struct WritesBlocked(PgConnection);

impl WritesBlocked {
    fn on(database_url: &str) -> Self {
        let mut conn = PgConnection::establish(database_url).unwrap();
        metrics_test_support::block_writes(&mut conn);
        Self(conn)
    }
}

impl Drop for WritesBlocked {
    fn drop(&mut self) {
        let _ = self.0.batch_execute("ROLLBACK");
    }
}

/// Connections to `database` waiting for a lock: a write hanging behind [`WritesBlocked`].
fn waiting_for_a_lock(database_url: &str, database: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        waiting: i64,
    }
    let mut conn = PgConnection::establish(database_url).unwrap();
    diesel::sql_query(
        "SELECT count(*) AS waiting FROM pg_stat_activity \
         WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind::<diesel::sql_types::Text, _>(database)
    .get_result::<Waiting>(&mut conn)
    .unwrap()
    .waiting
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_past_the_delivery_limit_dead_letters_no_valid_message() {
    let _serial = crate::SERIAL.lock().await;
    let started = Instant::now();
    let traffic = generate(&TrafficOptions {
        sessions: 400,
        max_runs_per_session: 4,
        users: 40,
        start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
        days: 7,
        source: "agno://metrics-faults-crash-loop".to_owned(),
        batch: 1,
        duplicates: 0.05,
        resent_runs: 0.05,
        shuffle: true,
        poison: 0.01,
        seed: 79,
    });
    let mut valid = Vec::new();
    let mut poison = BTreeSet::new();
    split(&traffic.messages, &mut valid, &mut poison);
    let expected = reference(&valid);
    let total = traffic.messages.len();
    // More messages than one replica takes at once, so that some wait behind the window.
    assert!(total > PREFETCH, "{total} messages");

    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let target = IngestTarget::new(&database, &broker);
    let url = broker.url().to_owned();
    let queue = broker.queue().to_owned();
    let settings = [
        ("METRICS_BACKOFF__MAX_MS", "500"),
        ("METRICS_DATABASE__TABLE", TABLE),
    ];
    let blocked = WritesBlocked::on(database.url());
    // The first replica declares the topology; then the traffic goes out.
    let mut ingest = Service::ingest_at(&target, &settings);
    ingest.ready().await;
    publish(&url, broker.exchange(), &traffic.messages).await;

    let looping = Instant::now();
    let kills = DELIVERY_LIMIT + 2;
    for kill in 0..kills {
        if kill > 0 {
            ingest = Service::ingest_at(&target, &settings);
        }
        // The replica holds deliveries and its first batch hangs in the database: kill it
        // there.
        // A write hangs: the replica took deliveries and holds them unacknowledged. (The
        // queue's count cannot say how many: a replica killed between a moved copy's confirm
        // and the original's acknowledgement leaves both.)
        eventually(STEP, || async {
            let (ready, consumers) = queue_state(&url, &queue).await;
            let writing = waiting_for_a_lock(database.url(), database.name());
            if consumers == 1 && writing > 0 {
                Ok(())
            } else {
                Err(format!(
                    "kill {}: {ready} messages ready, {consumers} consumers, {writing} writes \
                     waiting",
                    kill + 1
                ))
            }
        })
        .await;
        ingest.kill();
        // The broker has noticed: the deliveries are back in the queue (or, at the limit,
        // dead-lettered).
        eventually(STEP, || async {
            match queue_state(&url, &queue).await {
                (_, 0) => Ok(()),
                state => Err(state),
            }
        })
        .await;
    }
    let looped = looping.elapsed();

    drop(blocked);
    let mut ingest = Service::ingest_at(&target, &settings);
    let draining = Instant::now();
    converge(
        database.url(),
        &expected,
        &url,
        &queue,
        Duration::from_secs(90),
    )
    .await;
    // The copies of messages moved while a replica was killed between a copy's confirm and the
    // original's acknowledgement are duplicates: counted as such, they change no row.
    eventually(STEP, || async {
        match queue_state(&url, &queue).await {
            (0, _) => Ok(()),
            state => Err(state),
        }
    })
    .await;
    let drained = draining.elapsed();
    ingest.stop(Duration::from_secs(30));
    let letters = drain_dead_letters(&url, &queue).await;
    let copies = check_dead_letters(&letters, &poison);
    println!(
        "faults: crash loop: {total} messages ({} valid events, {} poison), {kills} SIGKILLs \
         mid-batch (delivery limit {DELIVERY_LIMIT}) in {:.1} s, then counted in {:.1} s; rows equal the reference; \
         dead-letter queue: {} poison messages, {copies} extra copies; whole test {:.1} s",
        valid.len(),
        poison.len(),
        looped.as_secs_f64(),
        drained.as_secs_f64(),
        poison.len(),
        started.elapsed().as_secs_f64(),
    );
    broker.cleanup().await;
}
