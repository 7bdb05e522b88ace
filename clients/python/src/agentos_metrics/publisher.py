"""A publisher that never stands in the application's way.

`Publisher.publish` only puts the event into a bounded in-memory buffer and returns at once; a
background thread does the rest:

- it publishes persistent messages (delivery mode 2) with publisher confirms to the topic
  exchange, the event type as routing key, or, when several events are waiting, one batch message
  (a JSON array, routing key `agentos.batch`) of at most `batch_size` events and `max_body_bytes`;
- when the broker cannot be reached, refuses a message or does not confirm it, the events go to
  the on-disk spool (`Spool`) and the thread reconnects with exponential backoff and full
  jitter; once connected again it replays the spool, oldest first, before anything newer;
- when the buffer is full (the spool is full too, or the broker is slower than the producer),
  the overflow policy decides which event goes, and every event that goes is counted in
  `stats().dropped` and logged: never a silent drop, never a blocked caller.

`close` (registered with `atexit`) publishes what it can within its timeout and spools the rest,
so the next start of the application replays it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pika
import pika.exceptions

from agentos_metrics.events import (
    BATCH,
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    Event,
    encode,
)
from agentos_metrics.spool import Spool, SpooledMessage

log = logging.getLogger("agentos_metrics")

THREAD_NAME = "agentos-metrics-publisher"

# pika logs every failed connection attempt at ERROR with tracebacks, from the loggers below; while
# the broker is away that is one burst per backoff step. The publisher reports an outage itself
# (one warning, then debug lines), so what pika logs from the publisher's thread is dropped; pika
# logging from the application's own threads is untouched.
_PIKA_LOGGERS = (
    "pika.adapters.blocking_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.connection",
    "pika.channel",
)


class _NotFromPublisherThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


_pika_filter = _NotFromPublisherThread()


def _quiet_pika() -> None:
    for name in _PIKA_LOGGERS:
        logger = logging.getLogger(name)
        if _pika_filter not in logger.filters:
            logger.addFilter(_pika_filter)


DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
DEFAULT_EXCHANGE = "agentos.events"

Overflow = Literal["drop_newest", "drop_oldest"]


def _default_spool_dir() -> Path | None:
    configured = os.environ.get("AGENTOS_METRICS_SPOOL_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "agentos-metrics" / "spool"


@dataclass(frozen=True)
class PublisherConfig:
    """How the publisher connects, buffers, spools and batches.

    Defaults come from the environment where it says so, then from the values below.
    """

    #: AMQP URL of RabbitMQ (`AGENTOS_METRICS_AMQP_URL`), vhost percent-encoded.
    url: str = field(
        default_factory=lambda: os.environ.get("AGENTOS_METRICS_AMQP_URL", DEFAULT_URL)
    )
    #: The topic exchange of the event contract (`AGENTOS_METRICS_EXCHANGE`).
    exchange: str = field(
        default_factory=lambda: os.environ.get("AGENTOS_METRICS_EXCHANGE", DEFAULT_EXCHANGE)
    )
    #: Declare the exchange (topic, durable) on connect, as metrics-ingest does.
    declare_exchange: bool = True
    #: Publish with the mandatory flag: a message no queue takes is returned and retried, so
    #: events published before metrics-ingest first declared its queue are not lost.
    mandatory: bool = True
    #: Events held in memory at most.
    buffer_size: int = 10_000
    #: Which event goes when the buffer is full: the one being published (`drop_newest`) or the
    #: oldest waiting (`drop_oldest`). Either way it is counted in `stats().dropped`.
    overflow: Overflow = "drop_newest"
    #: Spool directory (`AGENTOS_METRICS_SPOOL_DIR`, empty disables the spool; default
    #: `$XDG_CACHE_HOME/agentos-metrics/spool`).
    spool_dir: Path | None = field(default_factory=_default_spool_dir)
    #: Most bytes the spool may hold.
    spool_max_bytes: int = 256 << 20
    #: Most events in one batch message (the contract's default limit is 1,000).
    batch_size: int = 200
    #: Largest message body (the contract's default limit is 1 MiB).
    max_body_bytes: int = 1 << 20
    #: First wait after a failure; doubles per consecutive failure, with full jitter.
    backoff_min_s: float = 0.2
    #: Longest wait between two connection attempts.
    backoff_max_s: float = 30.0
    #: How long `close` (and so the exit of the process) waits for the broker.
    flush_timeout_s: float = 5.0
    #: AMQP heartbeat, seconds.
    heartbeat_s: int = 30
    #: Give up on a connection the broker keeps blocked (resource alarm) after this long.
    blocked_timeout_s: float = 30.0
    #: Register `close(flush_timeout_s)` with `atexit`.
    close_at_exit: bool = True


@dataclass(frozen=True)
class PublisherStats:
    """What the publisher did with the events handed to it."""

    accepted: int
    """Events `publish` took into the buffer."""
    confirmed: int
    """Events the broker confirmed (published directly or replayed from the spool)."""
    spooled: int
    """Events written to the spool."""
    replayed: int
    """Events published from the spool and confirmed."""
    dropped: int
    """Events given up: by the overflow policy (buffer full), or the spool full at exit."""
    buffered: int
    """Events waiting in memory now."""
    spool_bytes: int
    """Bytes waiting in the spool now."""
    failures: int
    """Connection attempts and publishes that failed."""
    connections: int
    """Connections opened."""


@dataclass
class _Counters:
    accepted: int = 0
    confirmed: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    failures: int = 0
    connections: int = 0


class PublishFailed(Exception):
    """The broker did not take a message (connection lost, refused, returned or not confirmed)."""


class Publisher:
    """Publishes events from any thread (or event loop) without blocking it.

    Use one per process: `Publisher()` reads its configuration from the environment, or pass a
    `PublisherConfig`.
    """

    def __init__(self, config: PublisherConfig | None = None) -> None:
        self.config = config or PublisherConfig()
        if not 1 <= self.config.batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        if self.config.buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._cond = threading.Condition()
        # Events are encoded by the background thread, not by the caller.
        self._buffer: deque[Event] = deque()
        self._inflight: list[Event] = []
        self._counters = _Counters()
        self._closing = False
        self._close_deadline = 0.0
        self._closed = False
        self._spool = (
            Spool(self.config.spool_dir, self.config.spool_max_bytes)
            if self.config.spool_dir is not None
            else None
        )
        self._connection: Any = None
        self._channel: Any = None
        _quiet_pika()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()
        if self.config.close_at_exit:
            atexit.register(self.close)

    # The caller's side: never blocks on the broker or the disk.

    def publish(self, event: Event) -> bool:
        """Hands `event` (not to be changed afterwards) to the background thread and returns at
        once: False when the event was dropped (buffer full under `drop_newest`, or the publisher
        closed), True when it was taken (under `drop_oldest` a full buffer then drops its oldest
        event instead). Every drop is counted in `stats().dropped`.
        """
        with self._cond:
            if self._closed:
                self._counters.dropped += 1
                _warn_drop(self._counters.dropped, "the publisher is closed")
                return False
            if len(self._buffer) >= self.config.buffer_size:
                self._counters.dropped += 1
                _warn_drop(self._counters.dropped, "the buffer is full")
                if self.config.overflow == "drop_newest":
                    return False
                self._buffer.popleft()
            self._buffer.append(event)
            self._counters.accepted += 1
            self._cond.notify_all()
        return True

    def stats(self) -> PublisherStats:
        """A snapshot of the counters."""
        with self._cond:
            counters = self._counters
            return PublisherStats(
                accepted=counters.accepted,
                confirmed=counters.confirmed,
                spooled=counters.spooled,
                replayed=counters.replayed,
                dropped=counters.dropped,
                buffered=len(self._buffer) + len(self._inflight),
                spool_bytes=self._spool.size_bytes() if self._spool else 0,
                failures=counters.failures,
                connections=counters.connections,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every event handed over so far is confirmed by the broker (the spool
        included), at most `timeout` seconds; returns whether it is.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._idle():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
            return True

    async def aflush(self, timeout: float | None = None) -> bool:
        """`flush` for asyncio code: waits in a worker thread, not on the event loop."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stops the publisher: publishes what it can within `timeout` (default
        `flush_timeout_s`), spools the rest, and returns whether everything was confirmed.
        """
        timeout = self.config.flush_timeout_s if timeout is None else timeout
        with self._cond:
            if self._closed:
                return self._idle()
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1.0)
        with self._cond:
            self._closed = True
            leftover = list(self._inflight) + list(self._buffer)
            if self._thread.is_alive() and leftover:
                # The thread is stuck in a socket call: keep its events (those in flight may be
                # confirmed after all, a duplicate the system ignores).
                self._spool_or_drop(leftover)
                self._buffer.clear()
            done = self._idle()
        if self._spool is not None and not self._thread.is_alive():
            # Releases the slot: a later publisher on the same directory adopts what is left.
            self._spool.close()
        if self.config.close_at_exit:
            atexit.unregister(self.close)
        return done

    # The background thread.

    def _idle(self) -> bool:
        return (
            not self._buffer
            and not self._inflight
            and (self._spool is None or self._spool.is_empty())
        )

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                if self._closing and (self._idle() or time.monotonic() >= self._close_deadline):
                    break
            if self._channel is None:
                try:
                    self._connect()
                    failures = 0
                except Exception as err:  # noqa: BLE001 - every failure to connect is retried
                    failures += 1
                    self._count_failure(err, "connecting to RabbitMQ", failures)
                    self._spool_buffer()
                    if self._wait_backoff(failures):
                        break
                    continue
            try:
                if not self._replay_one_segment():
                    self._publish_buffer()
            except PublishFailed as err:
                failures += 1
                self._count_failure(err, "publishing", failures)
                self._disconnect()
                if self._wait_backoff(failures):
                    break
        self._spool_buffer()
        self._disconnect()
        with self._cond:
            self._cond.notify_all()

    def _wait_backoff(self, failures: int) -> bool:
        """Sleeps the jittered backoff; returns True when closing should end the thread now."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_min_s * 2 ** (failures - 1))
        # Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
        delay = random.uniform(self.config.backoff_min_s / 2, ceiling)  # noqa: S311 - not crypto
        until = time.monotonic() + delay
        with self._cond:
            while True:
                if self._closing:
                    return True
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def _count_failure(self, err: BaseException, doing: str, failures: int) -> None:
        with self._cond:
            self._counters.failures += 1
        if failures == 1:
            log.warning(
                "agentos-metrics: %s failed (%s); events wait (in the spool, if any) until it "
                "answers",
                doing,
                f"{type(err).__name__}: {err}" if str(err) else repr(err),
            )
        else:
            log.debug("agentos-metrics: %s failed again (%s)", doing, err)

    def _connect(self) -> None:
        params = pika.URLParameters(self.config.url)
        params.heartbeat = self.config.heartbeat_s
        params.blocked_connection_timeout = self.config.blocked_timeout_s
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.client_properties = {"connection_name": "agentos-metrics publisher"}
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            if self.config.declare_exchange:
                channel.exchange_declare(
                    exchange=self.config.exchange, exchange_type="topic", durable=True
                )
        except Exception:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        self._connection = connection
        self._channel = channel
        with self._cond:
            self._counters.connections += 1
        log.info("agentos-metrics: connected to RabbitMQ")

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _send(self, messages: list[SpooledMessage]) -> None:
        """Publishes `messages` (as batches where there are several) and waits for the
        confirms; raises PublishFailed when any is not confirmed.
        """
        for routing_key, body, content_type in self._messages_of(messages):
            try:
                self._channel.basic_publish(
                    exchange=self.config.exchange,
                    routing_key=routing_key,
                    body=body,
                    properties=pika.BasicProperties(
                        content_type=content_type, delivery_mode=pika.DeliveryMode.Persistent
                    ),
                    mandatory=self.config.mandatory,
                )
            except (pika.exceptions.AMQPError, OSError) as err:
                raise PublishFailed(f"{type(err).__name__}: {err}") from err

    def _messages_of(self, messages: list[SpooledMessage]) -> list[tuple[str, bytes, str]]:
        if len(messages) == 1:
            return [(messages[0].routing_key, messages[0].body, CONTENT_TYPE)]
        out: list[tuple[str, bytes, str]] = []
        batch: list[bytes] = []
        size = 2
        for message in messages:
            if batch and (
                len(batch) >= self.config.batch_size
                or size + len(message.body) + 1 > self.config.max_body_bytes
            ):
                out.append(_batch(batch))
                batch, size = [], 2
            batch.append(message.body)
            size += len(message.body) + 1
        if batch:
            out.append(_batch(batch))
        return out

    def _replay_one_segment(self) -> bool:
        """Publishes the oldest spool segment; returns False when the spool is empty."""
        if self._spool is None:
            return False
        oldest = self._spool.oldest()
        if oldest is None:
            return False
        path, messages = oldest
        for start in range(0, len(messages), self.config.batch_size):
            self._send(messages[start : start + self.config.batch_size])
        self._spool.remove(path)
        with self._cond:
            self._counters.confirmed += len(messages)
            self._counters.replayed += len(messages)
            self._cond.notify_all()
        return True

    def _publish_buffer(self) -> None:
        with self._cond:
            if not self._buffer and not self._closing:
                self._cond.wait(1.0)
            take = min(len(self._buffer), self.config.batch_size)
            self._inflight = [self._buffer.popleft() for _ in range(take)]
            inflight = self._inflight
        if not inflight:
            # Heartbeats and broker-side closes are handled while idle too.
            try:
                self._connection.process_data_events(0)
            except (pika.exceptions.AMQPError, OSError) as err:
                raise PublishFailed(f"{type(err).__name__}: {err}") from err
            return
        try:
            self._send([_message(event) for event in inflight])
        except PublishFailed:
            self._spool_or_drop(inflight)
            with self._cond:
                self._inflight = []
            raise
        with self._cond:
            self._inflight = []
            self._counters.confirmed += len(inflight)
            self._cond.notify_all()

    def _spool_buffer(self) -> None:
        """Moves everything waiting in memory to the spool (while the broker is away)."""
        with self._cond:
            waiting = list(self._buffer)
            self._buffer.clear()
        if waiting:
            self._spool_or_drop(waiting)
        with self._cond:
            self._cond.notify_all()

    def _spool_or_drop(self, events: list[Event]) -> None:
        written = (
            self._spool.append([_message(event) for event in events])
            if self._spool is not None
            else 0
        )
        rest = events[written:]
        with self._cond:
            self._counters.spooled += written
            if rest and not self._closing and not self._closed:
                # Back to the front of the buffer, in order, as far as it has room; the overflow
                # policy decides about the rest.
                room = max(0, self.config.buffer_size - len(self._buffer))
                keep, rest = rest[:room], rest[room:]
                self._buffer.extendleft(reversed(keep))
            if rest:
                self._counters.dropped += len(rest)
                _warn_drop(
                    self._counters.dropped,
                    "the spool is full" if self._spool is not None else "there is no spool",
                )


def _message(event: Event) -> SpooledMessage:
    return SpooledMessage(str(event.get("type", "")), encode(event))


def _batch(bodies: list[bytes]) -> tuple[str, bytes, str]:
    return BATCH, b"[" + b",".join(bodies) + b"]", BATCH_CONTENT_TYPE


def _warn_drop(total: int, why: str) -> None:
    # The first drop of a run and then one line per thousand: counted always, logged sparingly.
    if total == 1 or total % 1000 == 0:
        log.warning("agentos-metrics: dropped an event (%s); %d dropped so far", why, total)
