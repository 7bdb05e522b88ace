"""Fixtures on the real services: per-test exchange and queue names on RabbitMQ
(`TEST_AMQP_URL`), a fresh metrics database on PostgreSQL (`TEST_DATABASE_URL`), the project's
`metrics-ingest` and `metrics-query` binaries on free loopback ports, and a private RabbitMQ node
a test may crash.

Like the Rust fixtures (crates/test-support), databases are named `metrics_test_<time>_<random>`
(so leftovers of a crashed run are swept by the Rust suite too) and every broker name carries a
random suffix; everything is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pika
import psycopg
import pytest

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres"
)
REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("METRICS_BIN_DIR", REPO / "target" / "debug"))

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Polls `check` until it returns something other than None or False, at most `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None and last is not False:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so no
    client socket can take it while a server that listens on it is restarted."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 32000)  # noqa: S311 - not crypto
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 20000 and 32000")


def suffix() -> str:
    return uuid.uuid4().hex[:12]


# RabbitMQ


@dataclass
class Broker:
    """A test's exchange and queue names on a broker, and a channel to inspect them."""

    url: str
    exchange: str
    queue: str
    connection: Any
    channel: Any

    def declare_queue(self) -> None:
        """A durable queue bound to the exchange with `agentos.#`, as ingest binds its own."""
        self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self.channel.queue_declare(self.queue, durable=True)
        self.channel.queue_bind(self.queue, self.exchange, "agentos.#")

    def drain(self) -> list[dict[str, Any]]:
        """Every event waiting in the queue (batches unpacked), acknowledged."""
        events: list[dict[str, Any]] = []
        while True:
            method, _props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return events
            decoded = json.loads(body)
            events.extend(decoded if isinstance(decoded, list) else [decoded])

    def cleanup(self) -> None:
        for queue in (self.queue, f"{self.queue}.dead"):
            with contextlib.suppress(Exception):
                self.channel.queue_delete(queue)
        for exchange in (self.exchange, f"{self.queue}.dlx"):
            with contextlib.suppress(Exception):
                self.channel.exchange_delete(exchange)
        with contextlib.suppress(Exception):
            self.connection.close()


def connect_broker(url: str) -> Broker:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    tail = suffix()
    return Broker(
        url=url,
        exchange=f"agentos.events.test-{tail}",
        queue=f"metrics.ingest.test-{tail}",
        connection=connection,
        channel=connection.channel(),
    )


@pytest.fixture
def broker() -> Iterator[Broker]:
    try:
        names = connect_broker(AMQP_URL)
    except Exception as err:  # noqa: BLE001 - a missing service fails with its reason
        pytest.fail(f"cannot reach the test RabbitMQ at TEST_AMQP_URL={AMQP_URL}: {err}")
    yield names
    names.cleanup()


class PrivateRabbit:
    """A RabbitMQ node of this test's own (node name, ports, data), which it may crash."""

    def __init__(self) -> None:
        # The server script itself, not the distribution's wrapper in PATH that switches to the
        # rabbitmq user (who may not write this test's folder).
        program = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(program).exists():
            program = shutil.which("rabbitmq-server") or program
        if not Path(program).exists():
            pytest.fail("rabbitmq-server is missing: scripts/services.sh installs it")
        self.program = program
        self.dir = Path(tempfile.mkdtemp(prefix="agentos-metrics-rabbit-"))
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.node = f"agentos-metrics-py-{os.getpid()}-{suffix()[:6]}@localhost"
        self.port = stable_port()
        self.dist_port = stable_port()
        self.child: subprocess.Popen[bytes] | None = None
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbitmq.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
        )
        log = (self.dir / "console.log").open("ab")
        self.child = subprocess.Popen(
            [self.program],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

        def up() -> bool:
            assert self.child is not None
            if self.child.poll() is not None:
                raise AssertionError(
                    f"the private RabbitMQ node exited:\n{(self.dir / 'console.log').read_text()}"
                )
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return True

        eventually(up, "the private RabbitMQ node accepts connections", timeout=90)

    def stop(self) -> None:
        """Stops the node (SIGTERM: it closes every connection and writes its state), as a
        restart of the broker does; returns once the AMQP port is free."""
        self._signal(signal.SIGTERM)
        if self.child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.wait(timeout=60)
        self.crash()

    def _signal(self, sig: signal.Signals) -> None:
        pid_file = self.dir / "rabbitmq.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), sig)

    def crash(self) -> None:
        """SIGKILL, no clean shutdown; returns once the AMQP port is free."""
        pid_file = self.dir / "rabbitmq.pid"
        self._signal(signal.SIGKILL)
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()
            self.child = None

        def down() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) != 0

        eventually(down, "the private RabbitMQ node's port is free", timeout=20)
        pid_file.unlink(missing_ok=True)

    def remove(self) -> None:
        self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    node = PrivateRabbit()
    node.start()
    yield node
    node.remove()


