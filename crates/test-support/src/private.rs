//! A private PostgreSQL server and a private RabbitMQ node, each with its own port and data folder
//! under the temporary directory, so that a test can crash and restart them without disturbing
//! the shared services or other tests.
//!
//! PostgreSQL comes from `initdb`/`pg_ctl` (`PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`), run as the `postgres` user when the test runs as
//! root; RabbitMQ from `rabbitmq-server` (`/usr/lib/rabbitmq/bin`, else `PATH`), with its own node
//! name, AMQP and distribution ports, data and log folders, and no plugins.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use rand::Rng;

use crate::process::free_address;

fn unique_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "metrics-private-{kind}-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A PostgreSQL server of its own: `initdb` into a temporary folder, listening on a free
/// loopback port, trust authentication for `postgres`. Stopped and removed on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it.
    ///
    /// # Panics
    ///
    /// When the PostgreSQL server binaries are missing or the server does not start.
    pub fn start() -> Self {
        let bin = postgres_bindir();
        let dir = unique_dir("postgres");
        let as_postgres = is_root();
        if as_postgres {
            run(
                Command::new("chown").arg("postgres").arg(&dir),
                "handing the folder to postgres",
            );
        }
        let server = Self {
            bin,
            port: free_address().port(),
            dir,
            as_postgres,
        };
        let data = server.data();
        run(
            server
                .command("initdb")
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        );
        server.start_again();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts the server (again, after [`Self::crash`]) on its port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
            self.port,
            self.dir.display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null()),
            "starting the private PostgreSQL",
        );
    }

    /// Stops the server the hard way (`immediate`: every backend is killed, and the next start
    /// runs crash recovery).
    pub fn crash(&self) {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null()),
            "stopping the private PostgreSQL",
        );
    }

    /// A URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database and returns its URL.
    ///
    /// # Panics
    ///
    /// When the server refuses.
    pub fn create_database(&self, name: &str) -> String {
        let mut admin = PgConnection::establish(&self.url("postgres")).unwrap();
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .unwrap();
        self.url(name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn postgres_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .find(|dir| dir.join("initdb").exists());
    found.unwrap_or_else(|| {
        panic!(
            "the PostgreSQL server binaries (initdb, pg_ctl) are missing: install the `postgresql` \
             package (scripts/services.sh does) or set PG_BINDIR"
        )
    })
}

/// A RabbitMQ node of its own: its own node name, AMQP and distribution ports on loopback, data
/// and log folders, no plugins. Killed and removed on drop.
#[derive(Debug)]
pub struct PrivateRabbit {
    program: PathBuf,
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl PrivateRabbit {
    /// Starts the node and waits until it accepts AMQP connections (at most 90 s).
    ///
    /// # Panics
    ///
    /// When `rabbitmq-server` is missing or the node does not come up.
    pub async fn start() -> Self {
        let program = ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
            .into_iter()
            .map(PathBuf::from)
            .chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|dir| dir.join("rabbitmq-server")),
            )
            .find(|path| path.exists())
            .unwrap_or_else(|| {
                panic!(
                    "rabbitmq-server is missing: install the `rabbitmq-server` package \
                     (scripts/services.sh does)"
                )
            });
        let dir = unique_dir("rabbitmq");
        fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let mut node = Self {
            program,
            node: format!(
                "metrics-faults-{}-{:06x}@localhost",
                std::process::id(),
                rand::rng().random::<u32>() & 0xff_ffff
            ),
            port: free_address().port(),
            dist_port: free_address().port(),
            dir,
            child: None,
        };
        node.start_again().await;
        node
    }

    /// Starts the node (again, after [`Self::crash`]) on its ports and data, and waits until
    /// it accepts AMQP connections (at most 90 s): durable queues and the messages confirmed
    /// into them must survive a crash.
    pub async fn start_again(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .unwrap();
        let child = Command::new(&self.program)
            .current_dir(&self.dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the private RabbitMQ node exited with {status}:\n{}",
                    fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
                );
            }
            // A node still booting may take the connection and not answer the handshake yet:
            // each attempt is bounded, so the 90 s hold whatever the node does.
            let url = self.url();
            let connect = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
            if answers(self.port)
                && tokio::time::timeout(Duration::from_secs(5), connect)
                    .await
                    .is_ok_and(|connected| connected.is_ok())
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "the private RabbitMQ node did not come up in 90 s:\n{}",
                fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    /// Stops the node cleanly (SIGTERM: RabbitMQ shuts down in order and closes the files it
    /// keeps open) and waits until it has exited (at most 60 s, then it is killed).
    ///
    /// RabbitMQ 3.10's Ra keeps the names of its quorum queue servers in a DETS file that is not
    /// synced when a queue is declared; a node SIGKILLed soon after a declaration can come back
    /// without the queue's registration, start an empty server for it that never elects a
    /// leader, and lose its messages. A clean stop writes the file out, so a test that crashes
    /// the node after declaring its queues stops and starts it once before.
    pub async fn stop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill")
                .args(["-TERM", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        // The script started exits once the Erlang VM has (it runs it in the foreground or
        // waits for it); until then the node is still writing out its state.
        if let Some(child) = self.child.as_mut() {
            let until = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                let _ = fs::remove_file(self.pid_file());
            }
        }
        // Whatever did not stop in time is killed; then the ports must be free.
        self.crash();
    }

    /// Kills the node (SIGKILL: no clean shutdown) and waits until its ports are free.
    pub fn crash(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The node is gone once its ports are free.
        let until = Instant::now() + Duration::from_secs(10);
        while (answers(self.port) || answers(self.dist_port)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_file(self.pid_file());
    }

    /// The AMQP URL of the node's default virtual host.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.crash();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
