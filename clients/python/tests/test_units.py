"""Event construction and the spool file format, without services."""

from __future__ import annotations

from pathlib import Path

from agentos_metrics.events import event_id, run_completed, session_created
from agentos_metrics.spool import Spool, SpooledMessage


def test_event_ids_derive_from_the_subject_alone() -> None:
    first = run_completed(
        source="agno://a", run_id="r-1", session_id="s", session_type="agent", time=1
    )
    again = run_completed(
        source="agno://a",
        run_id="r-1",
        session_id="s",
        session_type="team",
        time=2,
        metrics={"input_tokens": 3},
    )
    assert first["id"] == again["id"] == event_id("agentos.run.completed", "r-1")
    session = session_created(source="agno://a", session_id="r-1", session_type="agent")
    assert session["id"] != first["id"]
    assert len(first["id"]) == 36


def test_time_is_rfc3339_utc_and_metrics_keep_only_valid_counts() -> None:
    event = run_completed(
        source="agno://a",
        run_id="r-2",
        session_id="s",
        session_type="agent",
        time=1_754_000_000,
        user_id="",
        model="",
        metrics={
            "input_tokens": 5,
            "output_tokens": -1,
            "reasoning_tokens": 1.5,
            "cost": None,
            "duration": 1.25,
            "details": {"model": [{"id": "gpt-4o"}]},
        },
    )
    assert event["time"] == "2025-07-31T22:13:20+00:00"
    assert event["data"] == {
        "run_id": "r-2",
        "session_id": "s",
        "session_type": "agent",
        "metrics": {"input_tokens": 5, "duration": 1.25, "details": {"model": [{"id": "gpt-4o"}]}},
    }


def test_spool_skips_a_line_cut_short_by_a_crash_and_keeps_the_rest_in_order(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    messages = [SpooledMessage("agentos.run.completed", b'{"n":%d}' % n) for n in range(3)]
    assert spool.append(messages) == 3
    spool.close()
    (segment,) = (tmp_path / "slot-0").glob("*.spool")
    with segment.open("ab") as file:
        file.write(b'agentos.run.completed\t{"n":')
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    oldest = reopened.oldest()
    assert oldest is not None
    assert oldest[1] == messages
    assert reopened.corrupt_lines == 1
    reopened.remove(oldest[0])
    assert reopened.is_empty()
    assert reopened.size_bytes() == 0


def test_spool_refuses_what_exceeds_its_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    message = SpooledMessage("agentos.session.created", b"{" + b"x" * 40 + b"}")
    assert spool.append([message, message, message]) == 1
