//! What the query tests share: a service started in-process on loopback against a fresh
//! database, events written through the aggregator, and a client.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use actix_web::http::StatusCode;
use awc::Client;
use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use metrics_aggregator::TableName;
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
use metrics_query::config::DatabaseSettings;
use metrics_query::{Application, Settings, telemetry};
use metrics_test_support::TestDatabase;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// Settings for a test: loopback on free ports, one worker, small pool, short timeout, the
/// default database at `url`.
pub fn settings(url: &str) -> Settings {
    let mut settings = Settings::load_from(None, HashMap::new()).unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.workers = 1;
    settings.http.request_timeout = Duration::from_secs(3);
    settings.http.shutdown_timeout = Duration::from_secs(1);
    settings.pool_size = 2;
    settings.databases[0].url = SecretString::from(url);
    settings
}

/// A further database for `settings.databases`.
pub fn database(id: &str, url: &str, tables: &[&str]) -> DatabaseSettings {
    DatabaseSettings {
        id: id.to_owned(),
        url: SecretString::from(url),
        tables: tables.iter().map(|t| t.parse().unwrap()).collect(),
    }
}

/// A running service.
pub struct TestApp {
    pub api: String,
    pub admin: String,
    pub client: Client,
    shutdown: CancellationToken,
    running: Option<actix_web::rt::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the service with `settings`.
    pub fn spawn(settings: Settings) -> Self {
        let _ = telemetry::init(&settings.log, tracing_subscriber::fmt::TestWriter::new);
        let application = Application::build(settings).unwrap();
        let api = format!("http://127.0.0.1:{}", application.port());
        let admin = format!("http://127.0.0.1:{}", application.admin_port());
        let shutdown = CancellationToken::new();
        let running = actix_web::rt::spawn(application.run_until_stopped(shutdown.clone()));
        Self {
            api,
            admin,
            client: Client::builder().timeout(Duration::from_secs(20)).finish(),
            shutdown,
            running: Some(running),
        }
    }

    /// GETs `path` of the API with optional extra headers; returns status, headers and body.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.get(format!("{}{path}", self.api));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        Reply::read(request.send().await.unwrap()).await
    }

    /// POSTs to `path` of the API (no body) with optional extra headers.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.post(format!("{}{path}", self.api));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        Reply::read(request.send().await.unwrap()).await
    }

    /// GETs `path` of the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let request = self.client.get(format!("{}{path}", self.admin));
        Reply::read(request.send().await.unwrap()).await
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        // Close the client's idle keep-alive connections first: a graceful stop waits for open
        // connections up to the shutdown timeout.
        drop(std::mem::take(&mut self.client));
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    async fn read<S>(mut response: awc::ClientResponse<S>) -> Self
    where
        S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
            + Unpin,
    {
        let body = response.body().limit(64 << 20).await.unwrap().to_vec();
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body,
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    /// Status and JSON body, for whole-value assertions.
    pub fn status_json(&self) -> (u16, serde_json::Value) {
        (self.status.as_u16(), self.json())
    }
}

/// Writes `events` into metrics table `table` of `database` through the aggregator.
pub fn write(database: &TestDatabase, table: &str, events: &[Event]) {
    let mut conn = database.connect();
    let table = metrics_aggregator::register_table(&mut conn, &TableName::from_str(table).unwrap())
        .unwrap();
    metrics_aggregator::apply(&mut conn, table, events).unwrap();
}

fn time(value: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value).unwrap().to_utc()
}

/// A session start.
pub fn session(id: &str, at: &str, session_type: SessionType, user: Option<&str>) -> Event {
    Event {
        source: "test".to_owned(),
        id: format!("session-{id}"),
        time: time(at),
        kind: EventKind::SessionCreated(SessionCreated {
            session_id: id.to_owned(),
            session_type,
            user_id: user.map(str::to_owned),
        }),
    }
}

/// `event` as sent by `user` (`None`: by nobody).
pub fn by(mut event: Event, user: Option<&str>) -> Event {
    let user_id = user.map(str::to_owned);
    match &mut event.kind {
        EventKind::SessionCreated(session) => session.user_id = user_id,
        EventKind::RunCompleted(run) => run.user_id = user_id,
    }
    event
}

/// A finished run of session `session_id` served by `model`, with `usage`.
pub fn run(
    id: &str,
    session_id: &str,
    at: &str,
    session_type: SessionType,
    model: Option<(&str, &str)>,
    usage: Usage,
) -> Event {
    Event {
        source: "test".to_owned(),
        id: format!("run-{id}"),
        time: time(at),
        kind: EventKind::RunCompleted(RunCompleted {
            run_id: id.to_owned(),
            session_id: session_id.to_owned(),
            session_type,
            user_id: Some("user-1".to_owned()),
            parent_run_id: None,
            model: model.map(|(id, _)| id.to_owned()),
            model_provider: model.map(|(_, provider)| provider.to_owned()),
            usage,
        }),
    }
}

/// A usage whose nine counts are `base`, `base + 1`, .., `base + 8`, and `cost`.
pub fn usage(base: i64, cost: &str) -> Usage {
    Usage {
        tokens: Tokens {
            input_tokens: base,
            output_tokens: base + 1,
            total_tokens: base + 2,
            audio_tokens: base + 3,
            input_audio_tokens: base + 4,
            output_audio_tokens: base + 5,
            cached_tokens: base + 6,
            cache_write_tokens: base + 7,
            reasoning_tokens: base + 8,
        },
        cost: BigDecimal::from_str(cost).unwrap(),
    }
}

/// The stored rows of `table`, to learn the ids and stamps the aggregator chose.
pub fn stored(database: &TestDatabase, table: &str) -> metrics_aggregator::MetricsPage {
    metrics_aggregator::read(
        &mut database.connect(),
        table,
        metrics_aggregator::DateRange::default(),
    )
    .unwrap()
}

/// The contract's error body.
pub fn error(detail: &str, code: &str) -> serde_json::Value {
    serde_json::json!({ "detail": detail, "error_code": code })
}