# PostgreSQL and the services


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def metrics_db() -> Iterator[str]:
    """A fresh database with the project's migrations applied (`metrics-ingest migrate`)."""
    name = f"metrics_test_{int(time.time())}_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(DATABASE_URL, autocommit=True)
    except psycopg.Error as err:
        pytest.fail(f"cannot reach the test PostgreSQL at TEST_DATABASE_URL={DATABASE_URL}: {err}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(DATABASE_URL, name)
    subprocess.run(
        [str(binary("metrics-ingest")), "migrate"],
        env=_service_env({"METRICS_DATABASE__URL": url}),
        check=True,
        capture_output=True,
    )
    yield url
    with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the binaries first (cargo build --bins)")
    return path


def _service_env(settings: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "METRICS_LOG__FORMAT": "json"}
    env.update(settings)
    return env


class Service:
    """A service binary as a child process, its output in a temporary file."""

    def __init__(self, name: str, args: list[str], settings: dict[str, str]) -> None:
        self.name = name
        self.admin = free_port()
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        settings = {**settings, "METRICS_ADMIN__LISTEN": f"127.0.0.1:{self.admin}"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary(name)), *args],
                env=_service_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin}/readyz", timeout=2
                ) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        eventually(ready, f"{self.name} /readyz", timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)


@dataclass
class Pipeline:
    """ingest and query on a fresh database, consuming the test's exchange and queue."""

    broker: Broker
    database_url: str
    ingest: Service
    query: Service
    query_port: int

    def metrics(self, starting_date: str, ending_date: str) -> list[dict[str, Any]]:
        """GET /metrics over the range: the rows, ascending by date."""
        params = urllib.parse.urlencode(
            {"starting_date": starting_date, "ending_date": ending_date}
        )
        url = f"http://127.0.0.1:{self.query_port}/metrics?{params}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        return list(body["metrics"])

    def ingest_counter(self, outcome: str) -> float:
        """metrics_ingest_deliveries_total{outcome=...} from ingest's admin listener."""
        url = f"http://127.0.0.1:{self.ingest.admin}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("metrics_ingest_deliveries_total{") and (
                f'outcome="{outcome}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def pipeline(broker: Broker, metrics_db: str) -> Iterator[Pipeline]:
    ingest = Service(
        "metrics-ingest",
        ["run"],
        {
            "METRICS_DATABASE__URL": metrics_db,
            "METRICS_AMQP__URL": broker.url,
            "METRICS_AMQP__EXCHANGE": broker.exchange,
            "METRICS_AMQP__QUEUE": broker.queue,
        },
    )
    query_port = free_port()
    query = Service(
        "metrics-query",
        [],
        {
            "METRICS_DATABASE__URL": metrics_db,
            "METRICS_HTTP__LISTEN": f"127.0.0.1:{query_port}",
            "METRICS_HTTP__WORKERS": "1",
            # Every read sees the latest rows: the tests poll until they match.
            "METRICS_CACHE__ENTRIES": "0",
        },
    )
    try:
        ingest.wait_ready()
        query.wait_ready()
        yield Pipeline(broker, metrics_db, ingest, query, query_port)
    finally:
        ingest.stop()
        query.stop()
