"""Agno's own client as the judge (agentos-compat.md): AgentOSClient.get_metrics,
refresh_metrics and get_metrics_refresh_status against the real services, with the security key
and with RS256 JWTs, every answer parsed into Agno's own response models."""

import datetime as dt

import httpx
import pytest
from agno.client import AgentOSClient
from agno.os.routers.metrics.schemas import (
    DayAggregatedMetrics,
    MetricsRefreshResponse,
    MetricsRefreshStatusResponse,
    MetricsResponse,
)

from conftest import (
    KeyPair,
    bearer,
    call,
    event,
    get_json,
    publish,
    today_minus,
    wait_for,
)

DAY_A = today_minus(3)
DAY_B = today_minus(2)


def at(day, hour):
    return f"{day.isoformat()}T{hour:02d}:00:00Z"


def run(run_id, session_id, session_type, day, hour, user=None, model=None, tokens=(0, 0), cost=0):
    data = {
        "run_id": run_id,
        "session_id": session_id,
        "session_type": session_type,
        "metrics": {"input_tokens": tokens[0], "output_tokens": tokens[1], "cost": cost},
    }
    if user is not None:
        data["user_id"] = user
    if model is not None:
        data["model"], data["model_provider"] = model
    return event(f"run-{run_id}", "run.completed", at(day, hour), data)


def session(session_id, session_type, day, hour, user=None):
    data = {"session_id": session_id, "session_type": session_type}
    if user is not None:
        data["user_id"] = user
    return event(f"session-{session_id}", "session.created", at(day, hour), data)


EVENTS = [
    session("s-alice", "agent", DAY_A, 9, user="alice"),
    run("r-alice-1", "s-alice", "agent", DAY_A, 10, "alice", ("gpt-4o", "OpenAI"), (100, 50), 0.25),
    run("r-alice-2", "s-alice", "agent", DAY_B, 10, "alice", ("gpt-4o", "OpenAI"), (10, 5), 0.5),
    run("r-bob-1", "s-bob", "team", DAY_A, 11, "bob", ("claude", "Anthropic"), (7, 3), 0.125),
    session("s-nobody", "workflow", DAY_B, 12),
    run("r-nobody-1", "s-nobody", "workflow", DAY_B, 13, None, None, (1, 1), 0),
]

# (date, agent/team/workflow runs, agent/team/workflow sessions, users_count)
ALL_USERS = [(DAY_A, (1, 1, 0), (1, 1, 0), 2), (DAY_B, (1, 0, 1), (0, 0, 1), 1)]
ALICE = [(DAY_A, (1, 0, 0), (1, 0, 0), 1), (DAY_B, (1, 0, 0), (0, 0, 0), 1)]
BOB = [(DAY_A, (0, 1, 0), (0, 1, 0), 1)]
NOBODY = [(DAY_B, (0, 0, 1), (0, 0, 1), 0)]


def counts(rows):
    return [
        (
            row.date.date(),
            (row.agent_runs_count, row.team_runs_count, row.workflow_runs_count),
            (row.agent_sessions_count, row.team_sessions_count, row.workflow_sessions_count),
            row.users_count,
        )
        for row in rows
    ]


@pytest.fixture(scope="module")
def loaded(system):
    publish(system["exchange"], EVENTS)
    key = {"Authorization": f"Bearer {system['security_key']}"}

    def runs_counted():
        body = get_json(system["base_url"], "/metrics", key)
        total = sum(
            row["agent_runs_count"] + row["team_runs_count"] + row["workflow_runs_count"]
            for row in body["metrics"]
        )
        return total == 4 and sum(row["users_count"] for row in body["metrics"]) == 3

    wait_for(runs_counted, "ingest counted the published events")
    return system


@pytest.fixture(scope="module")
def client(loaded):
    return AgentOSClient(base_url=loaded["base_url"], timeout=30)


@pytest.fixture(scope="module")
def key(loaded):
    return bearer(loaded["security_key"])


def per_user(loaded, headers, user_id):
    """GET /metrics?user_id= (AgentOSClient.get_metrics has no user_id argument), parsed into
    Agno's MetricsResponse all the same."""
    response = httpx.get(
        loaded["base_url"] + "/metrics", params={"user_id": user_id}, headers=headers, timeout=30
    )
    response.raise_for_status()
    return MetricsResponse.model_validate(response.json())


