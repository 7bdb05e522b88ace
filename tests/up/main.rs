//! `scripts/up.sh --demo`, the README's run command, on free ports with a database, exchange and
//! queue of its own: the system comes up, the demo week appears in `GET /metrics` exactly as
//! `metrics-loadgen` reports it, and SIGTERM stops everything with exit 0 and no process left.
//!
//! A test binary of its own: cargo runs test binaries one at a time, and up.sh's `cargo build`
//! may put the binaries in place again (the `cargo test` build links them with other features),
//! which must not happen while another test starts one.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metrics_test_support::process::free_address;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::Value;

/// The repository's root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The target directory and profile of the running test (`<target>/<profile>/deps/<test>`):
/// up.sh builds into and runs from the same, so it reuses the test build.
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (profile_dir.parent().unwrap().to_owned(), profile)
}

/// Processes (other than this one) whose environment holds `marker`: every process up.sh
/// started inherits its `METRICS_DATABASE__URL`, which names the test's own database.
fn processes_with(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        // A process may exit while it is read, or belong to another user: skip it then.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if String::from_utf8_lossy(&environ).contains(marker) {
            let command = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&command).replace('\0', " ")
            ));
        }
    }
    found
}

/// The runs by session type that `metrics-loadgen` printed (`runs [a, b, c]`), once it has.
fn published_runs(output: &str) -> Option<[u64; 3]> {
    let line = output
        .lines()
        .find(|line| line.contains("sessions agent/team/workflow"))?;
    let list = line.split("runs [").nth(1)?.split(']').next()?;
    let runs: Vec<u64> = list
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect::<Option<_>>()?;
    runs.try_into().ok()
}

struct UpScript {
    child: Child,
    log: PathBuf,
}

impl UpScript {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for UpScript {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_sh_demo_comes_up_fills_get_metrics_and_stops_on_sigterm() {
    let db = TestDatabase::empty();
    let broker = TestBroker::new().await;
    let (target, profile) = target_and_profile();
    let api = free_address();
    let query_admin = free_address();
    let ingest_admin = free_address();
    let log = std::env::temp_dir().join(format!("metrics-e2e-up-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new("bash");
    // As from a shell: none of the variables `cargo test` sets for this process reaches the
    // cargo that up.sh runs, so that its build is the one scripts/test.sh made, reused as is.
    command.env_clear();
    for name in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "TMPDIR",
        "LANG",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let child = command
        .arg(root().join("scripts/up.sh"))
        .arg("--demo")
        .current_dir(root())
        .env("PROFILE", &profile)
        .env("CARGO_TARGET_DIR", &target)
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("API_PORT", api.port().to_string())
        .env("QUERY_ADMIN_PORT", query_admin.port().to_string())
        .env("INGEST_ADMIN_PORT", ingest_admin.port().to_string())
        .env("METRICS_DATABASE__URL", db.url())
        .env("METRICS_AMQP__URL", broker.url())
        .env("METRICS_AMQP__EXCHANGE", broker.exchange())
        .env("METRICS_AMQP__QUEUE", broker.queue())
        .env("DEMO_SESSIONS", "300")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let mut up = UpScript { child, log };

    // Up: the banner names the dashboard once both services are ready; then the demo week.
    let client = reqwest::Client::new();
    let runs = eventually(Duration::from_secs(300), || {
        let exited = up.child.try_wait().unwrap();
        let output = up.output();
        async move {
            if let Some(status) = exited {
                panic!("up.sh exited with {status} before the demo was published:\n{output}");
            }
            match published_runs(&output) {
                Some(runs) if output.contains(&format!("http://{api}/dashboard")) => Ok(runs),
                _ => Err("not up, or the demo is not published yet".to_owned()),
            }
        }
    })
    .await;
    let expected: u64 = runs.iter().sum();
    assert!(expected > 0, "{}", up.output());

    let url = format!("http://{api}/metrics");
    let counted = eventually(Duration::from_secs(60), || async {
        let body: Value = client
            .get(&url)
            .send()
            .await
            .map_err(|err| err.to_string())?
            .json()
            .await
            .map_err(|err| err.to_string())?;
        let rows = body["metrics"].as_array().cloned().unwrap_or_default();
        let by_type = ["agent", "team", "workflow"].map(|kind| {
            rows.iter()
                .map(|row| row[format!("{kind}_runs_count")].as_u64().unwrap())
                .sum::<u64>()
        });
        if by_type == runs {
            Ok(rows.len())
        } else {
            Err(format!("{by_type:?} != {runs:?}"))
        }
    })
    .await;
    assert!((7..=8).contains(&counted), "{counted} days");
    let dashboard = client
        .get(format!("http://{api}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);

    // SIGTERM: both services drain, up.sh exits 0, and nothing it started is left.
    let signalled = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "up.sh still runs 60 s after SIGTERM:\n{}",
            up.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = up.output();
    assert!(status.success(), "up.sh exited with {status}:\n{output}");
    assert!(
        output.contains("both services stopped"),
        "no clean stop reported:\n{output}"
    );
    let left = processes_with(db.name());
    assert!(
        left.is_empty(),
        "left running after up.sh exited: {left:?}\n{output}"
    );
    // The data stays.
    let mut conn = db.connect();
    let rows = metrics_test_support::rows::snapshot(&mut conn, "agno_metrics");
    assert_eq!(rows.len(), counted);
    drop(conn);
    broker.cleanup().await;
}
