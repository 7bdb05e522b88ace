//! The service binaries (`metrics-ingest`, `metrics-query`) as child processes on free loopback
//! ports, with their output kept in a log file for the failure message.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test.sh` does).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{TestBroker, TestDatabase};

/// The security key the tests' query service requires.
pub const KEY: &str = "e2e-secret-key";

/// A free loopback address: bound, read and released (the service binds it again at once).
pub fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
}

/// The path of a binary of the workspace, built beside the running test.
///
/// # Panics
///
/// When the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    // The test runs from <target>/<profile>/deps; the binaries sit in <target>/<profile>.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which \
         scripts/test.sh runs)",
        path.display()
    );
    path
}

/// Where an ingest replica reads from and writes to.
#[derive(Debug, Clone)]
pub struct IngestTarget {
    /// `METRICS_DATABASE__URL`.
    pub database_url: String,
    /// `METRICS_AMQP__URL`.
    pub amqp_url: String,
    /// `METRICS_AMQP__EXCHANGE`.
    pub exchange: String,
    /// `METRICS_AMQP__QUEUE`.
    pub queue: String,
}

impl IngestTarget {
    /// The test's database, exchange and queue.
    pub fn new(db: &TestDatabase, broker: &TestBroker) -> Self {
        Self {
            database_url: db.url().to_owned(),
            amqp_url: broker.url().to_owned(),
            exchange: broker.exchange().to_owned(),
            queue: broker.queue().to_owned(),
        }
    }
}

/// A service binary running as a child process; killed on drop if still running.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Child,
    /// The admin listener (`/livez`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// The public API listener, for the query service.
    pub http: Option<SocketAddr>,
    log: PathBuf,
}

impl Service {
    fn spawn(
        name: &'static str,
        args: &[&str],
        env: Vec<(&str, String)>,
        admin: SocketAddr,
        http: Option<SocketAddr>,
    ) -> Self {
        let log = std::env::temp_dir().join(format!(
            "metrics-e2e-{name}-{}-{}.log",
            std::process::id(),
            admin.port()
        ));
        let out = File::create(&log).unwrap();
        let child = Command::new(binary(name))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .env("METRICS_ADMIN__LISTEN", admin.to_string())
            .env("METRICS_LOG__FORMAT", "json")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Self {
            name,
            child,
            admin,
            http,
            log,
        }
    }

    /// `metrics-ingest run` on the test's database, exchange and queue.
    pub fn ingest(db: &TestDatabase, broker: &TestBroker) -> Self {
        Self::ingest_at(&IngestTarget::new(db, broker), &[])
    }

    /// `metrics-ingest run` on `target`, with extra `METRICS_*` settings.
    pub fn ingest_at(target: &IngestTarget, settings: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("METRICS_DATABASE__URL", target.database_url.clone()),
            ("METRICS_AMQP__URL", target.amqp_url.clone()),
            ("METRICS_AMQP__EXCHANGE", target.exchange.clone()),
            ("METRICS_AMQP__QUEUE", target.queue.clone()),
        ];
        env.extend(
            settings
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        Self::spawn("metrics-ingest", &["run"], env, free_address(), None)
    }

    /// `metrics-query` on the test's database, requiring [`KEY`].
    pub fn query(db: &TestDatabase) -> Self {
        Self::query_with(db, &[("OS_SECURITY_KEY", KEY)])
    }

    /// `metrics-query` on the test's database with extra environment variables (and no key
    /// unless they set one).
    pub fn query_with(db: &TestDatabase, settings: &[(&str, &str)]) -> Self {
        let http = free_address();
        let mut env = vec![
            ("METRICS_DATABASE__URL", db.url().to_owned()),
            ("METRICS_HTTP__LISTEN", http.to_string()),
            ("METRICS_HTTP__WORKERS", "2".to_owned()),
        ];
        env.extend(
            settings
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        Self::spawn("metrics-query", &[], env, free_address(), Some(http))
    }

    /// `metrics-query` on the test's database with no security key: the API is open.
    pub fn query_open(db: &TestDatabase) -> Self {
        let http = free_address();
        Self::spawn(
            "metrics-query",
            &[],
            vec![
                ("METRICS_DATABASE__URL", db.url().to_owned()),
                ("METRICS_HTTP__LISTEN", http.to_string()),
                ("METRICS_HTTP__WORKERS", "2".to_owned()),
            ],
            free_address(),
            Some(http),
        )
    }

    /// The service's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200, at most `deadline`.
    ///
    /// # Panics
    ///
    /// When the process exits or is not ready in time, with its output.
    pub async fn ready_within(&mut self, deadline: Duration) {
        let url = format!("http://{}/readyz", self.admin);
        let client = reqwest::Client::new();
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.output());
            }
            let state = match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => return,
                Ok(response) => format!("readyz answered {}", response.status()),
                Err(err) => err.to_string(),
            };
            assert!(
                Instant::now() < until,
                "{} not ready after {deadline:?} ({state}):\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` answers 200, at most 30 s.
    pub async fn ready(&mut self) {
        self.ready_within(Duration::from_secs(30)).await;
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends SIGKILL and reaps the process: a crash, with no chance to settle anything.
    pub fn kill(&mut self) {
        if self.has_exited().is_none() {
            self.child.kill().unwrap();
        }
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit, at most `deadline`; asserts the exit status is 0.
    pub fn stop(&mut self, deadline: Duration) {
        let status = self.terminate(deadline);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.output()
        );
    }

    /// Sends SIGTERM and waits for the exit, at most `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit within {deadline:?} of SIGTERM:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