def test_get_metrics_returns_every_users_rows_with_the_security_key(client, key):
    response = call(client.get_metrics(headers=key))
    assert isinstance(response, MetricsResponse)
    assert all(isinstance(row, DayAggregatedMetrics) for row in response.metrics)
    assert counts(response.metrics) == ALL_USERS
    first = response.metrics[0]
    assert first.model_metrics == [
        {"model_id": "claude", "model_provider": "Anthropic", "count": 1},
        {"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 1},
    ]
    assert first.token_metrics["input_tokens"] == 107
    assert first.token_metrics["cost"] == pytest.approx(0.375)
    assert response.updated_at is not None and response.updated_at.tzinfo is not None
    assert first.date.tzinfo is not None and first.created_at <= first.updated_at

    ranged = call(client.get_metrics(starting_date=DAY_B, ending_date=DAY_B, headers=key))
    assert counts(ranged.metrics) == ALL_USERS[1:]


def test_per_user_rows_add_up_to_the_all_users_rows(loaded, client, key):
    users = {
        "alice": per_user(loaded, key, "alice"),
        "bob": per_user(loaded, key, "bob"),
        "": per_user(loaded, key, ""),
    }
    assert counts(users["alice"].metrics) == ALICE
    assert counts(users["bob"].metrics) == BOB
    assert counts(users[""].metrics) == NOBODY
    all_users = call(client.get_metrics(headers=key))
    for day in all_users.metrics:
        rows = [row for page in users.values() for row in page.metrics if row.date == day.date]
        for field in (
            "agent_runs_count",
            "team_runs_count",
            "workflow_runs_count",
            "agent_sessions_count",
            "team_sessions_count",
            "workflow_sessions_count",
        ):
            assert sum(getattr(row, field) for row in rows) == getattr(day, field), field
        for token in ("input_tokens", "output_tokens", "total_tokens"):
            assert sum(row.token_metrics[token] for row in rows) == day.token_metrics[token]
        assert all(row.id != day.id for row in rows)


def test_a_token_without_admin_reads_only_its_own_rows(loaded, client, keys):
    alice = bearer(keys.token("alice", ["metrics:read"]))
    response = call(client.get_metrics(headers=alice))
    assert counts(response.metrics) == ALICE
    # Naming another user (or none) changes nothing for a non-admin token.
    assert counts(per_user(loaded, alice, "bob").metrics) == ALICE
    bob = bearer(keys.token("bob", "metrics:read"))
    assert counts(call(client.get_metrics(headers=bob)).metrics) == BOB
    admin = bearer(keys.token("root", ["agent_os:admin"]))
    assert counts(call(client.get_metrics(headers=admin)).metrics) == ALL_USERS
    assert counts(per_user(loaded, admin, "bob").metrics) == BOB


def test_refresh_metrics_synchronously_returns_the_recounted_rows(client, keys, key):
    admin = bearer(keys.token("root", ["agent_os:admin"]))
    rows = call(client.refresh_metrics(headers=admin))
    assert isinstance(rows, list)
    assert all(isinstance(row, DayAggregatedMetrics) for row in rows)
    assert counts(rows) == ALL_USERS
    current = call(client.get_metrics(headers=key))
    assert [row.id for row in rows] == [row.id for row in current.metrics]

    writer = bearer(keys.token("alice", ["metrics:write"]))
    assert counts(call(client.refresh_metrics(headers=writer))) == ALICE

    status = call(client.get_metrics_refresh_status(headers=key))
    assert isinstance(status, MetricsRefreshStatusResponse)
    assert status.status == "completed" and status.error is None
    assert status.started_at <= status.finished_at
    assert status.finished_at.tzinfo == dt.timezone.utc


def test_refresh_metrics_in_the_background_completes(client, keys, key):
    admin = bearer(keys.token("root", "agent_os:admin"))
    response = call(client.refresh_metrics(background=True, headers=admin))
    assert isinstance(response, MetricsRefreshResponse)
    assert (response.status, response.message) == ("started", "Metrics refresh started in background")

    def completed():
        status = call(client.get_metrics_refresh_status(headers=key))
        assert isinstance(status, MetricsRefreshStatusResponse)
        assert status.status in ("running", "completed"), status
        return status if status.status == "completed" else None

    status = wait_for(completed, "the background refresh completed")
    assert status.error is None and status.finished_at is not None
    assert counts(call(client.get_metrics(headers=key)).metrics) == ALL_USERS


def test_a_table_never_refreshed_reports_idle(client, key):
    status = call(client.get_metrics_refresh_status(table="other_metrics", headers=key))
    assert isinstance(status, MetricsRefreshStatusResponse)
    assert (status.status, status.started_at, status.finished_at, status.error) == ("idle", None, None, None)


def status_error(coroutine):
    with pytest.raises(httpx.HTTPStatusError) as raised:
        call(coroutine)
    response = raised.value.response
    return response.status_code, response.json(), response.headers.get("www-authenticate")


def test_a_valid_token_without_the_scope_is_forbidden(client, keys):
    forbidden = (403, {"detail": "Insufficient permissions", "error_code": "FORBIDDEN"}, None)
    reader = bearer(keys.token("alice", ["metrics:read"]))
    writer = bearer(keys.token("alice", ["metrics:write"]))
    nothing = bearer(keys.token("alice", []))
    assert status_error(client.get_metrics(headers=nothing)) == forbidden
    assert status_error(client.refresh_metrics(headers=reader)) == forbidden
    assert status_error(client.refresh_metrics(background=True, headers=reader)) == forbidden
    assert status_error(client.get_metrics(headers=writer)) == forbidden
    assert status_error(client.get_metrics_refresh_status(headers=writer)) == forbidden


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong audience", "wrong key", "no audience", "no header", "garbage"],
)
def test_a_bad_token_is_unauthenticated(client, keys, case):
    admin = ["agent_os:admin"]
    headers = {
        "expired": lambda: bearer(keys.token("root", admin, expires_in=-120)),
        "wrong audience": lambda: bearer(keys.token("root", admin, audience="another-os")),
        "wrong key": lambda: bearer(KeyPair().token("root", admin)),
        "no audience": lambda: bearer(keys.token("root", admin, audience=None)),
        "no header": lambda: {},
        "garbage": lambda: bearer("not.a.jwt"),
    }[case]()
    for coroutine in (
        client.get_metrics(headers=headers),
        client.refresh_metrics(headers=headers),
        client.get_metrics_refresh_status(headers=headers),
    ):
        status, body, challenge = status_error(coroutine)
        assert (status, body["error_code"], challenge) == (401, "UNAUTHENTICATED", "Bearer")
