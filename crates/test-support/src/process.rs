//! The service binaries (`metrics-ingest`, `metrics-query`) as child processes on free loopback
//! ports, with their output kept in a log file for the failure message.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test.sh` does).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::{TestBroker, TestDatabase};

/// The security key the tests' query service requires.
pub const KEY: &str = "e2e-secret-key";

/// The peak resident memory (`VmHWM`) of process `pid`, in KiB; `None` once it has exited.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A free loopback address for a program that cannot report the port it bound (PostgreSQL,
/// RabbitMQ, chromedriver, `scripts/up.sh`); the service binaries bind port 0 and report theirs
/// instead ([`Service`]).
///
/// Between this check and the program's own bind the port is free for anyone, so it is taken
/// below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where neither port-0
/// binds nor outgoing connections land, at random, and never twice in one process.
pub fn free_address() -> SocketAddr {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (low, high) = (10_000, ephemeral_start().saturating_sub(1).max(10_001));
    for _ in 0..1000 {
        let port = rand::rng().random_range(low..=high);
        if HANDED_OUT.lock().unwrap().contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            HANDED_OUT.lock().unwrap().insert(port);
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port in {low}..={high}");
}

/// The first port of the kernel's ephemeral range (Linux's default where it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The path of a binary of the workspace: in `METRICS_BIN_DIR` when set, else built beside the
/// running program (a test in `<target>/<profile>/deps`, or a binary in `<target>/<profile>`).
///
/// # Panics
///
/// When the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("METRICS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap();
            if dir.file_name().is_some_and(|name| name == "deps") {
                dir.parent().unwrap().to_owned()
            } else {
                dir.to_owned()
            }
        }
    };
    let path = dir.join(name);
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
    /// Starts `name` with its listeners on port 0 and waits until its log reports the ports it
    /// bound (`admin.port`, and `http.port` for the query service): no other process can take
    /// them in between.
    fn spawn(name: &'static str, args: &[&str], env: Vec<(&str, String)>, has_http: bool) -> Self {
        static SPAWNED: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "metrics-e2e-{name}-{}-{}.log",
            std::process::id(),
            SPAWNED.fetch_add(1, Ordering::Relaxed)
        ));
        let out = File::create(&log).unwrap();
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        // Passed on from the caller when it sets them: glibc's malloc tuning (the container
        // image sets `MALLOC_MMAP_THRESHOLD_`, and the benchmarks measure the services with it),
        // and ingest's inbox settings (`METRICS_INBOX__ENABLED=true scripts/test.sh` runs every
        // end-to-end and fault test with the inbox on). The process's own settings win.
        let passed_on = |key: &str| {
            key.starts_with("MALLOC_")
                || (name == "metrics-ingest" && key.starts_with("METRICS_INBOX__"))
        };
        for (key, value) in std::env::vars_os() {
            if key.to_str().is_some_and(passed_on) {
                command.env(key, value);
            }
        }
        command
            .envs(env)
            .env("METRICS_ADMIN__LISTEN", "127.0.0.1:0")
            .env("METRICS_LOG__FORMAT", "json");
        if has_http {
            command.env("METRICS_HTTP__LISTEN", "127.0.0.1:0");
        }
        let mut child = command
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let (admin, http) = loop {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let admin = reported_port(&output, "admin.port");
            let http = reported_port(&output, "http.port");
            if let Some(admin) = admin
                && (http.is_some() || !has_http)
            {
                let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
                break (at(admin), http.filter(|_| has_http).map(at));
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited with {status} before listening:\n{output}");
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} reported no listening port within 30 s:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
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
        Self::spawn("metrics-ingest", &["run"], env, false)
    }

    /// `metrics-query` on the test's database, requiring [`KEY`].
    pub fn query(db: &TestDatabase) -> Self {
        Self::query_with(db, &[("OS_SECURITY_KEY", KEY)])
    }

    /// `metrics-query` on the test's database with extra environment variables (and no key
    /// unless they set one).
    pub fn query_with(db: &TestDatabase, settings: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("METRICS_DATABASE__URL", db.url().to_owned()),
            ("METRICS_HTTP__WORKERS", "2".to_owned()),
        ];
        env.extend(
            settings
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        Self::spawn("metrics-query", &[], env, true)
    }

    /// `metrics-query` on the test's database with no security key: the API is open.
    pub fn query_open(db: &TestDatabase) -> Self {
        Self::spawn(
            "metrics-query",
            &[],
            vec![
                ("METRICS_DATABASE__URL", db.url().to_owned()),
                ("METRICS_HTTP__WORKERS", "2".to_owned()),
            ],
            true,
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// The port a service's JSON log reports in the field `field` (`"admin.port":7778`), if any.
fn reported_port(log: &str, field: &str) -> Option<u16> {
    let pattern = format!("\"{field}\":");
    log.lines().find_map(|line| {
        let rest = &line[line.find(&pattern)? + pattern.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_distinct_and_below_the_ephemeral_range() {
        let start = ephemeral_start();
        let ports: BTreeSet<u16> = (0..200).map(|_| free_address().port()).collect();
        assert_eq!(ports.len(), 200, "a port was handed out twice");
        assert!(ports.iter().all(|port| *port < start), "{ports:?}");
        // Each is bindable right after it was handed out, even while port-0 binds (which land in
        // the ephemeral range) go on around it.
        let _busy: Vec<TcpListener> = (0..50)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let address = free_address();
        TcpListener::bind(address).unwrap();
    }

    /// Services started side by side each listen where they report (needs the binaries built,
    /// as every end-to-end test does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn services_listen_on_the_ports_they_report() {
        let db = TestDatabase::migrated();
        let mut services: Vec<Service> = (0..4).map(|_| Service::query_open(&db)).collect();
        let client = reqwest::Client::new();
        let mut seen = BTreeSet::new();
        for service in &mut services {
            service.ready().await;
            let http = service.http.unwrap();
            assert!(seen.insert(http.port()) && seen.insert(service.admin.port()));
            let status = client
                .get(format!("http://{http}/openapi.json"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{}", service.output());
        }
    }

    #[test]
    fn ports_are_read_from_the_startup_line() {
        let log = "{\"level\":\"INFO\"}\n{\"fields\":{\"http.port\":41234,\"admin.port\":41235,\
                   \"message\":\"metrics-query listening\"}}\n";
        assert_eq!(reported_port(log, "http.port"), Some(41234));
        assert_eq!(reported_port(log, "admin.port"), Some(41235));
        assert_eq!(reported_port("{\"x\":1}", "admin.port"), None);
    }
}
