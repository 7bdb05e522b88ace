"""The running system the suite judges: the real metrics-ingest and metrics-query binaries on
free loopback ports, a fresh PostgreSQL database, and an exchange and queue of their own on
RabbitMQ; events published with pika; RS256 keys and tokens made with cryptography and PyJWT.

Environment: METRICS_BIN_DIR (default target/debug), TEST_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/postgres, the server only: the suite creates and drops its
own database), TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
"""

import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jwt
import pika
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("METRICS_BIN_DIR", ROOT / "target" / "debug"))
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
AUDIENCE = "agno-client-suite-os"
# Long enough for a debug build to start and drain a few events on a busy machine.
DEADLINE_S = 60

_LOOP = asyncio.new_event_loop()


def call(coroutine):
    """Runs one of AgentOSClient's coroutines. One event loop for the whole run: the client
    keeps one global httpx.AsyncClient, bound to the loop it first ran on."""
    return _LOOP.run_until_complete(coroutine)


def _database_url(name):
    parts = urllib.parse.urlsplit(DATABASE_URL)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _psql(sql):
    subprocess.run(["psql", "-q", DATABASE_URL, "-c", sql], check=True, capture_output=True)


class KeyPair:
    """An RSA key pair: the private key signs tokens, the public PEM is the service's key."""

    def __init__(self):
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def token(self, sub, scopes, audience=AUDIENCE, expires_in=600):
        now = int(time.time())
        claims = {"sub": sub, "scopes": scopes, "iat": now, "exp": now + expires_in}
        if audience is not None:
            claims["aud"] = audience
        return jwt.encode(claims, self.private, algorithm="RS256")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class Service:
    """A binary started in its own process, its log in a file, stopped with SIGTERM."""

    def __init__(self, name, env, log_dir, args=()):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(BIN_DIR / name), *args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def field(self, message, key):
        """The JSON log field `key` of the first line with `message`, waiting for it."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if message in line:
                    record = json.loads(line)
                    fields = record.get("fields", record)
                    return fields[key]
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name} never logged {message!r}:\n{self.log_path.read_text()}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def keys():
    return KeyPair()


@pytest.fixture(scope="session")
def system(tmp_path_factory, keys):
    """Database, exchange and queue of the run's own; ingest and query started on them."""
    suffix = f"{os.getpid()}_{secrets.token_hex(4)}"
    database = f"metrics_agno_client_{suffix}"
    exchange = f"agno_client.{suffix}.events"
    queue = f"agno_client.{suffix}.ingest"
    security_key = secrets.token_hex(16)
    log_dir = tmp_path_factory.mktemp("services")
    _psql(f"CREATE DATABASE {database}")
    services = []
    try:
        base_env = {
            "PATH": os.environ.get("PATH", ""),
            "METRICS_DATABASE__URL": _database_url(database),
            "METRICS_LOG__FORMAT": "json",
            "METRICS_LOG__LEVEL": "info",
            "METRICS_ADMIN__LISTEN": "127.0.0.1:0",
        }
        ingest_env = {
            **base_env,
            "METRICS_AMQP__URL": AMQP_URL,
            "METRICS_AMQP__EXCHANGE": exchange,
            "METRICS_AMQP__QUEUE": queue,
            "METRICS_BATCH__WAIT_MS": "5",
        }
        subprocess.run(
            [str(BIN_DIR / "metrics-ingest"), "migrate"], env=ingest_env, check=True, capture_output=True
        )
        ingest = Service("metrics-ingest", ingest_env, log_dir)
        services.append(ingest)
        # Ready means the exchange and queue are declared and the consumer runs.
        admin = f"http://127.0.0.1:{ingest.field('metrics-ingest started', 'admin.port')}"
        wait_for(lambda: _answers(admin + "/readyz"), "metrics-ingest became ready")
        query = Service(
            "metrics-query",
            {
                **base_env,
                "METRICS_HTTP__LISTEN": "127.0.0.1:0",
                "METRICS_HTTP__WORKERS": "2",
                "METRICS_DATABASE__TABLES": "agno_metrics,other_metrics",
                "OS_SECURITY_KEY": security_key,
                "JWT_VERIFICATION_KEY": keys.public_pem,
                "METRICS_AUTH__JWT__AUDIENCE": AUDIENCE,
            },
            log_dir,
        )
        services.append(query)
        port = query.field("metrics-query listening", "http.port")
        yield {
            "base_url": f"http://127.0.0.1:{port}",
            "security_key": security_key,
            "exchange": exchange,
            "database": database,
        }
    finally:
        for service in services:
            service.stop()
        _cleanup_broker(exchange, queue)
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _cleanup_broker(exchange, queue):
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for name in (queue, f"{queue}.dead"):
        channel.queue_delete(queue=name)
    for name in (exchange, f"{queue}.dlx"):
        channel.exchange_delete(exchange=name)
    connection.close()


def event(event_id, event_type, time_, data):
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "agno://agno-client-suite",
        "type": f"agentos.{event_type}",
        "time": time_,
        "datacontenttype": "application/json",
        "data": data,
    }


def publish(exchange, events):
    """Publishes `events` persistently with publisher confirms, each under its type."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for item in events:
        channel.basic_publish(
            exchange=exchange,
            routing_key=item["type"],
            body=json.dumps(item).encode(),
            properties=pika.BasicProperties(
                content_type="application/cloudevents+json", delivery_mode=2
            ),
            mandatory=True,
        )
    connection.close()


def get_json(base_url, path, headers):
    request = urllib.request.Request(base_url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(predicate, describe):
    """Polls `predicate` until it returns a true value, for at most DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{describe}: still false after {DEADLINE_S} s (last: {last!r})")


def today_minus(days):
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).date()
