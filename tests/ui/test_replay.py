"""`tuitune replay RUN_DIR [--speed N]`: the recorded pace, N times faster, each wait capped at 2 s. Checked on a
fake clock (the waits `paced` computes), never on the wall clock."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from pathlib import Path

import pytest

import tuitune.ui.launch as launch
import tuitune.ui.runner as runner
from tests.ui import scripted
from tests.ui.test_pilot import on_screen, until
from tuitune.cli import main
from tuitune.engine.events import CheckpointSaved, MetricsUpdated, to_json
from tuitune.ui.runner import event_time
from tuitune.ui.summary import SummaryScreen
from tuitune.ui.widgets import MetricPlot


class FakeClock:
    """Stands in for the `time` module inside tuitune.ui.runner: `sleep` moves the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        with self.lock:
            self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(runner, "time", fake)
    return fake


def _metrics(elapsed_s: float) -> MetricsUpdated:
    return dataclasses.replace(scripted.epoch_events(1, 0)[0], elapsed_s=elapsed_s)


def test_paced_waits_the_recorded_gaps_divided_by_the_speed_capped_at_2s(clock: FakeClock) -> None:
    events = [
        _metrics(0.0),
        _metrics(1.0),
        CheckpointSaved("x", "best", 1, 1),
        _metrics(1.0),
        _metrics(0.5),
        _metrics(30.0),
        _metrics(31.0),
    ]
    played = [(event, clock.now) for event in runner.paced(events, 2.0, lambda: False)]
    assert [e for e, _ in played] == events
    # 1 s gap / 2; no time on the checkpoint or on an equal or earlier time; 29.5 s / 2 capped at 2 s; 1 s / 2
    assert [t for _, t in played] == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.5, 2.5, 3.0])


def test_paced_at_speed_zero_is_instant_and_a_stop_ends_it(clock: FakeClock) -> None:
    events = [_metrics(0.0), _metrics(100.0), _metrics(200.0)]
    assert list(runner.paced(events, 0.0, lambda: False)) == events and clock.now == 0.0
    played = list(runner.paced(events, 1.0, lambda: clock.now >= 1.0))  # stopped during the second wait
    assert played == events[:1] and clock.now == pytest.approx(1.0, abs=0.06)


def test_replay_command_plays_a_run_at_the_asked_speed(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = scripted.finished_events()
    (tmp_path / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in events))
    seen: dict = {}

    async def watch(pilot) -> None:
        await until(pilot, lambda: on_screen(pilot.app, SummaryScreen))
        seen["speed"], seen["clock"] = pilot.app.speed, clock.now
        await pilot.press("q")

    monkeypatch.setattr(
        launch, "_run", lambda app: app.run(headless=True, size=(100, 30), auto_pilot=watch) or app.return_code
    )
    assert main(["replay", str(tmp_path), "--speed", "4"]) == 0
    times = [t for t in map(event_time, events) if t is not None]
    expected = sum(min((b - a) / 4, 2.0) for a, b in itertools.pairwise(times) if b > a)
    assert seen["speed"] == 4.0 and expected > 0
    assert seen["clock"] == pytest.approx(expected)  # every recorded gap waited, at 4x


def test_replay_of_a_folder_without_events_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no events.jsonl" in err[0]


def _resumed_after_finishing() -> list:
    """A finished run resumed with nothing left to train (what the README's Use block did): a second session
    that starts at its last epoch, so its x axis spans nothing."""
    start = scripted.run_started()
    first = [dataclasses.replace(start, epochs=3), *scripted.finished_events()[1:]]
    again = dataclasses.replace(start, epochs=3, start_epoch=3, start_step=3 * scripted.SPE)
    return [*first, again, scripted.finished("finished", "completed 3 epochs")]


RECORDS = {
    "resumed after finishing": _resumed_after_finishing,
    "one epoch": lambda: [
        dataclasses.replace(scripted.run_started(), epochs=1),
        *scripted.epoch_events(1, 0, steps=scripted.SPE),
        scripted.finished("finished", "completed 1 epochs"),
    ],
    "started only": lambda: [scripted.run_started()],
    "empty": lambda: [],
}


@pytest.mark.parametrize("record", list(RECORDS))
def test_replay_of_any_recorded_run_draws(record: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record draws and quits cleanly: a resumed finished run (before: ZeroDivisionError in the plot, its x
    span (3.0, 3.0)), a one-epoch run, a run that never got past its start, an empty events.jsonl."""
    (tmp_path / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in RECORDS[record]()))
    drawn: dict = {}

    async def watch(pilot) -> None:
        await pilot.pause()
        dashboard = pilot.app.dashboard
        await until(pilot, lambda: dashboard.is_mounted and bool(dashboard.children))
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        drawn["spans"] = [plot.x_span for plot in dashboard.query(MetricPlot)]
        await pilot.press("escape", "q")

    monkeypatch.setattr(
        launch, "_run", lambda app: app.run(headless=True, size=(100, 30), auto_pilot=watch) or app.return_code
    )
    assert main(["replay", str(tmp_path)]) == 0
    spans = drawn["spans"]
    assert len(spans) == 2 and all(span is None or span[1] > span[0] for span in spans), spans
