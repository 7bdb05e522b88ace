"""What `GET /metrics` must show for a set of sessions and runs, computed the way events.md
defines the daily rows (runs on their own day, each session on the day of its earliest event,
users as the distinct user ids of each day's events), and the rows of `GET /metrics` and of
Agno's own `get_metrics` in one comparable shape.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

COUNTS = (
    "agent_sessions_count",
    "team_sessions_count",
    "workflow_sessions_count",
    "agent_runs_count",
    "team_runs_count",
    "workflow_runs_count",
    "users_count",
)
# token_metrics of GET /metrics, and the Agno run-metrics name each one sums.
TOKENS = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "cached_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "audio_tokens": "audio_total_tokens",
    "input_audio_tokens": "audio_input_tokens",
    "output_audio_tokens": "audio_output_tokens",
}


def day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).date().isoformat()


@dataclass
class Row:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKENS, 0))
    models: dict[tuple[str, str], int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.counts,
            "token_metrics": dict(self.tokens),
            "model_metrics": sorted(
                (model, provider, count) for (model, provider), count in self.models.items()
            ),
        }


def expected_rows(sessions: list[Any]) -> dict[str, dict[str, Any]]:
    """The rows for Agno session objects (`AgentSession`, `TeamSession`) and every run in them."""
    rows: dict[str, Row] = defaultdict(Row)
    users: dict[str, set[str]] = defaultdict(set)
    for session in sessions:
        kind = type(session).__name__.removesuffix("Session").lower()
        runs = list(session.runs or [])
        first = min([session.created_at, *(run.created_at for run in runs)])
        rows[day(first)].counts[f"{kind}_sessions_count"] += 1
        if session.user_id:
            users[day(session.created_at)].add(session.user_id)
        for run in runs:
            run_day = day(run.created_at)
            row = rows[run_day]
            row.counts[f"{kind}_runs_count"] += 1
            metrics = run.metrics.to_dict() if run.metrics else {}
            for key, name in TOKENS.items():
                row.tokens[key] += int(metrics.get(name, 0) or 0)
            if run.model:
                key2 = (run.model, run.model_provider or "")
                row.models[key2] = row.models.get(key2, 0) + 1
            user = run.user_id or session.user_id
            if user:
                users[run_day].add(user)
    for date, names in users.items():
        rows[date].counts["users_count"] = len(names)
    return {date: row.as_dict() for date, row in sorted(rows.items())}


def api_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows of GET /metrics in the same shape."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        date = str(row["date"])[:10]
        out[date] = {
            **{key: int(row[key]) for key in COUNTS},
            "token_metrics": {key: int(row["token_metrics"].get(key, 0)) for key in TOKENS},
            "model_metrics": sorted(
                (entry["model_id"], entry["model_provider"], int(entry["count"]))
                for entry in row["model_metrics"]
            ),
        }
    return out


def agno_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Agno's `get_metrics()` rows (one per user and day) summed per day, in the same shape."""
    per_day: dict[str, Row] = defaultdict(Row)
    for row in rows:
        date = str(row["date"])[:10]
        target = per_day[date]
        for key in COUNTS:
            target.counts[key] += int(row.get(key) or 0)
        tokens = row.get("token_metrics") or {}
        for key, name in TOKENS.items():
            target.tokens[key] += int(tokens.get(name, 0) or 0)
        for entry in row.get("model_metrics") or []:
            model_key = (entry["model_id"], entry.get("model_provider") or "")
            target.models[model_key] = target.models.get(model_key, 0) + int(entry["count"])
    return {date: row.as_dict() for date, row in sorted(per_day.items())}
