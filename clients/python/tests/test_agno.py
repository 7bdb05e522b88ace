"""An Agno Agent and Team running offline (scripted models) with the integration attached, through
the real metrics-ingest and metrics-query: GET /metrics shows exactly their runs, sessions,
users, tokens and models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agno.agent import Agent
from agno.db.sqlite import SqliteDb
from agno.team import Team
from agno.workflow import Workflow
from agno.workflow.step import Step as WorkflowStep

from agentos_metrics import Publisher, PublisherConfig, instrument
from agentos_metrics.agno import MetricsHook

from .conftest import Pipeline, eventually
from .reference import api_rows, expected_rows
from .scripted import ScriptedModel, Step, delegate


def _publisher(pipeline: Pipeline, tmp_path: Path) -> Publisher:
    return Publisher(
        PublisherConfig(
            url=pipeline.broker.url,
            exchange=pipeline.broker.exchange,
            spool_dir=tmp_path / "spool",
            close_at_exit=False,
        )
    )


def _range(expected: dict[str, Any]) -> tuple[str, str]:
    dates = sorted(expected)
    start = datetime.fromisoformat(dates[0]) - timedelta(days=1)
    end = datetime.fromisoformat(dates[-1]) + timedelta(days=1)
    return start.date().isoformat(), end.date().isoformat()


def test_agent_and_team_runs_reach_get_metrics_exactly(pipeline: Pipeline, tmp_path: Path) -> None:
    db = SqliteDb(db_file=str(tmp_path / "agno.db"))
    publisher = _publisher(pipeline, tmp_path)
    source = "agno://agno-test"

    agent = Agent(
        id="support-agent",
        name="Support",
        db=db,
        model=ScriptedModel(
            id="gpt-4o",
            provider="OpenAI",
            script=[
                Step("Hello", input_tokens=448, output_tokens=148, cache_read_tokens=64),
                Step("Sure", input_tokens=120, output_tokens=30, reasoning_tokens=12),
                Step("Done", input_tokens=77, output_tokens=7),
                Step("Async", input_tokens=50, output_tokens=5),
            ],
        ),
    )
    researcher = Agent(
        id="researcher",
        name="Researcher",
        model=ScriptedModel(
            id="claude-sonnet",
            provider="Anthropic",
            script=[
                Step("Findings one", input_tokens=300, output_tokens=90),
                Step("Findings two", input_tokens=310, output_tokens=95),
            ],
        ),
    )
    team = Team(
        id="research-team",
        name="Research",
        db=db,
        members=[researcher],
        model=ScriptedModel(
            id="gpt-4o-mini",
            provider="OpenAI",
            script=[
                delegate("researcher", "look it up", input_tokens=200, output_tokens=40),
                Step("Summary", input_tokens=260, output_tokens=60),
                delegate("researcher", "and again", input_tokens=210, output_tokens=41),
                Step("Summary two", input_tokens=270, output_tokens=61),
            ],
        ),
    )
    # The one line an application adds (here with the test's own publisher and source).
    instrument(agent, publisher=publisher, source=source)
    instrument(team, publisher=publisher, source=source)
    assert sum(isinstance(hook, MetricsHook) for hook in agent.post_hooks or []) == 1

    outputs = [
        agent.run("hi", user_id="alice", session_id="session-a1"),
        agent.run("more", user_id="alice", session_id="session-a1"),
        agent.run("hi", user_id="bob", session_id="session-b1"),
        asyncio.run(agent.arun("async", user_id="carol", session_id="session-c1")),
        team.run("research", user_id="alice", session_id="session-t1"),
        team.run("research", user_id="dave", session_id="session-t2"),
    ]
    assert [str(output.status.value).upper() for output in outputs] == ["COMPLETED"] * 6
    assert publisher.flush(60)
    publisher.close()

    sessions = list(db.get_sessions())
    # 4 agent runs, 2 team runs with one member run each.
    assert sum(len(session.runs or []) for session in sessions) == 8
    expected = expected_rows(sessions)
    start, end = _range(expected)

    def matches() -> dict[str, Any] | None:
        rows = api_rows(pipeline.metrics(start, end))
        return rows if rows == expected else None

    try:
        eventually(matches, "GET /metrics shows the runs", timeout=60)
    except AssertionError:
        assert api_rows(pipeline.metrics(start, end)) == expected
    totals = {
        key: sum(row[key] for row in expected.values())
        for key in ("agent_runs_count", "team_runs_count", "agent_sessions_count")
    }
    assert totals == {"agent_runs_count": 4, "team_runs_count": 4, "agent_sessions_count": 3}
    assert pipeline.ingest_counter("dead_lettered") == 0


def test_member_runs_carry_their_parent_and_metrics_under_agno_names(
    broker: Any, tmp_path: Path
) -> None:
    broker.declare_queue()
    publisher = Publisher(
        PublisherConfig(
            url=broker.url,
            exchange=broker.exchange,
            spool_dir=tmp_path / "spool",
            close_at_exit=False,
        )
    )
    member = Agent(
        id="writer",
        model=ScriptedModel(
            id="m-1", provider="P", script=[Step("text", input_tokens=11, output_tokens=3)]
        ),
    )
    team = Team(
        id="editors",
        members=[member],
        model=ScriptedModel(
            id="lead-1",
            provider="P",
            script=[
                delegate("writer", "write", 20, 4),
                Step("ok", input_tokens=30, output_tokens=6),
            ],
        ),
    )
    # The member is instrumented on its own too: its run inside the team is still published
    # once, by the team, with its parent.
    instrument(team, publisher=publisher, source="agno://parent-test")
    instrument(member, publisher=publisher, source="agno://parent-test")
    output = team.run("go", user_id="erin", session_id="session-e1")
    assert publisher.flush(30)
    publisher.close()

    received = broker.drain()
    runs = {e["data"]["run_id"]: e for e in received if e["type"] == "agentos.run.completed"}
    sessions = [e for e in received if e["type"] == "agentos.session.created"]
    member_run = output.member_responses[0]
    assert sorted(e["data"]["run_id"] for e in received if "run" in e["type"]) == sorted(
        [output.run_id, member_run.run_id]
    )
    assert runs[member_run.run_id]["data"]["parent_run_id"] == output.run_id
    assert runs[member_run.run_id]["data"]["session_type"] == "team"
    assert runs[member_run.run_id]["data"]["agent_id"] == "writer"
    team_event = runs[output.run_id]["data"]
    assert team_event["model"] == "lead-1"
    assert team_event["model_provider"] == "P"
    assert team_event["status"] == "COMPLETED"
    assert team_event["team_id"] == "editors"
    assert team_event["user_id"] == "erin"
    metrics = team_event["metrics"]
    assert (metrics["input_tokens"], metrics["output_tokens"], metrics["total_tokens"]) == (
        50,
        10,
        60,
    )
    assert metrics["duration"] > 0
    assert "time_to_first_token" in metrics
    assert [e["data"]["session_id"] for e in sessions] == ["session-e1"]
    assert sessions[0]["data"]["session_type"] == "team"
    # The run's time is its creation in Agno, so a backfill publishes the very same event.
    assert runs[output.run_id]["time"] == datetime.fromtimestamp(output.created_at, UTC).isoformat()


def test_workflow_steps_publish_under_the_workflow_session(broker: Any, tmp_path: Path) -> None:
    broker.declare_queue()
    publisher = Publisher(
        PublisherConfig(
            url=broker.url,
            exchange=broker.exchange,
            spool_dir=tmp_path / "spool",
            close_at_exit=False,
        )
    )
    first = Agent(
        id="drafter",
        model=ScriptedModel(
            id="m-a", provider="P", script=[Step("draft", input_tokens=5, output_tokens=1)]
        ),
    )
    second = Agent(
        id="reviewer",
        model=ScriptedModel(
            id="m-b", provider="P", script=[Step("review", input_tokens=7, output_tokens=2)]
        ),
    )
    db = SqliteDb(db_file=str(tmp_path / "agno.db"))
    workflow = Workflow(
        id="pipeline",
        db=db,
        steps=[WorkflowStep(name="draft", agent=first), WorkflowStep(name="review", agent=second)],
    )
    instrument(workflow, publisher=publisher, source="agno://workflow-test")
    output = workflow.run("go", user_id="frank", session_id="session-w1")
    assert publisher.flush(30)
    publisher.close()

    received = broker.drain()
    sessions = [e["data"] for e in received if e["type"] == "agentos.session.created"]
    runs = {
        e["data"]["run_id"]: e["data"] for e in received if e["type"] == "agentos.run.completed"
    }
    steps = [run.run_id for run in output.step_executor_runs or []]
    assert [(s["session_id"], s["session_type"], s["workflow_id"]) for s in sessions] == [
        ("session-w1", "workflow", "pipeline")
    ]
    assert set(runs) == {output.run_id, *steps}
    assert runs[output.run_id]["session_type"] == "workflow"
    assert "model" not in runs[output.run_id]
    assert [runs[step]["parent_run_id"] for step in steps] == [output.run_id] * 2
    assert [runs[step]["model"] for step in steps] == ["m-a", "m-b"]
    assert [runs[step]["metrics"]["total_tokens"] for step in steps] == [6, 9]

    # Agno's own metrics count the workflow run alone, with no model; the step runs' tokens are
    # in its session metrics (docs/agno-client.md).
    db.calculate_metrics()
    (agno,) = db.get_metrics()[0]
    assert (agno["workflow_sessions_count"], agno["workflow_runs_count"]) == (1, 1)
    assert agno["model_metrics"] == []
    assert agno["token_metrics"]["total_tokens"] == 15


def test_agentos_runs_over_http_are_published(broker: Any, tmp_path: Path) -> None:
    from agno.os import AgentOS
    from fastapi.testclient import TestClient

    broker.declare_queue()
    publisher = Publisher(
        PublisherConfig(
            url=broker.url,
            exchange=broker.exchange,
            spool_dir=tmp_path / "spool",
            close_at_exit=False,
        )
    )
    agent = Agent(
        id="os-agent",
        db=SqliteDb(db_file=str(tmp_path / "agno.db")),
        model=ScriptedModel(
            id="m-os", provider="P", script=[Step("hello", input_tokens=8, output_tokens=2)]
        ),
    )
    agent_os = AgentOS(agents=[agent])
    # One line for the whole AgentOS: every agent and team it serves.
    instrument(agent_os, publisher=publisher, source="agno://agentos-test")
    client = TestClient(agent_os.get_app())
    response = client.post(
        "/agents/os-agent/runs",
        data={"message": "hi", "user_id": "grace", "session_id": "session-o1", "stream": "false"},
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert publisher.flush(30)
    publisher.close()

    received = [(e["type"], e["data"]) for e in broker.drain()]
    assert [(kind, data["session_id"]) for kind, data in received] == [
        ("agentos.session.created", "session-o1"),
        ("agentos.run.completed", "session-o1"),
    ]
    run = received[1][1]
    assert (run["run_id"], run["user_id"], run["model"], run["metrics"]["total_tokens"]) == (
        run_id,
        "grace",
        "m-os",
        10,
    )


def test_agentos_with_background_hooks_publishes_member_runs_once(
    broker: Any, tmp_path: Path
) -> None:
    from agno.os import AgentOS
    from fastapi.testclient import TestClient

    broker.declare_queue()
    publisher = Publisher(
        PublisherConfig(
            url=broker.url,
            exchange=broker.exchange,
            spool_dir=tmp_path / "spool",
            close_at_exit=False,
        )
    )
    db = SqliteDb(db_file=str(tmp_path / "agno.db"))
    member = Agent(
        id="bg-member",
        db=db,
        model=ScriptedModel(
            id="m-member", provider="P", script=[Step("part", input_tokens=4, output_tokens=1)]
        ),
    )
    team = Team(
        id="bg-team",
        db=db,
        members=[member],
        model=ScriptedModel(
            id="m-lead",
            provider="P",
            script=[
                delegate("bg-member", "do", 6, 2),
                Step("all", input_tokens=9, output_tokens=3),
            ],
        ),
    )
    # The member is served on its own too, and hooks run as background tasks.
    agent_os = AgentOS(agents=[member], teams=[team], run_hooks_in_background=True)
    instrument(agent_os, publisher=publisher, source="agno://agentos-bg-test")
    client = TestClient(agent_os.get_app())
    response = client.post(
        "/teams/bg-team/runs",
        data={"message": "go", "user_id": "heidi", "session_id": "session-bg", "stream": "false"},
    )
    assert response.status_code == 200, response.text
    team_run_id = response.json()["run_id"]
    eventually(lambda: publisher.stats().accepted >= 3 or None, "the background hooks ran")
    assert publisher.flush(30)
    publisher.close()

    received = broker.drain()
    runs = [e["data"] for e in received if e["type"] == "agentos.run.completed"]
    assert sorted((run["session_type"], run.get("parent_run_id", "")) for run in runs) == [
        ("team", ""),
        ("team", team_run_id),
    ]
    assert [e["data"]["session_type"] for e in received if "session" in e["type"]] == ["team"]
