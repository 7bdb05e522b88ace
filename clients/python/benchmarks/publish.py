"""Publisher throughput against a running RabbitMQ: what `publish` costs the caller, and how fast
events are confirmed by the broker.

    target/python-venv/bin/python clients/python/benchmarks/publish.py [EVENTS]

Uses TEST_AMQP_URL (default the local broker), an exchange and queue of its own (deleted at the
end), no spool. Prints one line per figure.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pika

from agentos_metrics import Publisher, PublisherConfig, run_completed

URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tail = uuid.uuid4().hex[:8]
    exchange, queue = f"bench.events-{tail}", f"bench.queue-{tail}"
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, "agentos.#")
    events = [
        run_completed(
            source="agno://bench",
            run_id=f"run-{index}",
            session_id=f"session-{index // 10}",
            session_type="agent",
            time=1_754_000_000 + index,
            user_id=f"user-{index % 100}",
            model="gpt-4o",
            model_provider="OpenAI",
            metrics={"input_tokens": 448, "output_tokens": 148, "total_tokens": 596},
        )
        for index in range(count)
    ]
    publisher = Publisher(
        PublisherConfig(
            url=URL,
            exchange=exchange,
            spool_dir=None,
            buffer_size=count,
            close_at_exit=False,
        )
    )
    publisher.flush(30)
    start = time.perf_counter()
    for event in events:
        publisher.publish(event)
    handed = time.perf_counter() - start
    assert publisher.flush(600)
    confirmed = time.perf_counter() - start
    stats = publisher.stats()
    publisher.close()
    depth = channel.queue_declare(queue, passive=True).method.message_count
    channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    connection.close()
    print(f"events: {count}, confirmed: {stats.confirmed}, dropped: {stats.dropped}")
    print(f"publish() per event: {handed / count * 1e6:.1f} us (caller side)")
    print(f"confirmed by the broker: {count / confirmed:,.0f} events/s ({confirmed:.2f} s)")
    print(f"messages in the queue: {depth} (batches of up to {publisher.config.batch_size})")


if __name__ == "__main__":
    main()
