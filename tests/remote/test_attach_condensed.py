"""Attaching to a long run: the history comes condensed over the control socket (a bounded number of events, in a
few messages to the dashboard) and folds into the state of every line; the history and the live stream meet
exactly, line for line, also when the recorder's snapshot moves past the attach point and for a resumed run; a
client that asks for the full history gets every line as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.remote.conftest import wait_for
from tests.remote.viewer import Viewer
from tests.ui.test_long_history import SPE, _history, _record
from tests.ui.test_pilot import dash, until
from tuitune.engine.commands import Control
from tuitune.engine.events import event_from_dict
from tuitune.engine.record import history
from tuitune.engine.record.history import CAPACITY, LinesSkipped
from tuitune.engine.record.runlog import RunRecorder, read_events, tee
from tuitune.remote import attached, protocol
from tuitune.remote.client import RunClient
from tuitune.remote.server import RunServer
from tuitune.runs.process import write_process_record
from tuitune.ui.app import TuituneApp
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.reducer import fold


async def test_attaching_to_a_long_history_posts_few_events_and_folds_to_the_full_state(
    tmp_path: Path, monkeypatch
) -> None:
    n = 3 * CAPACITY + 50
    _record(tmp_path, _history(n))
    lines = (tmp_path / "events.jsonl").read_bytes().count(b"\n")
    server = RunServer(tmp_path, Control(), resumed=True)  # as the run process serves it: every line counted
    write_process_record(tmp_path, server.path, "test")
    posted: list[object] = []  # what the worker posted to the dashboard, one message each
    real = DashboardScreen._emit
    monkeypatch.setattr(DashboardScreen, "_emit", lambda self, event: posted.append(event) or real(self, event))
    try:
        app = TuituneApp("attach", run_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(
                pilot, lambda: app.dashboard is not None and dash(app).state.events_seen and not dash(app).in_history
            )
            state = dash(app).state
            await pilot.press("q")
            await pilot.press("d")
    finally:
        server.close(drain_s=0.5)
    assert lines == 2 * n + 2 * (n // SPE) + 1 and state == fold(read_events(tmp_path))
    events = [e for m in posted for e in getattr(m, "events", (m,))]
    assert len(events) < 2 * CAPACITY + 2 * (n // SPE) + 10  # not the 2n lines: the readings no plot keeps
    assert len(posted) <= 2 + len(events) // 1024 + 1  # HistoryStarted, the chunks, HistoryEnded


def check_meets_exactly(viewer: Viewer, lines: list[bytes]) -> int:
    """The viewer's history accounts for the first M lines (kept ones in order, folding as those lines do) and its
    live stream is exactly lines M+1.. of events.jsonl. Returns M."""
    split = viewer.split()
    assert split is not None
    past, live = split
    through = sum(m["lines"] if m["type"] == protocol.SKIPPED else 1 for m in past)
    recorded = [json.loads(line) for line in lines]
    assert live == recorded[through:]  # nothing lost, nothing twice, at the boundary
    kept = iter(recorded[:through])
    assert all(any(m == r for r in kept) for m in past if m["type"] != protocol.SKIPPED)  # in order, as written
    as_events = [
        LinesSkipped(m["readings"], m["lines"]) if m["type"] == protocol.SKIPPED else event_from_dict(m) for m in past
    ]
    assert fold(as_events) == fold(event_from_dict(r) for r in recorded[:through])
    return through


@pytest.mark.parametrize("resumed", [False, True])
def test_history_and_live_meet_line_for_line(tmp_path: Path, monkeypatch, resumed: bool) -> None:
    """A run emits while viewers attach. The first viewer's history is read after the recorder has written a newer
    snapshot than the line the viewer registered at (forced: the engine emits while the server reads): those lines
    are history, and the live stream starts after them. Coalescing is off, so every live event must arrive."""
    monkeypatch.setattr(history, "SNAPSHOT_READINGS", 16)
    monkeypatch.setattr(attached, "COALESCED", ())
    events = list(_history(600))
    if resumed:  # an earlier process's record, then this one appends to it
        _record(tmp_path, events[:301])
        events = events[301:]
    else:
        (tmp_path / "events.jsonl").write_text("")
    server = RunServer(tmp_path, Control(), resumed=resumed)
    sink = tee(RunRecorder(tmp_path, append=resumed), server)
    first, during, rest = events[:200], events[200:260], events[260:]
    real = history.condense_lines
    state = {"forced": False}

    def condense_lines(run_dir: Path, lines: int) -> history.Condenser:
        if not state["forced"]:  # the engine goes on between the attach and the read (60 events: 30 readings)
            state["forced"] = True
            for event in during:
                sink(event)
        return real(run_dir, lines)

    monkeypatch.setattr(history, "condense_lines", condense_lines)
    viewers: list[Viewer] = []
    try:
        for event in first:
            sink(event)
        a = Viewer(RunClient(server.path, history=protocol.CONDENSED))
        wait_for(lambda: a.split() is not None, 30, "the first viewer live")
        for i, event in enumerate(rest):
            sink(event)
            if i == 100:  # two more attach while the run emits: one condensed, one full
                viewers.append(Viewer(RunClient(server.path, history=protocol.CONDENSED)))
                viewers.append(full := Viewer(RunClient(server.path)))
        lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
        for v in (a, *viewers):
            wait_for(
                lambda v=v: v.split() is not None and v.split()[1] and v.split()[1][-1] == json.loads(lines[-1]),
                30,
                "all events",
            )
        registered = a.client.hello["history"]
        assert check_meets_exactly(a, lines) > registered  # the snapshot had moved past the attach point
        for v in viewers:
            check_meets_exactly(v, lines)
        past, _ = full.split()  # type: ignore[misc]
        assert past == [json.loads(line) for line in lines[: full.client.hello["history"]]]  # every line
    finally:
        for v in (a, *viewers):
            v.client.close()
        server.close(drain_s=0.5)
