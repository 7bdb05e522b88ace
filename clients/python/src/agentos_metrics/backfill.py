"""History import: every session and run an Agno database holds, published as events.

The database is read through Agno's own storage classes (`SqliteDb`, `PostgresDb`) and its
`get_sessions`, so the import follows Agno's schema (a separate runs table since Agno 3, the
legacy `runs` column before) as Agno changes it. Sessions are read in pages in creation order;
after each page the publisher's confirms are awaited and a checkpoint (the creation time reached
and the sessions done at that time) is written to the state file, so an interrupted import
resumes after the last confirmed page. Event ids derive from session and run ids: importing
twice, or importing what the live integration already published under the same `source`,
publishes duplicates that the system ignores.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from agentos_metrics.agno import member_runs, run_event
from agentos_metrics.events import SessionType, session_created
from agentos_metrics.publisher import Publisher

_SESSION_TYPES: dict[str, SessionType] = {
    "AgentSession": "agent",
    "TeamSession": "team",
    "WorkflowSession": "workflow",
}


class BackfillError(Exception):
    """The import cannot go on (the database cannot be opened or read, the broker never
    confirmed a page)."""


@dataclass
class BackfillOptions:
    """What to import and from where (the command line's options)."""

    db_url: str
    source: str
    since: datetime | None = None
    until: datetime | None = None
    session_table: str | None = None
    runs_table: str | None = None
    db_schema: str | None = None
    page_size: int = 200
    state_file: Path | None = None
    confirm_timeout_s: float = 120.0


@dataclass
class BackfillReport:
    """What the import published."""

    sessions: int = 0
    runs: int = 0
    resumed: bool = False
    by_type: dict[str, int] = field(default_factory=dict)


def open_db(options: BackfillOptions) -> Any:
    """An Agno storage object for `options.db_url`: `SqliteDb` for `sqlite:` URLs,
    `PostgresDb` for `postgres:` / `postgresql:` ones (psycopg 3 driver).
    """
    url = options.db_url
    scheme = url.split(":", 1)[0].lower()
    try:
        if scheme.startswith("sqlite"):
            from agno.db.sqlite import SqliteDb

            return SqliteDb(
                db_url=url, session_table=options.session_table, runs_table=options.runs_table
            )
        if scheme.startswith("postgres"):
            from agno.db.postgres import PostgresDb

            rest = url.split("://", 1)[1]
            return PostgresDb(
                db_url=f"postgresql+psycopg://{rest}",
                db_schema=options.db_schema,
                session_table=options.session_table,
                runs_table=options.runs_table,
            )
    except ImportError as err:
        raise BackfillError(
            f"opening the database needs a driver: {err} "
            "(PostgreSQL: pip install 'agentos-metrics[postgres]')"
        ) from err
    raise BackfillError(f"unsupported database URL scheme `{scheme}` (sqlite or postgresql)")


def default_state_file(options: BackfillOptions) -> Path:
    """`.agentos-metrics-backfill-<hash>.json` in the working directory: one per database,
    tables, source and time range, so a different import never resumes from it.
    """
    key = "|".join(
        str(part)
        for part in (
            options.db_url,
            options.session_table,
            options.runs_table,
            options.db_schema,
            options.source,
            options.since,
            options.until,
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(f".agentos-metrics-backfill-{digest}.json")


@dataclass
class _Checkpoint:
    created_at: int | None = None
    done_at_created_at: list[str] = field(default_factory=list)
    sessions: int = 0
    runs: int = 0
    finished: bool = False

    @classmethod
    def load(cls, path: Path) -> _Checkpoint:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            raise BackfillError(f"reading the state file {path}") from err
        return cls(
            created_at=data.get("created_at"),
            done_at_created_at=list(data.get("done_at_created_at", [])),
            sessions=int(data.get("sessions", 0)),
            runs=int(data.get("runs", 0)),
            finished=bool(data.get("finished", False)),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        os.replace(tmp, path)


def _timestamp(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    """A date (`2025-07-01`, the whole UTC day) or an ISO 8601 date-time (UTC when no offset)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if end_of_day:
                moment = moment.replace(hour=23, minute=59, second=59)
            return moment
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise BackfillError(f"`{text}` is not a date or an ISO 8601 date-time") from err
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def session_events(session: Any, source: str) -> tuple[list[dict[str, Any]], int]:
    """The events of one stored session: its `session.created`, then one `run.completed` per
    run it holds (member runs included, each once); also returns the number of runs.
    """
    session_type = _SESSION_TYPES.get(type(session).__name__)
    if session_type is None:
        raw = getattr(session, "session_type", None)
        session_type = _SESSION_TYPES.get(str(raw), "agent")
    session_id = str(session.session_id)
    user_id = getattr(session, "user_id", None)
    events = [
        session_created(
            source=source,
            session_id=session_id,
            session_type=session_type,
            time=getattr(session, "created_at", None),
            user_id=user_id,
            agent_id=getattr(session, "agent_id", None),
            team_id=getattr(session, "team_id", None),
            workflow_id=getattr(session, "workflow_id", None),
        )
    ]
    seen: set[str] = set()
    runs: list[tuple[Any, str | None]] = []
    for run in getattr(session, "runs", None) or []:
        runs.append((run, None))
        runs.extend(member_runs(run))
        for nested in getattr(run, "step_executor_runs", None) or []:
            runs.append((nested, str(run.run_id)))
    for run, parent in runs:
        run_id = getattr(run, "run_id", None)
        if run_id is None or str(run_id) in seen:
            continue
        seen.add(str(run_id))
        events.append(
            run_event(
                run,
                source=source,
                session_id=session_id,
                session_type=session_type,
                user_id=user_id,
                parent_run_id=parent,
            )
        )
    return events, len(seen)


def _page(db: Any, options: BackfillOptions, start: int | None, page: int) -> list[Any]:
    sessions = db.get_sessions(
        start_timestamp=start,
        end_timestamp=_timestamp(options.until),
        sort_by="created_at",
        sort_order="asc",
        limit=options.page_size,
        page=page,
        deserialize=True,
    )
    return list(sessions or [])


def count_sessions(db: Any, options: BackfillOptions, start: int | None) -> int:
    """How many sessions the import reads from `start` on (for the progress bar)."""
    _, total = db.get_sessions(
        start_timestamp=start,
        end_timestamp=_timestamp(options.until),
        limit=1,
        page=1,
        deserialize=False,
        include_runs=False,
    )
    return int(total)


def backfill(
    options: BackfillOptions,
    publisher: Publisher,
    progress: Callable[[int, int, int], None] | None = None,
) -> BackfillReport:
    """Publishes every session and run of the database (resuming from the state file), waiting
    for the broker's confirms after each page; returns what it published this time.

    `progress(sessions_done, sessions_total, runs_done)` is called after each page.
    """
    state_path = options.state_file or default_state_file(options)
    checkpoint = _Checkpoint.load(state_path)
    if checkpoint.finished:
        # A finished import starts over: publishing again is harmless (same event ids) and
        # picks up what was stored since.
        checkpoint = _Checkpoint()
    report = BackfillReport(resumed=checkpoint.created_at is not None)
    db = open_db(options)
    start = (
        checkpoint.created_at if checkpoint.created_at is not None else _timestamp(options.since)
    )
    prior_sessions, prior_runs = checkpoint.sessions, checkpoint.runs
    try:
        total = count_sessions(db, options, start)
        done_here = set(checkpoint.done_at_created_at)
        processed = 0
        if progress:
            progress(0, total, 0)
        # Keyset pages: each page starts at the creation time reached, skipping the sessions
        # already done at that time; only a page made entirely of those (more sessions created
        # in one second than a page holds) moves on by offset.
        page = 1
        while True:
            sessions = _page(db, options, start, page)
            fresh = 0
            for session in sessions:
                created_at = getattr(session, "created_at", None)
                sid = str(session.session_id)
                if created_at == checkpoint.created_at and sid in done_here:
                    continue
                fresh += 1
                processed += 1
                events, runs = session_events(session, options.source)
                for event in events:
                    publisher.publish(event)
                report.sessions += 1
                report.runs += runs
                kind = events[0]["data"]["session_type"]
                report.by_type[kind] = report.by_type.get(kind, 0) + 1
                if created_at is not None and created_at != checkpoint.created_at:
                    checkpoint.created_at = int(created_at)
                    checkpoint.done_at_created_at = []
                    done_here = set()
                checkpoint.done_at_created_at.append(sid)
                done_here.add(sid)
            if fresh:
                if not publisher.flush(options.confirm_timeout_s):
                    raise BackfillError(
                        "the broker did not confirm the events of a page in time; "
                        "run the command again to resume"
                    )
                checkpoint.sessions = prior_sessions + report.sessions
                checkpoint.runs = prior_runs + report.runs
                checkpoint.save(state_path)
                if progress:
                    progress(min(processed, total), total, report.runs)
            if len(sessions) < options.page_size:
                break
            if fresh:
                start, page = checkpoint.created_at, 1
            else:
                page += 1
    except BackfillError:
        raise
    except Exception as err:
        raise BackfillError(f"reading the Agno database ({type(err).__name__}: {err})") from err
    checkpoint.finished = True
    checkpoint.save(state_path)
    return report


def progress_bar(stream: Any = None) -> Callable[[int, int, int], None]:
    """A one-line progress bar on stderr (rewritten in place on a terminal)."""
    out = stream or sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())

    def show(done: int, total: int, runs: int) -> None:
        width = 30
        filled = width if total == 0 else min(width, width * done // max(total, 1))
        percent = 100 if total == 0 else min(100, 100 * done // max(total, 1))
        line = (
            f"backfill [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% "
            f"{done}/{total} sessions, {runs} runs"
        )
        out.write(("\r" + line) if tty else line + "\n")
        if tty and done >= total:
            out.write("\n")
        out.flush()

    return show
