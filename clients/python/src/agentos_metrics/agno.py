"""Agno integration: one post-hook that publishes every run and the sessions they belong to.

`instrument(target)` appends a `MetricsHook` to the `post_hooks` of an `Agent` or a `Team`, to
those of every agent and team an `AgentOS` serves, and to the agents and teams in the steps of a
`Workflow` (Agno 3.1 offers no post-hook on a workflow itself: a step's hook publishes the step
run under the workflow's session with the workflow run as parent, and the workflow run once, when
its first step finishes). Post-hooks are Agno's supported
extension point for work after a run: they receive the finished `RunOutput` / `TeamRunOutput` with
its metrics, the session and the user.

For each run the hook publishes, through the `Publisher` (so without waiting on the broker):

- `agentos.session.created` the first time this process sees the session (the event id derives
  from the session id, so a second process or a restart publishing it again is a duplicate);
- `agentos.run.completed` for the run, and for every member run of a team run (with
  `parent_run_id`, counted under the team's session), carrying the run's own metrics under Agno's
  names (`RunMetrics.to_dict()`: tokens, `cost`, `duration`, `time_to_first_token`, per-model
  `details`), the model id and provider, the user, the session type, the run status and the
  agent, team and workflow ids.

A member agent's own hook (when the same agent is also instrumented on its own) leaves its runs
inside a team run to the team's hook, which knows the parent: a team's pre-hook marks the team
run as in progress in the current context (`contextvars`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections import OrderedDict
from typing import Any

from agentos_metrics.events import SessionType, run_completed, session_created
from agentos_metrics.publisher import Publisher

log = logging.getLogger("agentos_metrics")

DEFAULT_SOURCE = "agno://app"

# Set by a team's pre-hook for the duration of the team run: member runs inside it are
# published by the team's post-hook, which knows their parent.
_team_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentos_metrics_team_run", default=None
)

_default_publisher: Publisher | None = None
_default_lock = threading.Lock()


def default_publisher() -> Publisher:
    """The process-wide publisher, created on first use from the environment."""
    global _default_publisher
    with _default_lock:
        if _default_publisher is None:
            _default_publisher = Publisher()
        return _default_publisher


def default_source() -> str:
    """`AGENTOS_METRICS_SOURCE`, else `agno://app`: the CloudEvents `source` of this application."""
    return os.environ.get("AGENTOS_METRICS_SOURCE") or DEFAULT_SOURCE


def _value(obj: Any, name: str) -> Any:
    return getattr(obj, name, None)


def _status(run: Any, *, finishing: bool) -> str | None:
    status = _value(run, "status")
    value = _value(status, "value") or status
    if value is None:
        return None
    text = str(value)
    # A post-hook runs on the success path just before Agno marks the run completed.
    if finishing and text.upper() == "RUNNING":
        return "COMPLETED"
    return text.upper()


def metrics_of(run: Any, *, finishing: bool = False) -> dict[str, Any]:
    """A run's metrics as Agno reports them (`to_dict()`); while the run is still finishing
    (inside its post-hook) the duration so far stands in for the not yet stopped timer.
    """
    metrics = _value(run, "metrics")
    if metrics is None:
        return {}
    to_dict = getattr(metrics, "to_dict", None)
    data: dict[str, Any] = dict(to_dict()) if callable(to_dict) else dict(vars(metrics))
    if finishing and data.get("duration") is None:
        timer = _value(metrics, "timer")
        elapsed = _value(timer, "elapsed")
        if isinstance(elapsed, int | float):
            data["duration"] = float(elapsed)
    return data


def run_event(
    run: Any,
    *,
    source: str,
    session_id: str,
    session_type: SessionType,
    user_id: str | None,
    parent_run_id: str | None = None,
    finishing: bool = False,
) -> dict[str, Any]:
    """The `agentos.run.completed` event of an Agno `RunOutput` / `TeamRunOutput`."""
    return run_completed(
        source=source,
        run_id=str(run.run_id),
        session_id=session_id,
        session_type=session_type,
        time=_value(run, "created_at"),
        user_id=_value(run, "user_id") or user_id,
        parent_run_id=parent_run_id or _value(run, "parent_run_id"),
        model=_value(run, "model"),
        model_provider=_value(run, "model_provider"),
        metrics=metrics_of(run, finishing=finishing),
        extra={
            "status": _status(run, finishing=finishing),
            "agent_id": _value(run, "agent_id"),
            "agent_name": _value(run, "agent_name"),
            "team_id": _value(run, "team_id"),
            "team_name": _value(run, "team_name"),
            "workflow_id": _value(run, "workflow_id"),
            "workflow_step_id": _value(run, "workflow_step_id"),
            "created_at": _value(run, "created_at"),
        },
    )


def member_runs(run: Any) -> list[tuple[Any, str]]:
    """Every member run below a team run, depth first, with the run id of its parent."""
    found: list[tuple[Any, str]] = []
    for member in _value(run, "member_responses") or []:
        if _value(member, "run_id") is None:
            continue
        found.append((member, str(run.run_id)))
        found.extend(member_runs(member))
    return found


class MetricsHook:
    """An Agno post-hook (and, on a team, pre-hook) publishing runs and sessions.

    Create it through `instrument`; one instance may serve many agents and teams.
    """

    def __init__(
        self,
        publisher: Publisher | None = None,
        source: str | None = None,
        sessions_remembered: int = 100_000,
    ) -> None:
        self.publisher = publisher or default_publisher()
        self.source = source or default_source()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = sessions_remembered
        self._lock = threading.Lock()

    # Agno passes the arguments a hook names (agno.utils.hooks.filter_hook_args).
    def __call__(
        self,
        run_output: Any,
        session: Any = None,
        user_id: str | None = None,
        agent: Any = None,
        team: Any = None,
        run_context: Any = None,
    ) -> None:
        try:
            self._publish_run(
                run_output, session, user_id, agent=agent, team=team, run_context=run_context
            )
        except Exception:
            # Metrics must never fail the application's run (and Agno would only log it).
            log.exception("agentos-metrics: could not publish a run")

    def team_started(self, run_context: Any = None, team: Any = None) -> None:
        """The team's pre-hook: marks the team run as in progress in this context."""
        run_id = _value(run_context, "run_id")
        if team is not None and _value(team, "parent_team_id") is None and run_id:
            _team_run.set(str(run_id))

    def _publish_run(
        self,
        run: Any,
        session: Any,
        user_id: str | None,
        *,
        agent: Any,
        team: Any,
        run_context: Any,
    ) -> None:
        if team is not None:
            if _value(team, "parent_team_id") is not None:
                return  # a nested team: its parent team's hook publishes it
            _team_run.set(None)
            session_type: SessionType = "team"
        else:
            if _is_member_run(agent):
                return  # a member run: the team's hook publishes it with its parent
            session_type = "agent"
        session_id = str(_value(run, "session_id") or _value(session, "session_id"))
        user = _value(run, "user_id") or user_id or _value(session, "user_id")
        # A step of a workflow: Agno runs it in the workflow's session, with the workflow's run
        # id in the run context (Agno 3.1 has no post-hook on the workflow run itself).
        workflow_id = _value(run_context, "workflow_id") or _value(run, "workflow_id")
        workflow_run_id = _value(run_context, "run_id") if workflow_id else None
        parent: str | None = None
        if workflow_id:
            session_type = "workflow"
            if workflow_run_id and str(workflow_run_id) != str(run.run_id):
                parent = str(workflow_run_id)
        if self._first_time(session_id):
            self.publisher.publish(
                session_created(
                    source=self.source,
                    session_id=session_id,
                    session_type=session_type,
                    time=_value(session, "created_at") or _value(run, "created_at"),
                    user_id=user,
                    agent_id=_value(session, "agent_id") or _value(agent, "id"),
                    team_id=_value(session, "team_id") or _value(team, "id"),
                    workflow_id=workflow_id or _value(session, "workflow_id"),
                )
            )
        if parent is not None and self._first_time(f"run/{parent}"):
            # The workflow run, once, when its first step finishes: it has no model and no
            # tokens of its own (its steps carry them), and Agno stores and counts it as a run.
            self.publisher.publish(
                run_completed(
                    source=self.source,
                    run_id=parent,
                    session_id=session_id,
                    session_type="workflow",
                    time=_value(run, "created_at"),
                    user_id=user,
                    extra={"workflow_id": workflow_id},
                )
            )
        self.publisher.publish(
            run_event(
                run,
                source=self.source,
                session_id=session_id,
                session_type=session_type,
                user_id=user,
                parent_run_id=parent,
                finishing=True,
            )
        )
        for member, parent in member_runs(run):
            self.publisher.publish(
                run_event(
                    member,
                    source=self.source,
                    session_id=session_id,
                    session_type=session_type,
                    user_id=user,
                    parent_run_id=parent,
                )
            )

    def _first_time(self, session_id: str) -> bool:
        with self._lock:
            if session_id in self._seen:
                self._seen.move_to_end(session_id)
                return False
            self._seen[session_id] = None
            if len(self._seen) > self._seen_max:
                self._seen.popitem(last=False)
            return True


