"""The CloudEvents this package publishes, as the event contract (`events.md`) defines them.

Every event id is derived from what the event is about (the session id, the run id), never drawn
at random: publishing the same session or run again, from a retry, a replayed spool, a restarted
application or a backfill over live data, yields the same event, which the system already counts
once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

SPEC_VERSION = "1.0"
SESSION_CREATED = "agentos.session.created"
RUN_COMPLETED = "agentos.run.completed"
BATCH = "agentos.batch"
CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"

SessionType = Literal["agent", "team", "workflow"]

# A fixed namespace for the UUIDv5 event ids (RFC 9562, section 5.5): the same session or run
# always gets the same id, in every process and every release.
_ID_NAMESPACE = uuid.UUID("5f1f5d0e-8c4e-4a39-9f36-0d6a2c8f4b11")

# Agno's run-metrics names that the contract counts (events.md, `metrics`), published as they are.
TOKEN_KEYS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "audio_total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

Event = dict[str, Any]


def event_id(event_type: str, subject: str) -> str:
    """The deterministic id of the event of `event_type` about `subject` (a session or run id)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{event_type}/{subject}"))


def timestamp(when: float | int | datetime | None) -> str:
    """An RFC 3339 timestamp in UTC: `when` as Unix seconds or a datetime, or now when None."""
    if when is None:
        moment = datetime.now(UTC)
    elif isinstance(when, datetime):
        moment = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(when, UTC)
    return moment.astimezone(UTC).isoformat()


def _envelope(event_type: str, subject: str, source: str, time: str, data: Event) -> Event:
    return {
        "specversion": SPEC_VERSION,
        "id": event_id(event_type, subject),
        "source": source,
        "type": event_type,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    }


def _without_none(data: Mapping[str, Any]) -> Event:
    return {key: value for key, value in data.items() if value is not None}


def session_created(
    *,
    source: str,
    session_id: str,
    session_type: SessionType,
    time: float | int | datetime | None = None,
    user_id: str | None = None,
    agent_id: str | None = None,
    team_id: str | None = None,
    workflow_id: str | None = None,
) -> Event:
    """An `agentos.session.created` event; `time` is when the session was created."""
    data = _without_none(
        {
            "session_id": session_id,
            "session_type": session_type,
            "user_id": user_id or None,
            "agent_id": agent_id,
            "team_id": team_id,
            "workflow_id": workflow_id,
        }
    )
    return _envelope(SESSION_CREATED, session_id, source, timestamp(time), data)


def run_metrics(metrics: Mapping[str, Any] | None) -> Event:
    """The `metrics` object of a run: Agno's run metrics (its `to_dict()`) without null values.

    Every key Agno reports is kept under Agno's own name (token counts, `cost`, `duration`,
    `time_to_first_token`, the per-model `details`, `additional_metrics`); the contract counts
    the token names and `cost` and accepts the others as they are.
    """
    if not metrics:
        return {}
    cleaned: Event = {}
    for key, value in metrics.items():
        if value is None or key == "timer":
            continue
        if key in TOKEN_KEYS and (not isinstance(value, int) or value < 0):
            # The contract takes non-negative integer counts only: anything else would make the
            # whole event bad input, so such a value stays out of the counts.
            continue
        if key == "cost" and (not isinstance(value, int | float) or value < 0):
            continue
        cleaned[key] = value
    return cleaned


def run_completed(
    *,
    source: str,
    run_id: str,
    session_id: str,
    session_type: SessionType,
    time: float | int | datetime | None = None,
    user_id: str | None = None,
    parent_run_id: str | None = None,
    model: str | None = None,
    model_provider: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Event:
    """An `agentos.run.completed` event; `time` is when the run was created.

    `extra` adds further fields to `data` (run status, agent, team and workflow ids): the
    contract accepts unknown fields, so they are on the wire for later analytics.
    """
    data = _without_none(dict(extra or {}))
    data.update(
        _without_none(
            {
                "run_id": run_id,
                "session_id": session_id,
                "session_type": session_type,
                "user_id": user_id or None,
                "parent_run_id": parent_run_id,
                "model": model or None,
                "model_provider": model_provider or None,
                "metrics": run_metrics(metrics),
            }
        )
    )
    return _envelope(RUN_COMPLETED, run_id, source, timestamp(time), data)


def encode(event: Event) -> bytes:
    """The JSON body of one event."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()
