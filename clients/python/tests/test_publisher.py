"""The publisher against the real RabbitMQ: confirms, a broker restart in the middle, an
application restart with events spooled, a full buffer and spool, and the flush at exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from agentos_metrics import Publisher, PublisherConfig, session_created
from agentos_metrics.events import BATCH, SESSION_CREATED

from .conftest import Broker, PrivateRabbit, connect_broker, eventually, free_port


def events(prefix: str, count: int) -> list[dict[str, object]]:
    return [
        session_created(
            source="agno://publisher-test",
            session_id=f"{prefix}-{index}",
            session_type="agent",
            user_id=f"user-{index % 7}",
            time=1_754_000_000 + index,
        )
        for index in range(count)
    ]


def config(url: str, exchange: str, spool: Path | None, **overrides: object) -> PublisherConfig:
    settings: dict[str, object] = {
        "url": url,
        "exchange": exchange,
        "spool_dir": spool,
        "close_at_exit": False,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.5,
    }
    settings.update(overrides)
    return PublisherConfig(**settings)  # type: ignore[arg-type]


def ids(received: list[dict[str, object]]) -> set[object]:
    return {event["id"] for event in received}


def test_confirmed_events_arrive_once_each_as_single_messages_and_batches(
    broker: Broker, tmp_path: Path
) -> None:
    broker.declare_queue()
    publisher = Publisher(config(broker.url, broker.exchange, tmp_path))
    sent = events("confirm", 1200)
    publisher.publish(sent[0])
    assert publisher.flush(30)
    for event in sent[1:]:
        publisher.publish(event)
    assert publisher.flush(30)
    stats = publisher.stats()
    assert publisher.close()

    received = []
    keys = set()
    while True:
        method, props, body = broker.channel.basic_get(broker.queue, auto_ack=True)
        if method is None:
            break
        keys.add(method.routing_key)
        assert props.delivery_mode == 2
        decoded = json.loads(body)
        received.extend(decoded if isinstance(decoded, list) else [decoded])
    assert sorted(e["id"] for e in received) == sorted(e["id"] for e in sent)
    assert SESSION_CREATED in keys  # the lone first event
    assert BATCH in keys  # the rest, batched
    assert (stats.accepted, stats.confirmed, stats.dropped, stats.spooled) == (1200, 1200, 0, 0)


def test_unroutable_events_are_kept_until_a_queue_takes_them(
    broker: Broker, tmp_path: Path
) -> None:
    # Confirms with the mandatory flag: while no queue is bound, the broker returns the
    # messages; the publisher keeps them (spool) and publishes them again later.
    publisher = Publisher(config(broker.url, broker.exchange, tmp_path))
    sent = events("unroutable", 50)
    for event in sent:
        publisher.publish(event)
    eventually(lambda: publisher.stats().failures > 0, "a returned message")
    assert not publisher.flush(0.5)
    broker.declare_queue()
    assert publisher.flush(60)
    publisher.close()
    assert ids(broker.drain()) == ids(sent)
    assert publisher.stats().dropped == 0


def test_broker_restart_in_the_middle_loses_nothing(
    private_rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    names = connect_broker(private_rabbit.url)
    names.declare_queue()
    names.connection.close()
    publisher = Publisher(config(private_rabbit.url, names.exchange, tmp_path / "spool"))
    before, during, after = events("before", 300), events("during", 300), events("after", 300)
    for event in before:
        publisher.publish(event)
    assert publisher.flush(30)

    # The broker goes away under the publisher (its connection is closed by the broker) and
    # stays away while the application keeps publishing.
    private_rabbit.stop()
    for event in during:
        publisher.publish(event)
    # With the broker away, the events go to the spool on disk.
    eventually(lambda: publisher.stats().spooled >= len(during), "the events spooled")
    assert not publisher.flush(0.2)

    private_rabbit.start()
    assert publisher.flush(120)
    for event in after:
        publisher.publish(event)
    assert publisher.flush(60)
    stats = publisher.stats()
    publisher.close()

    received = _drain_queue(private_rabbit.url, names.queue)
    assert ids(received) == ids(before + during + after)
    assert stats.dropped == 0
    assert stats.replayed >= len(during)
    assert stats.connections >= 2


def _drain_queue(url: str, queue: str) -> list[dict[str, object]]:
    names = connect_broker(url)
    names.queue = queue
    try:
        return names.drain()
    finally:
        names.connection.close()


def test_events_spooled_when_the_app_stops_are_published_by_the_next_start(
    broker: Broker, tmp_path: Path
) -> None:
    broker.declare_queue()
    spool = tmp_path / "spool"
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f"
    first = Publisher(config(nowhere, broker.exchange, spool))
    sent = events("restart", 250)
    for event in sent:
        first.publish(event)
    assert not first.close(timeout=0.5)
    assert first.stats().spooled == len(sent)
    assert broker.drain() == []

    second = Publisher(config(broker.url, broker.exchange, spool))
    assert second.flush(60)
    second.close()
    assert ids(broker.drain()) == ids(sent)
    assert second.stats().replayed == len(sent)


def test_full_buffer_and_spool_drop_by_policy_and_count_every_drop(
    broker: Broker, tmp_path: Path
) -> None:
    broker.declare_queue()
    spool = tmp_path / "spool"
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f"
    # Room for a few dozen events on disk and ten in memory, while the broker is away.
    cramped = Publisher(
        config(nowhere, broker.exchange, spool, buffer_size=10, spool_max_bytes=8192)
    )
    sent = events("full", 500)
    results = [cramped.publish(event) for event in sent]
    cramped.close(timeout=0.5)
    stats = cramped.stats()
    assert stats.dropped > 0
    assert results.count(False) <= stats.dropped
    # Every event is either on disk or counted as dropped: none vanished silently.
    assert stats.spooled + stats.dropped == len(sent)

    replay = Publisher(config(broker.url, broker.exchange, spool))
    assert replay.flush(60)
    replay.close()
    received = broker.drain()
    assert len(ids(received)) == stats.spooled
    assert ids(received) <= ids(sent)


def test_exit_flushes_what_the_application_published(broker: Broker, tmp_path: Path) -> None:
    broker.declare_queue()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from agentos_metrics import Publisher, PublisherConfig, session_created
        publisher = Publisher(PublisherConfig(
            url={broker.url!r}, exchange={broker.exchange!r},
            spool_dir=Path({str(tmp_path / "spool")!r}), flush_timeout_s=30))
        for index in range(2000):
            publisher.publish(session_created(
                source="agno://exit-test", session_id=f"exit-{{index}}", session_type="agent"))
        # No flush, no close: the process just ends; atexit flushes.
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    received = broker.drain()
    assert len(ids(received)) == 2000