def _is_member_run(agent: Any) -> bool:
    """Whether `agent` runs as a member of an instrumented team right now."""
    return _value(agent, "team_id") is not None and _team_run.get() is not None


def _attach(component: Any, hook: MetricsHook) -> None:
    hooks = list(_value(component, "post_hooks") or [])
    if any(isinstance(existing, MetricsHook) for existing in hooks):
        return
    hooks.append(hook)
    component.post_hooks = hooks
    if hasattr(component, "members"):
        pre = list(_value(component, "pre_hooks") or [])
        pre.append(hook.team_started)
        component.pre_hooks = pre


def _components(target: Any) -> list[Any]:
    """The agents and teams `target` stands for (itself, an AgentOS's, a workflow's steps')."""
    if hasattr(target, "post_hooks"):
        return [target]
    found: list[Any] = []
    for name in ("agents", "teams", "workflows"):
        for item in _value(target, name) or []:
            found.extend(_components(item))
    steps = _value(target, "steps")
    if isinstance(steps, list | tuple):
        for step in steps:
            found.extend(_components(step))
    for name in ("agent", "team", "executor"):
        item = _value(target, name)
        if item is not None and item is not target:
            found.extend(_components(item))
    return found


def instrument(
    target: Any,
    *,
    publisher: Publisher | None = None,
    source: str | None = None,
) -> Any:
    """Publishes the runs and sessions of `target` (an Agno `Agent`, `Team`, `Workflow` or
    `AgentOS`) to AgentOS Metrics; returns `target`.

    `publisher` defaults to a process-wide `Publisher` configured from the environment
    (`AGENTOS_METRICS_AMQP_URL`, ...); `source` to `AGENTOS_METRICS_SOURCE` or `agno://app`.
    Instrumenting a target that already has a `MetricsHook` leaves it as it is.
    """
    hook = MetricsHook(publisher=publisher, source=source)
    components = _components(target)
    if not components:
        raise TypeError(f"{type(target).__name__} has no agents or teams to instrument")
    for component in components:
        _attach(component, hook)
    return target
