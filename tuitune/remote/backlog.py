"""What a viewer gets before it goes live: the first `lines` lines of the run's `events.jsonl`, in full or condensed.

The run server counts events under the lock its clients register under, so a client that registers when `lines`
events have been counted gets the events after them on its queue; the recorder writes each line before the server
counts its event, so those `lines` lines are on disk. `full` sends them byte for byte (what scripts that want every
line ask for); `condensed` sends what a first frame needs, read from the recorder's snapshot and the lines after it
(`tuitune.engine.record.history`), in time that does not grow with the run. The snapshot may have been rewritten
since the client registered and hold a few more lines: those count as history, and the server leaves them out of
the client's live stream (`Backlog.lines`), so every event reaches the client exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuitune.engine.record import history
from tuitune.remote import protocol

CHUNK = 1 << 16


@dataclass(frozen=True)
class Backlog:
    """`chunks`: the bytes to send, in order; `lines`: the lines of events.jsonl they account for."""

    chunks: Iterator[bytes]
    lines: int


def full(events_path: Path, lines: int) -> Backlog:
    return Backlog(_first_lines(events_path, lines), lines)


def condensed(events_path: Path, lines: int) -> Backlog:
    if not lines:
        return Backlog(iter(()), 0)
    c = history.condense_lines(events_path, lines)
    return Backlog(_condensed_chunks(c), c.lines)


def _condensed_chunks(c: history.Condenser) -> Iterator[bytes]:
    out: list[bytes] = []
    size = 0
    for piece in c.pieces():
        if isinstance(piece, history.LinesSkipped):
            data = protocol.message(protocol.SKIPPED, readings=piece.readings, lines=piece.lines)
        else:
            data = piece[3]
        out.append(data)
        size += len(data)
        if size >= CHUNK:
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)


def _first_lines(path: Path, lines: int) -> Iterator[bytes]:
    """The first `lines` lines of `path`, as written."""
    left = lines
    if not left:
        return
    with open(path, "rb") as f:
        while left > 0:
            data = f.read(CHUNK)
            if not data:
                break
            count = data.count(b"\n")
            if count >= left:
                cut = 0
                for _ in range(left):
                    cut = data.index(b"\n", cut) + 1
                data, count = data[:cut], left
            left -= count
            yield data
