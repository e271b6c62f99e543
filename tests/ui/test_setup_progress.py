"""Setup progress (`SetupProgressed`): on the dashboard's status bar before the run has started, in the log when a
step finishes, and as occasional lines headless; never a tqdm bar."""

from __future__ import annotations

import io

from tests.ui import scripted
from tests.ui.test_pilot import dash, live_app, text_of, until
from tuitune.console import ConsolePrinter
from tuitune.engine.events import SetupProgressed
from tuitune.engine.record.progress import progress_text
from tuitune.ui.reducer import fold
from tuitune.ui.runner import EngineEventReceived
from tuitune.ui.widgets import StatusBar, status_text

HALF = SetupProgressed("download", "model.safetensors", 12.5, 50.0, "MB", rate=2.5)
DONE = SetupProgressed("download", "model.safetensors", 50.0, 50.0, "MB", rate=2.5, finished=True)


def test_reducer_shows_the_step_then_logs_it_when_done() -> None:
    state = fold([HALF])
    assert state.setup == HALF and state.status == "starting"
    text = status_text(state).plain
    assert "preparing the run" in text
    assert "⇣ download model.safetensors █████░░░░░░░░░░░░░░░ 12.5/50.0 MB  25%  2.5 MB/s" in text
    state = fold([DONE], state)
    assert state.setup is None and state.log[-1].text == "download model.safetensors  50.0/50.0 MB  2.5 MB/s  done"
    assert "download" not in status_text(fold([scripted.run_started()], state)).plain


def test_a_later_report_of_the_same_step_replaces_a_queued_one() -> None:
    queued = EngineEventReceived(HALF)
    assert queued.can_replace(EngineEventReceived(DONE))
    assert not EngineEventReceived(DONE).can_replace(EngineEventReceived(HALF))  # the last one is always shown
    other = SetupProgressed("tokenize", "train.csv", 10, 100, "texts")
    assert not queued.can_replace(EngineEventReceived(other))


async def test_dashboard_shows_download_progress_before_the_run_starts() -> None:
    engine = scripted.ScriptedEngine([HALF], auto=False)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: dash(app).state.setup == HALF)
        await until(pilot, lambda: "12.5/50.0 MB" in text_of(app.screen.query_one(StatusBar)))
        assert dash(app).state.run_name == "" and "25%" in text_of(app.screen.query_one(StatusBar))
        await pilot.press("q")


def test_headless_prints_a_line_every_few_seconds_and_the_last(monkeypatch) -> None:
    clock = iter([0.0, 0.5, 1.0, 3.5, 4.0])
    monkeypatch.setattr("tuitune.console.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    printer = ConsolePrinter(out=out)
    for done in (0.0, 5.0, 10.0, 35.0):
        printer(SetupProgressed("download", "model.safetensors", done, 50.0, "MB", rate=10.0))
    printer(DONE)
    assert out.getvalue().splitlines() == [
        "download model.safetensors  0.0/50.0 MB  0%  10.0 MB/s",
        "download model.safetensors  35.0/50.0 MB  70%  10.0 MB/s",
        "download model.safetensors  50.0/50.0 MB  2.5 MB/s  done",
    ]
    assert "\r" not in out.getvalue()


def test_a_rate_under_one_per_second_keeps_two_significant_digits() -> None:
    slow = SetupProgressed(task="cache", detail="layer.5 (train)", done=1, total=32, unit="batches", rate=0.41)
    assert progress_text(slow) == "cache layer.5 (train)  1/32 batches  3%  0.41 batches/s"
