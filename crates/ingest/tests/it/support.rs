//! Shared helpers: settings pointing at a test's broker names and database, an in-process
//! service, event builders and row summaries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{Days, NaiveDate};
use metrics_aggregator::DateRange;
use metrics_ingest::consumer::ERROR_HEADER;
use metrics_ingest::topology::Topology;
use metrics_ingest::{Application, Settings};
pub use metrics_test_support::proxy::Proxy;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the test's dead-letter queue holds `count` messages, then takes them all, each as
/// its `x-metrics-error` reason and its body.
pub async fn dead_letters(broker: &TestBroker, count: usize) -> Vec<(String, Vec<u8>)> {
    let dead_queue = broker.dead_letter_queue();
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(&dead_queue).await;
        if ready as usize == count {
            Ok(())
        } else {
            Err(ready)
        }
    })
    .await;
    let mut received = Vec::new();
    while let Some(message) = broker.get(&dead_queue).await {
        let reason = message
            .header(ERROR_HEADER)
            .expect("every dead letter carries the reason");
        received.push((reason, message.body));
    }
    received
}

/// The defaults, pointed at this test's database and broker names, with short waits.
pub fn settings(database: &TestDatabase, broker: &TestBroker) -> Settings {
    let mut settings = Settings::from_sources(None, Some(HashMap::new())).unwrap();
    settings.database.url = database.url().to_owned().into();
    settings.amqp.url = broker.url().to_owned().into();
    settings.amqp.exchange = broker.exchange().to_owned();
    settings.amqp.queue = broker.queue().to_owned();
    settings.admin.listen = "127.0.0.1:0".to_owned();
    settings.batch.wait_ms = 10;
    settings.backoff.min_ms = 20;
    settings.backoff.max_ms = 500;
    settings
}

/// The same settings as `METRICS_*` variables, for the binary.
pub fn environment(settings: &Settings) -> Vec<(String, String)> {
    use secrecy::ExposeSecret;
    [
        (
            "DATABASE__URL",
            settings.database.url.expose_secret().to_owned(),
        ),
        ("AMQP__URL", settings.amqp.url.expose_secret().to_owned()),
        ("AMQP__EXCHANGE", settings.amqp.exchange.clone()),
        ("AMQP__QUEUE", settings.amqp.queue.clone()),
        ("AMQP__PREFETCH", settings.amqp.prefetch.to_string()),
        ("ADMIN__LISTEN", settings.admin.listen.clone()),
        ("BATCH__SIZE", settings.batch.size.to_string()),
        ("BATCH__WAIT_MS", settings.batch.wait_ms.to_string()),
        ("BACKOFF__MIN_MS", settings.backoff.min_ms.to_string()),
        ("BACKOFF__MAX_MS", settings.backoff.max_ms.to_string()),
        ("INBOX__ENABLED", settings.inbox.enabled.to_string()),
        ("LOG__LEVEL", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (format!("METRICS_{key}"), value))
    .collect()
}

/// Declares the service's topology, so that messages published before it starts are queued.
pub async fn declare(broker: &TestBroker, settings: &Settings) {
    Topology::from_settings(&settings.amqp)
        .declare(broker.channel())
        .await
        .unwrap();
}

/// A service running in this process.
pub struct Running {
    pub admin_port: u16,
    pub metrics: metrics_ingest::telemetry::Metrics,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(settings: Settings) -> Self {
        let application = Application::build(settings).await.unwrap();
        let shutdown = CancellationToken::new();
        Self {
            admin_port: application.admin_port(),
            metrics: application.metrics(),
            task: tokio::spawn(application.run_until_stopped(shutdown.clone())),
            shutdown,
        }
    }

    /// Cancels the service and waits for it to finish draining.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the service stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

pub fn day(offset: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 3, 1).unwrap() + Days::new(offset)
}

/// A `run.completed` event of an agent session.
pub fn run_completed(
    id: &str,
    run_id: &str,
    session_id: &str,
    user: &str,
    date: NaiveDate,
    input_tokens: i64,
) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "agno://ingest-tests",
        "type": "agentos.run.completed",
        "time": format!("{date}T12:00:00Z"),
        "data": {
            "run_id": run_id,
            "session_id": session_id,
            "session_type": "agent",
            "user_id": user,
            "model": "gpt-4o",
            "model_provider": "OpenAI",
            "metrics": { "input_tokens": input_tokens, "output_tokens": 1 }
        }
    })
}

/// A `session.created` event of an agent session.
pub fn session_created(id: &str, session_id: &str, user: &str, date: NaiveDate) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "agno://ingest-tests",
        "type": "agentos.session.created",
        "time": format!("{date}T08:00:00Z"),
        "data": { "session_id": session_id, "session_type": "agent", "user_id": user }
    })
}

pub fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// What a day row says, as compared in the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DaySummary {
    pub date: NaiveDate,
    pub agent_runs: i64,
    pub agent_sessions: i64,
    pub users: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub model_runs: i64,
}

/// The rows of the default metrics table, summarised.
pub async fn rows(database: &TestDatabase) -> Vec<DaySummary> {
    let url = database.url().to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        metrics_aggregator::read(&mut conn, "agno_metrics", DateRange::default())
            .unwrap()
            .rows
            .into_iter()
            .map(|row| DaySummary {
                date: row.date,
                agent_runs: row.agent_runs_count,
                agent_sessions: row.agent_sessions_count,
                users: row.users_count,
                input_tokens: row.tokens.input_tokens,
                output_tokens: row.tokens.output_tokens,
                model_runs: row.models().unwrap().iter().map(|m| m.count).sum(),
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The total runs counted so far.
pub async fn runs_counted(database: &TestDatabase) -> i64 {
    rows(database).await.iter().map(|day| day.agent_runs).sum()
}

/// A deterministic stream of `n` distinct runs over three days, and the rows it must produce.
pub fn workload(n: usize) -> (Vec<Vec<u8>>, Vec<DaySummary>) {
    let mut bodies = Vec::with_capacity(n);
    let mut days: BTreeMap<NaiveDate, (i64, BTreeSet<String>, BTreeSet<String>, i64)> =
        BTreeMap::new();
    for i in 0..n {
        let date = day((i % 3) as u64);
        let session = format!("s-{date}-{}", i % 20);
        let user = format!("u{}", i % 7);
        let tokens = (i % 10 + 1) as i64;
        bodies.push(body(&run_completed(
            &format!("e{i}"),
            &format!("r{i}"),
            &session,
            &user,
            date,
            tokens,
        )));
        let entry = days.entry(date).or_default();
        entry.0 += 1;
        entry.1.insert(session);
        entry.2.insert(user);
        entry.3 += tokens;
    }
    let expected = days
        .into_iter()
        .map(|(date, (runs, sessions, users, tokens))| DaySummary {
            date,
            agent_runs: runs,
            agent_sessions: sessions.len() as i64,
            users: users.len() as i64,
            input_tokens: tokens,
            output_tokens: runs,
            model_runs: runs,
        })
        .collect();
    (bodies, expected)
}

/// Waits until the rows are exactly `expected`.
pub async fn wait_for_rows(database: &TestDatabase, expected: &[DaySummary]) {
    metrics_test_support::eventually(DEADLINE, || async {
        let rows = rows(database).await;
        if rows == expected { Ok(()) } else { Err(rows) }
    })
    .await;
}
