"""`agentos-metrics`: the command line (`backfill`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agentos_metrics.agno import default_source
from agentos_metrics.backfill import (
    BackfillError,
    BackfillOptions,
    backfill,
    parse_moment,
    progress_bar,
)
from agentos_metrics.publisher import Publisher, PublisherConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentos-metrics", description="Publish Agno runs and sessions to AgentOS Metrics."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fill = commands.add_parser(
        "backfill",
        help="publish every session and run stored in an Agno database",
        description=(
            "Reads an Agno database (SQLite or PostgreSQL) through Agno's storage classes and "
            "publishes every stored session and run. Resumable (a state file records the last "
            "confirmed page) and idempotent (event ids derive from session and run ids)."
        ),
    )
    fill.add_argument(
        "--db-url",
        required=True,
        help="the Agno database: sqlite:///path/agno.db or postgresql://user:pass@host:5432/db",
    )
    fill.add_argument(
        "--since", help="only sessions created at or after this date or ISO date-time (UTC)"
    )
    fill.add_argument(
        "--until", help="only sessions created at or before this date (the whole day) or date-time"
    )
    fill.add_argument("--session-table", help="Agno's sessions table (default: Agno's)")
    fill.add_argument("--runs-table", help="Agno's runs table (default: Agno's)")
    fill.add_argument("--db-schema", help="PostgreSQL schema of Agno's tables (default: Agno's)")
    fill.add_argument(
        "--source",
        default=None,
        help="CloudEvents source; use the live integration's (AGENTOS_METRICS_SOURCE, default agno://app)",
    )
    fill.add_argument(
        "--amqp-url", help="RabbitMQ URL (default: AGENTOS_METRICS_AMQP_URL or the local broker)"
    )
    fill.add_argument(
        "--exchange", help="exchange (default: AGENTOS_METRICS_EXCHANGE or agentos.events)"
    )
    fill.add_argument("--page-size", type=int, default=200, help="sessions per page (default 200)")
    fill.add_argument(
        "--state-file",
        type=Path,
        help="checkpoint file (default: .agentos-metrics-backfill-<hash>.json here)",
    )
    fill.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        options = BackfillOptions(
            db_url=args.db_url,
            source=args.source or default_source(),
            since=parse_moment(args.since) if args.since else None,
            until=parse_moment(args.until, end_of_day=True) if args.until else None,
            session_table=args.session_table,
            runs_table=args.runs_table,
            db_schema=args.db_schema,
            page_size=args.page_size,
            state_file=args.state_file,
        )
    except BackfillError as err:
        print(f"agentos-metrics: {err}", file=sys.stderr)
        return 2
    defaults = PublisherConfig()
    config = PublisherConfig(
        url=args.amqp_url or defaults.url,
        exchange=args.exchange or defaults.exchange,
        # The state file is the import's memory: without a broker it stops and resumes later,
        # rather than spooling a whole history to disk.
        spool_dir=None,
        buffer_size=max(10_000, 4 * args.page_size * 50),
        close_at_exit=False,
    )
    publisher = Publisher(config)
    try:
        report = backfill(options, publisher, None if args.no_progress else progress_bar())
    except BackfillError as err:
        print(f"agentos-metrics: backfill stopped: {err}", file=sys.stderr)
        return 1
    finally:
        publisher.close(timeout=30)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(report.by_type.items()))
    print(
        f"backfill: published {report.sessions} sessions ({kinds or 'none'}) and {report.runs} runs"
        + (" (resumed)" if report.resumed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
