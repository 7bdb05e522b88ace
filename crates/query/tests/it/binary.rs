//! The `metrics-query` binary: configuration errors, SIGTERM, and the `healthcheck` subcommand.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use metrics_test_support::TestDatabase;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metrics-query"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("METRICS_LOG__FORMAT", "json")
        .env("METRICS_HTTP__WORKERS", "1");
    command
}

/// Waits for `child` to exit, failing after `deadline`.
fn wait(mut child: Child, deadline: Duration) -> std::process::ExitStatus {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait()));
    receiver
        .recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("metrics-query did not exit within {deadline:?}"))
        .unwrap()
}

#[test]
fn an_invalid_key_stops_the_start_naming_it() {
    let output = binary()
        .env("METRICS_HTTP__LISTEN", "nowhere")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(
            "invalid configuration key `http.listen`: `nowhere` is not an address like 0.0.0.0:7777"
        ),
        "{stderr}"
    );
}

#[test]
fn sigterm_drains_and_exits_cleanly_and_healthcheck_follows_readiness() {
    let db = TestDatabase::migrated();
    let mut child = binary()
        .env("METRICS_DATABASE__URL", db.url())
        .env("METRICS_HTTP__LISTEN", "127.0.0.1:0")
        .env("METRICS_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin_port = loop {
        let line = lines.next().expect("the service logged its ports").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "metrics-query listening" {
            break event["admin.port"].as_u64().unwrap();
        }
    };

    let healthcheck = binary()
        .arg("healthcheck")
        .env("METRICS_ADMIN__LISTEN", format!("0.0.0.0:{admin_port}"))
        .output()
        .unwrap();
    assert!(healthcheck.status.success(), "{healthcheck:?}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait(child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let messages: Vec<String> = lines
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|event| event["target"].as_str() == Some("metrics_query::startup"))
        .map(|event| event["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["shutting down: draining requests", "stopped"]);

    let healthcheck = binary()
        .arg("healthcheck")
        .env("METRICS_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .output()
        .unwrap();
    assert!(!healthcheck.status.success());
}
