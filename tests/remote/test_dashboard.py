"""The dashboard as a client of a real run process (Textual Pilot in this process, the run in its own): steer it,
leave it with `q` -> detach, attach again (history, then live), stop it, and the bell rings on the finish."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from tests.remote.conftest import tiny_profile, wait_for
from tests.ui.test_pilot import dash, on_screen, text_of, until
from tuitune.runs.status import run_info
from tuitune.ui.app import TuituneApp
from tuitune.ui.modals import LeaveRunScreen
from tuitune.ui.notify import notification_escapes
from tuitune.ui.runner import DetachedRunner
from tuitune.ui.summary import SummaryScreen
from tuitune.ui.widgets import LayerTable


class RingingApp(TuituneApp):
    rings = 0

    def bell(self) -> None:
        self.rings += 1


async def test_detach_then_attach_and_stop(tmp_path: Path, reaper) -> None:
    run_dir = reaper.watch(tmp_path / "run")
    app = TuituneApp("train", profile=tiny_profile(), run_dir=run_dir, runner=DetachedRunner())
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.dashboard is not None and dash(app).state.epoch >= 1, timeout=120)
        assert dash(app).detachable and (run_dir / "process.json").exists()
        table = app.screen.query_one(LayerTable)
        state = dash(app).state
        second = next(g for g in state.phases[1] if g not in state.phases[0])
        assert table.state_of(second) == "○ frozen"
        await pilot.press("u")
        await until(pilot, lambda: table.state_of(second) == "● train", timeout=60)
        await pilot.press("q")
        await until(pilot, lambda: on_screen(app, LeaveRunScreen))
        assert "Detach" in text_of(app.screen.query_one("#question", Static))
        await pilot.press("d")
        await until(pilot, lambda: not app.is_running, timeout=30)
    assert app.return_code == 0
    assert run_info(run_dir).status == "live"  # the run goes on without a viewer
    steps = dash(app).state.global_step

    again = RingingApp("attach", run_dir=run_dir)
    async with again.run_test(size=(120, 40)) as pilot:
        await until(
            pilot,
            lambda: (
                again.dashboard is not None and not dash(again).in_history and dash(again).state.global_step > steps
            ),
            timeout=60,
        )
        table = again.screen.query_one(LayerTable)
        assert dash(again).state.phase == 1 and table.state_of(second) == "● train"  # the history, on screen
        # the unfreeze from the first session is in the history: its marker on the plots (the event log keeps only
        # the last 500 lines, and hundreds of sub-second epochs may have passed while detached)
        assert any(m.kind == "phase" for m in dash(again).state.markers)
        await pilot.press("s")
        await until(pilot, lambda: on_screen(again, SummaryScreen), timeout=120)
        assert "Stopped early" in text_of(again.screen.query_one("#summary", Static))
        assert again.rings == 1  # the finish rang the bell (and sent OSC 9 / 777 on a real terminal)
        await pilot.press("q")
    assert again.return_code == 0
    wait_for(lambda: run_info(run_dir).status == "stopped", 60, "the run process ended")


def test_notification_escapes() -> None:
    text = notification_escapes("tuitune: finished", "demo; done\x07")
    assert text == "\x1b]9;tuitune: finished: demo done\x07\x1b]777;notify;tuitune: finished;demo done\x07"
    assert notification_escapes("t", "b", tmux=True).startswith("\x1bPtmux;\x1b\x1b]9;t: b")


async def test_picker_lists_live_runs_and_enter_attaches(tmp_path: Path) -> None:
    """A live run under ./runs (owned by this process: a real server on a real socket) is listed first in the
    picker; enter attaches the dashboard to it."""
    from tuitune.engine.commands import Control
    from tuitune.remote.server import RunServer
    from tuitune.runs.process import write_process_record
    from tuitune.ui.picker import PickerScreen

    run_dir = tmp_path / "runs" / "tiny-live"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    server = RunServer(run_dir, Control())
    write_process_record(run_dir, server.path, "test")
    try:
        app = TuituneApp("picker", profile_dirs=[tmp_path], runs_dir=tmp_path / "runs")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: on_screen(app, PickerScreen))
            picker = app.screen
            assert [r.name for r in picker.runs] == ["tiny-live"]
            await pilot.press("home")
            assert "a live run" in text_of(picker.query_one("#detail", Static))
            await pilot.press("enter")
            await until(pilot, lambda: app.dashboard is not None and any(c.live for c in server.clients), timeout=30)
            assert dash(app).detachable and not dash(app).in_history
            await pilot.press("q")
            await until(pilot, lambda: on_screen(app, LeaveRunScreen))
            await pilot.press("d")
            await until(pilot, lambda: not app.is_running, timeout=30)
        assert app.return_code == 0
        wait_for(lambda: not server.clients, 10, "the dashboard's connection closed")
    finally:
        server.close(drain_s=0.5)


async def test_the_plateau_question_rings_but_not_from_the_history() -> None:
    """Live, the plateau question rings the bell; the same events as an attach's history (between the markers)
    ring nothing and ask nothing until the history ends, then show the question that is still open."""
    from tests.ui import scripted
    from tests.ui.test_pilot import asking, question_bar
    from tuitune.remote.client import HistoryEnded, HistoryStarted

    live = RingingApp(
        "train",
        profile=tiny_profile(),
        run_dir=Path("unused"),
        runner=scripted.ScriptedEngine(scripted.plateau_events(), auto=False),
    )
    async with live.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: asking(live))
        assert live.rings == 1
        await pilot.press("n")
    history = [HistoryStarted(pid=1, history=3), *scripted.plateau_events()]
    attached = RingingApp(
        "train", profile=tiny_profile(), run_dir=Path("unused"), runner=scripted.ScriptedEngine(history, auto=False)
    )
    async with attached.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: attached.dashboard is not None and dash(attached).state.suggestion is not None)
        await pilot.pause(0.1)
        assert attached.rings == 0 and not question_bar(attached).display
        dash(attached)._emit(HistoryEnded())  # type: ignore[arg-type]
        await until(pilot, lambda: asking(attached))
        assert attached.rings == 0  # shown, as it is still open, but it is not news


async def test_an_attach_history_is_drawn_once_when_it_ends(monkeypatch) -> None:
    """The past events are only reduced while they come: the status, table and log are drawn at HistoryEnded."""
    from tests.ui import scripted
    from tuitune.remote.client import HistoryEnded, HistoryStarted
    from tuitune.ui.dashboard import DashboardScreen

    drawn: list[bool] = []  # in_history at each draw of the status, table and log
    real = DashboardScreen._render_cheap
    monkeypatch.setattr(DashboardScreen, "_render_cheap", lambda self: drawn.append(self.in_history) or real(self))
    history = [HistoryStarted(pid=1, history=3), *scripted.plateau_events()]
    app = RingingApp(
        "train", profile=tiny_profile(), run_dir=Path("unused"), runner=scripted.ScriptedEngine(history, auto=False)
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.dashboard is not None and dash(app).state.suggestion is not None)
        assert True not in drawn
        count = len(drawn)
        dash(app)._emit(HistoryEnded())  # type: ignore[arg-type]
        await until(pilot, lambda: len(drawn) > count)
        assert True not in drawn


def test_runs_says_what_a_live_run_waits_for(tmp_path: Path) -> None:
    """A detached run held at the demo's plateau question (or paused) waits for a person, maybe for days: the
    `tuitune runs` row says so, and says nothing once it trains again."""
    from tuitune.engine.events import CommandApplied, MetricsUpdated, UnfreezeSuggested
    from tuitune.engine.record.runlog import RunRecorder
    from tuitune.runs.process import write_process_record
    from tuitune.runs.status import format_table

    run_dir = tmp_path / "demo-live"
    run_dir.mkdir()
    rec = RunRecorder(run_dir)
    write_process_record(run_dir, tmp_path / "sock", "dashboard")  # owned by this (live) process
    rec(UnfreezeSuggested("val_score", 2, ("layer3", "layer4"), 4, waiting=True))
    assert run_info(run_dir).held == "waiting: unfreeze layer3, layer4?"
    assert ", waiting: unfreeze layer3, layer4?" in format_table([run_info(run_dir)])
    for command in ("UnfreezeNext", "Resume"):
        rec(CommandApplied(command=command, epoch=4, global_step=80))
    assert run_info(run_dir).held == ""
    rec(CommandApplied(command="Pause", epoch=4, global_step=85))
    assert run_info(run_dir).held == "paused"
    rec(CommandApplied(command="Resume", epoch=4, global_step=85))
    rec(MetricsUpdated(5, 5, 90, 0.4, 0.9, (), 800.0, 3.0))
    assert run_info(run_dir).held == ""
    rec.close()
