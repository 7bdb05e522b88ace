"""Backfill: an Agno database filled by Agno itself (runs of an Agent and a Team, and a history
written through Agno's storage API), imported with `agentos-metrics backfill`; GET /metrics
equals Agno's own `calculate_metrics` / `get_metrics` wherever both count the same way, and
differs exactly as docs/agno-client.md says where they do not."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from agno.agent import Agent
from agno.metrics import RunMetrics
from agno.run.agent import RunOutput
from agno.run.base import RunStatus
from agno.run.team import TeamRunOutput
from agno.session import AgentSession, TeamSession
from agno.team import Team

from agentos_metrics import Publisher, PublisherConfig
from agentos_metrics.backfill import BackfillOptions, backfill, open_db, parse_moment

from .conftest import DATABASE_URL, Pipeline, eventually
from .reference import agno_rows, api_rows, expected_rows
from .scripted import ScriptedModel, Step, delegate

SOURCE = "agno://backfill-test"
# The history: 2025-03-01 to 2025-03-04, UTC.
DAY = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
HOUR = 3600


@pytest.fixture(params=["sqlite", "postgres"])
def agno_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty Agno database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agno.db'}"
        return
    name = f"metrics_test_{int(time.time())}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(DATABASE_URL)
    yield urllib.parse.urlunsplit(parts._replace(scheme="postgresql", path=f"/{name}"))
    with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _metrics(input_tokens: int, output_tokens: int, **more: int) -> RunMetrics:
    return RunMetrics(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        **more,
    )


def _agent_run(
    run_id: str, session: str, user: str | None, at: int, model: str, m: RunMetrics
) -> RunOutput:
    return RunOutput(
        run_id=run_id,
        agent_id="history-agent",
        session_id=session,
        user_id=user,
        model=model,
        model_provider="OpenAI",
        created_at=at,
        status=RunStatus.completed,
        metrics=m,
    )


def _store(db: Any, session: Any, runs: list[Any]) -> None:
    """Writes a session and its runs through Agno's storage API, with the session metrics Agno
    keeps (the sum of its runs' metrics)."""
    total = RunMetrics()
    for run in runs:
        total = total + run.metrics
    session.session_data = {"session_metrics": total.to_dict()}
    db.upsert_session(session)
    for run in runs:
        db.upsert_run(run, session_id=session.session_id, user_id=session.user_id)


def fill_history(db: Any) -> None:
    """Sessions of 2025-03-01 to 03-03 whose runs fall on the session's day, and one session of
    03-03 with a run on 03-04 (where Agno's and this system's definitions part)."""
    _store(
        db,
        AgentSession(
            session_id="h-1", agent_id="history-agent", user_id="u1", created_at=DAY + HOUR
        ),
        [
            _agent_run(
                "h-1-r1", "h-1", "u1", DAY + HOUR, "gpt-4o", _metrics(100, 10, cache_read_tokens=5)
            ),
            _agent_run("h-1-r2", "h-1", "u1", DAY + 2 * HOUR, "gpt-4o", _metrics(200, 20)),
        ],
    )
    _store(
        db,
        AgentSession(
            session_id="h-2", agent_id="history-agent", user_id="u2", created_at=DAY + 3 * HOUR
        ),
        [
            _agent_run(
                "h-2-r1",
                "h-2",
                "u2",
                DAY + 3 * HOUR,
                "gpt-4o-mini",
                _metrics(50, 5, reasoning_tokens=3),
            )
        ],
    )
    # A session without a user.
    _store(
        db,
        AgentSession(
            session_id="h-3", agent_id="history-agent", user_id=None, created_at=DAY + 86400 + HOUR
        ),
        [_agent_run("h-3-r1", "h-3", None, DAY + 86400 + HOUR, "gpt-4o", _metrics(70, 7))],
    )
    # A team session: the team run and its member run (parent_run_id).
    team_at = DAY + 86400 + 5 * HOUR
    member = _agent_run("h-4-m1", "h-4", "u3", team_at + 1, "claude-sonnet", _metrics(300, 30))
    member.model_provider = "Anthropic"
    member.parent_run_id = "h-4-t1"
    team_run = TeamRunOutput(
        run_id="h-4-t1",
        team_id="history-team",
        session_id="h-4",
        user_id="u3",
        model="gpt-4o",
        model_provider="OpenAI",
        created_at=team_at,
        status=RunStatus.completed,
        metrics=_metrics(400, 40),
    )
    _store(
        db,
        TeamSession(session_id="h-4", team_id="history-team", user_id="u3", created_at=team_at),
        [member, team_run],
    )
    # Created on 03-03, one run that day and one on 03-04.
    late = DAY + 2 * 86400 + 23 * HOUR
    _store(
        db,
        AgentSession(session_id="h-5", agent_id="history-agent", user_id="u4", created_at=late),
        [
            _agent_run("h-5-r1", "h-5", "u4", late, "gpt-4o", _metrics(10, 1)),
            _agent_run("h-5-r2", "h-5", "u4", late + 2 * HOUR, "gpt-4o", _metrics(20, 2)),
        ],
    )


def fill_live(db: Any) -> None:
    """Runs of an Agent and a Team with scripted models, stored by Agno as it runs them."""
    agent = Agent(
        id="live-agent",
        db=db,
        model=ScriptedModel(
            id="gpt-4o",
            provider="OpenAI",
            script=[
                Step("a", input_tokens=11, output_tokens=2),
                Step("b", input_tokens=13, output_tokens=3),
            ],
        ),
    )
    member = Agent(
        id="live-member",
        model=ScriptedModel(
            id="claude-sonnet",
            provider="Anthropic",
            script=[Step("m", input_tokens=17, output_tokens=4)],
        ),
    )
    team = Team(
        id="live-team",
        db=db,
        members=[member],
        model=ScriptedModel(
            id="gpt-4o",
            provider="OpenAI",
            script=[
                delegate("live-member", "do", 19, 5),
                Step("t", input_tokens=23, output_tokens=6),
            ],
        ),
    )
    agent.run("x", user_id="live-1", session_id="live-s1")
    agent.run("y", user_id="live-2", session_id="live-s2")
    team.run("z", user_id="live-1", session_id="live-s3")


def _publisher(pipeline: Pipeline) -> Publisher:
    return Publisher(
        PublisherConfig(
            url=pipeline.broker.url,
            exchange=pipeline.broker.exchange,
            spool_dir=None,
            close_at_exit=False,
        )
    )


class Interrupted(BaseException):
    """Stands for Ctrl-C in the middle of an import."""


def test_backfill_matches_agnos_own_metrics(
    pipeline: Pipeline, agno_db_url: str, tmp_path: Path
) -> None:
    options = BackfillOptions(
        db_url=agno_db_url, source=SOURCE, page_size=2, state_file=tmp_path / "state.json"
    )
    db = open_db(options)
    fill_history(db)
    fill_live(db)
    sessions = list(db.get_sessions())
    assert len(sessions) == 8

    # Interrupted after its first page, then resumed: every session once.
    publisher = _publisher(pipeline)
    pages: list[int] = []

    def stop_after_first_page(done: int, total: int, runs: int) -> None:
        pages.append(done)
        if done > 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        backfill(options, publisher, stop_after_first_page)
    resumed = backfill(options, publisher)
    assert resumed.resumed
    assert resumed.sessions == len(sessions) - 2
    publisher.close()

    today = datetime.now(UTC).date()
    start, end = "2025-02-28", (today + timedelta(days=1)).isoformat()
    expected = expected_rows(sessions)

    def rows() -> dict[str, Any]:
        return api_rows(pipeline.metrics(start, end))

    eventually(lambda: rows() == expected or None, "GET /metrics shows the import", timeout=60)

    # Agno's own calculation over the same database.
    db.calculate_metrics()
    agno, _ = db.get_metrics(starting_date=date(2025, 2, 28), ending_date=today + timedelta(days=1))
    theirs = agno_rows(agno)
    ours = rows()
    same_days = [d for d in ours if d not in ("2025-03-03", "2025-03-04")]
    assert {d: ours[d] for d in same_days} == {d: theirs[d] for d in same_days}

    # Where the definitions part (docs/agno-client.md): a run counts on its own day here, on
    # its session's creation day in Agno; a user counts on every day with an event here, on
    # its sessions' creation days in Agno.
    assert ours["2025-03-03"]["agent_runs_count"] == 1
    assert theirs["2025-03-03"]["agent_runs_count"] == 2
    assert ours["2025-03-04"]["agent_runs_count"] == 1
    assert "2025-03-04" not in theirs
    assert ours["2025-03-03"]["token_metrics"]["total_tokens"] == 11
    assert theirs["2025-03-03"]["token_metrics"]["total_tokens"] == 33
    assert (ours["2025-03-03"]["users_count"], ours["2025-03-04"]["users_count"]) == (1, 1)
    assert theirs["2025-03-03"]["users_count"] == 1
    assert ours["2025-03-04"]["agent_sessions_count"] == 0

    # Summed over the whole range, every count but users agrees.
    def total(rows: dict[str, Any], key: str) -> int:
        return sum(row[key] for row in rows.values())

    for key in (
        "agent_runs_count",
        "team_runs_count",
        "agent_sessions_count",
        "team_sessions_count",
    ):
        assert total(ours, key) == total(theirs, key), key


def test_backfill_twice_changes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'agno.db'}"
    db = open_db(BackfillOptions(db_url=db_url, source=SOURCE))
    fill_history(db)
    fill_live(db)
    # The console script pip installed beside the interpreter, as a user runs it.
    command = [
        str(Path(sys.executable).parent / "agentos-metrics"),
        "backfill",
        "--db-url",
        db_url,
        "--source",
        SOURCE,
        "--amqp-url",
        pipeline.broker.url,
        "--exchange",
        pipeline.broker.exchange,
        "--state-file",
        str(tmp_path / "state.json"),
    ]
    first = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    assert "published 8 sessions (6 agent, 2 team) and 12 runs" in first.stdout
    assert "8/8 sessions" in first.stderr
    today = datetime.now(UTC).date()
    start, end = "2025-02-28", (today + timedelta(days=1)).isoformat()
    expected = expected_rows(list(db.get_sessions()))
    eventually(
        lambda: api_rows(pipeline.metrics(start, end)) == expected or None,
        "GET /metrics shows the import",
    )
    applied = pipeline.ingest_counter("applied")

    second = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    assert "published 8 sessions" in second.stdout
    # Every event of the second import arrives and is a duplicate: the rows stay as they were.
    eventually(
        lambda: pipeline.ingest_counter("duplicate") >= applied or None,
        "ingest saw the second import",
    )
    assert api_rows(pipeline.metrics(start, end)) == expected
    assert pipeline.ingest_counter("applied") == applied


def test_since_and_until_select_sessions_by_creation_day(broker: Any, tmp_path: Path) -> None:
    broker.declare_queue()
    db_url = f"sqlite:///{tmp_path / 'agno.db'}"
    fill_history(open_db(BackfillOptions(db_url=db_url, source=SOURCE)))
    publisher = Publisher(
        PublisherConfig(
            url=broker.url, exchange=broker.exchange, spool_dir=None, close_at_exit=False
        )
    )
    report = backfill(
        BackfillOptions(
            db_url=db_url,
            source=SOURCE,
            since=parse_moment("2025-03-02"),
            until=parse_moment("2025-03-02", end_of_day=True),
            state_file=tmp_path / "state.json",
        ),
        publisher,
    )
    publisher.close()
    received = broker.drain()
    assert (report.sessions, report.runs) == (2, 3)
    assert sorted(e["data"]["session_id"] for e in received if "session" in e["type"]) == [
        "h-3",
        "h-4",
    ]
    assert sorted(e["data"]["run_id"] for e in received if "run" in e["type"]) == [
        "h-3-r1",
        "h-4-m1",
        "h-4-t1",
    ]
