"""The on-disk spool: events that could not reach the broker, kept in order until they can.

Layout: `<directory>/slot-<n>/` holds a `lock` file and segment files
`<nanoseconds>-<sequence>.spool`, one event a line (`<routing key>\\t<JSON body>`). A process
takes the first slot whose lock it can hold (`flock`), so several processes of one application
never write the same files; at start it adopts the segments of every slot nobody holds (an
application that stopped with events still spooled), so a restart replays them. Segments are
replayed oldest first and removed only after the broker confirmed every event in them: a crash
during a replay publishes part of a segment twice, which the deterministic event ids make
harmless.

Appends are flushed and `fsync`ed before they count as spooled, so a crash of the application
after that loses nothing. A line cut short by such a crash is skipped on replay and counted.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SEGMENT_SUFFIX = ".spool"


@dataclass(frozen=True)
class SpooledMessage:
    """One event as it waits in the spool: its routing key and its JSON body."""

    routing_key: str
    body: bytes


class Spool:
    """A bounded, ordered, crash-safe queue of events on disk, owned by one process."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 1 << 20) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._sequence = 0
        self._current: IO[bytes] | None = None
        self._current_path: Path | None = None
        self._current_size = 0
        self.corrupt_lines = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._slot, self._lock_file = _take_slot(directory)
        self._adopt(directory)
        self._segments: list[Path] = sorted(
            self._slot.glob(f"*{SEGMENT_SUFFIX}"), key=_segment_order
        )
        self._size = sum(path.stat().st_size for path in self._segments)

    @property
    def path(self) -> Path:
        """The slot this process writes to."""
        return self._slot

    def size_bytes(self) -> int:
        """Bytes spooled and not yet confirmed by the broker."""
        with self._lock:
            return self._size

    def is_empty(self) -> bool:
        """Whether no event is waiting."""
        with self._lock:
            return not self._segments

    def append(self, messages: list[SpooledMessage]) -> int:
        """Writes `messages` in order, as many as fit under the size limit; returns how many.

        The written ones are on disk (`fsync`) when this returns.
        """
        written = 0
        with self._lock:
            for message in messages:
                line = message.routing_key.encode() + b"\t" + message.body + b"\n"
                if self._size + len(line) > self._max_bytes:
                    break
                if self._current is None or self._current_size >= self._segment_bytes:
                    self._rotate()
                assert self._current is not None
                self._current.write(line)
                self._current_size += len(line)
                self._size += len(line)
                written += 1
            if self._current is not None and written:
                self._current.flush()
                os.fsync(self._current.fileno())
        return written

    def oldest(self) -> tuple[Path, list[SpooledMessage]] | None:
        """The oldest segment and its events, or None when the spool is empty.

        The segment being written is closed first, so later appends go to a new one.
        """
        with self._lock:
            if not self._segments:
                return None
            path = self._segments[0]
            if path == self._current_path:
                self._close_current()
            data = path.read_bytes()
        messages: list[SpooledMessage] = []
        for line in data.split(b"\n"):
            if not line:
                continue
            key, tab, body = line.partition(b"\t")
            if not tab or not body.startswith((b"{", b"[")) or not body.endswith((b"}", b"]")):
                self.corrupt_lines += 1
                continue
            messages.append(SpooledMessage(key.decode(errors="replace"), body))
        return path, messages

    def remove(self, path: Path) -> None:
        """Drops a segment whose events the broker confirmed."""
        with self._lock:
            if path in self._segments:
                self._segments.remove(path)
                self._size -= path.stat().st_size
                path.unlink()

    def close(self) -> None:
        """Closes the segment being written and releases the slot."""
        with self._lock:
            self._close_current()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def _rotate(self) -> None:
        self._close_current()
        self._sequence += 1
        path = self._slot / f"{time.time_ns():020d}-{self._sequence:08d}{SEGMENT_SUFFIX}"
        self._current = path.open("ab")
        self._current_path = path
        self._current_size = 0
        self._segments.append(path)

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
        self._current = None
        self._current_path = None
        self._current_size = 0

    def _adopt(self, directory: Path) -> None:
        """Moves into this slot the segments of every slot no running process holds."""
        for slot in sorted(directory.glob("slot-*")):
            if slot == self._slot:
                continue
            try:
                lock = (slot / "lock").open("a+b")
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                for segment in slot.glob(f"*{SEGMENT_SUFFIX}"):
                    segment.rename(self._slot / segment.name)
            finally:
                lock.close()


def _segment_order(path: Path) -> tuple[int, int]:
    stamp, _, sequence = path.stem.partition("-")
    try:
        return int(stamp), int(sequence)
    except ValueError:
        return 0, 0


def _take_slot(directory: Path) -> tuple[Path, IO[bytes]]:
    index = 0
    while True:
        slot = directory / f"slot-{index}"
        slot.mkdir(exist_ok=True)
        lock = (slot / "lock").open("a+b")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            index += 1
            continue
        return slot, lock
