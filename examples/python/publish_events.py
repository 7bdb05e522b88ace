"""Publish an Agno application's run and session events to AgentOS Metrics.

    pip install -r requirements.txt
    python publish_events.py            # publishes a session and two runs, prints what it sent

The broker URL comes from AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f). Events follow
the contract in events.md: CloudEvents 1.0 in structured JSON, published persistently to the topic
exchange `agentos.events` with the event type as routing key, with publisher confirms.

In an Agno application, call `session_created` when a session starts and `run_completed` with a
finished run's metrics (for example `run_response.metrics`, whose names are accepted as they are).
"""

import json
import os
import uuid
from datetime import datetime, timezone

import pika

EXCHANGE = "agentos.events"
SOURCE = "agno://example-app"


class MetricsPublisher:
    """A blocking publisher with confirms; one per process is enough."""

    def __init__(self, url: str) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        # Idempotent: the same declaration metrics-ingest makes.
        self._channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)

    def publish(self, event_type: str, data: dict, time: datetime | None = None) -> dict:
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": SOURCE,
            "type": event_type,
            "time": (time or datetime.now(timezone.utc)).isoformat(),
            "datacontenttype": "application/json",
            "data": data,
        }
        # With confirms on, basic_publish returns once the broker has the message, and raises
        # pika.exceptions.NackError / UnroutableError otherwise.
        self._channel.basic_publish(
            exchange=EXCHANGE,
            routing_key=event_type,
            body=json.dumps(event).encode(),
            properties=pika.BasicProperties(
                content_type="application/cloudevents+json", delivery_mode=2
            ),
        )
        return event

    def session_created(self, session_id: str, session_type: str, user_id: str | None) -> dict:
        return self.publish(
            "agentos.session.created",
            {"session_id": session_id, "session_type": session_type, "user_id": user_id},
        )

    def run_completed(
        self,
        run_id: str,
        session_id: str,
        session_type: str,
        user_id: str | None,
        model: str | None,
        model_provider: str | None,
        metrics: dict,
    ) -> dict:
        return self.publish(
            "agentos.run.completed",
            {
                "run_id": run_id,
                "session_id": session_id,
                "session_type": session_type,
                "user_id": user_id,
                "model": model,
                "model_provider": model_provider,
                "metrics": metrics,
            },
        )

    def close(self) -> None:
        self._connection.close()


def main() -> None:
    publisher = MetricsPublisher(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    session_id = str(uuid.uuid4())
    sent = [publisher.session_created(session_id, "agent", "user-42")]
    for _ in range(2):
        sent.append(
            publisher.run_completed(
                run_id=str(uuid.uuid4()),
                session_id=session_id,
                session_type="agent",
                user_id="user-42",
                model="gpt-4o",
                model_provider="OpenAI",
                # Agno's RunMetrics names, as `run_response.metrics` has them.
                metrics={
                    "input_tokens": 448,
                    "output_tokens": 148,
                    "total_tokens": 596,
                    "cache_read_tokens": 0,
                    "reasoning_tokens": 0,
                    "duration": 2.4,
                },
            )
        )
    publisher.close()
    for event in sent:
        print(event["type"], event["id"])


if __name__ == "__main__":
    main()
