"""Pilot tests: keys reach the engine's control queue; the screen changes only after the confirming event."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import OptionList, Static

from tests.ui import scripted
from tuitune.config import profile_from_dict
from tuitune.engine.commands import Control, Pause, Resume, SaveCheckpoint, StopEarly, UnfreezeNext
from tuitune.engine.events import to_json
from tuitune.ui.app import TuituneApp
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.modals import ConfirmQuitScreen, ErrorScreen
from tuitune.ui.picker import PickerScreen
from tuitune.ui.summary import SummaryScreen
from tuitune.ui.widgets import LayerTable, StatusBar

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = profile_from_dict({"model": {"name": "resnet18"}, "data": {"kind": "synthetic"}})


async def until(pilot: Pilot, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for `cond` (event driven: it returns as soon as `cond` holds). The timeout only bounds a failing test,
    so it is generous: a loaded CI box must not fail a test that would pass."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def text_of(widget: Static) -> str:
    """The plain text a Static shows (its Rich renderable printed without styles)."""
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(Text(widget.content) if isinstance(widget.content, str) else widget.content)
    return console.file.getvalue()  # type: ignore[attr-defined]


def on_screen(app: TuituneApp, cls: type) -> bool:
    """`app.screen` is a `cls` and has composed its children."""
    return isinstance(app.screen, cls) and app.screen.is_mounted and bool(app.screen.children)


def live_app(engine: scripted.ScriptedEngine) -> TuituneApp:
    return TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)


def dash(app: TuituneApp) -> DashboardScreen:
    assert app.dashboard is not None
    return app.dashboard


async def test_unfreeze_flips_table_only_after_the_engine_confirms() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events(), auto=False)
    app = live_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        table = app.screen.query_one(LayerTable)
        assert table.state_of("layer3") == "○ frozen"
        await pilot.press("u")
        await until(pilot, lambda: engine.received == [UnfreezeNext()])
        await pilot.pause(0.1)
        assert table.state_of("layer3") == "○ frozen"  # no optimistic UI
        assert "unfreeze next phase" in str(app.screen.query_one(StatusBar).render())  # shown as pending
        engine.gate.set()
        await until(pilot, lambda: table.state_of("layer3") == "● train")
        assert dash(app).state.phase == 2
        await until(pilot, lambda: not dash(app).state.pending)  # the confirmation follows the change
        await pilot.press("s")
        await until(pilot, lambda: on_screen(app, SummaryScreen))
        await pilot.press("q")
    assert engine.received == [UnfreezeNext(), StopEarly()]
    assert app.return_code == 0


@pytest.mark.parametrize("key,command,status", [("p", Pause(), "paused"), ("c", SaveCheckpoint(), "running")])
async def test_key_reaches_control_and_screen_follows_confirmation(key: str, command: object, status: str) -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events(), auto=False)
    app = live_app(engine)
    async with app.run_test() as pilot:
        await until(pilot, engine.started.is_set)
        await pilot.press(key)
        await until(pilot, lambda: engine.received == [command])
        assert dash(app).state.status == "running"
        engine.gate.set()
        await until(pilot, lambda: not dash(app).state.pending)
        assert dash(app).state.status == status
        if key == "p":
            await pilot.press("p")
            await until(pilot, lambda: engine.received == [Pause(), Resume()] and not dash(app).state.pending)
            assert dash(app).state.status == "running"
        else:
            assert "manual" in dash(app).state.checkpoints


def question_bar(app: TuituneApp) -> Static:
    """The dashboard's question bar (tuitune/ui/questions.py), wherever the app's screen is."""
    return dash(app).query_one("#question-bar", Static)


def asking(app: TuituneApp) -> bool:
    """The question bar shows a question (and no dialog is over the dashboard)."""
    return isinstance(app.screen, DashboardScreen) and question_bar(app).display


async def test_a_plateau_question_leaves_the_leave_dialog_its_keys() -> None:
    """A question that comes while "quit?" is open takes none of its keys (y/n): `n` answers the dialog, and the
    question is on the bar behind it."""
    from tuitune.engine.events import UnfreezeSuggested
    from tuitune.ui.runner import EngineEventReceived

    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = live_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, engine.started.is_set)
        await pilot.press("q")
        await until(pilot, lambda: on_screen(app, ConfirmQuitScreen))
        dash(app).post_message(EngineEventReceived(UnfreezeSuggested("val_loss", 2, ("layer4",), 3)))
        await until(pilot, lambda: question_bar(app).display)
        assert isinstance(app.screen, ConfirmQuitScreen)
        await pilot.press("n")
        await until(pilot, lambda: asking(app))
        assert "unfreeze layer4?" in text_of(question_bar(app))
        assert not engine.ended.is_set() and engine.received == []


async def test_quit_during_live_run_asks_then_stops_the_worker() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = live_app(engine)
    async with app.run_test() as pilot:
        await until(pilot, engine.started.is_set)
        await pilot.press("q")
        await until(pilot, lambda: on_screen(app, ConfirmQuitScreen))
        await pilot.press("n")
        await until(pilot, lambda: on_screen(app, DashboardScreen))
        assert not engine.ended.is_set()  # "n": the run goes on
        await pilot.press("q", "y")
        await until(pilot, engine.ended.is_set)  # the stop request reached the engine, which ended its run
    assert app.return_code == 130
    assert dash(app).state.finished is not None and dash(app).state.finished.status == "interrupted"


async def test_plateau_question_yes_sends_unfreeze() -> None:
    engine = scripted.ScriptedEngine(scripted.plateau_events(), auto=False)
    app = live_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: asking(app))
        assert "val loss flat for 2 epochs: unfreeze layer4?" in text_of(question_bar(app))
        await pilot.press("y")
        await until(pilot, lambda: engine.received == [UnfreezeNext()])
        assert not question_bar(app).display  # answered: the confirmation is on its way
        await pilot.press("y")
        await pilot.pause(0.1)
        assert engine.received == [UnfreezeNext()]  # nothing left to answer: not sent twice


@pytest.mark.parametrize(
    "key, answer", [("y", [UnfreezeNext(), Resume()]), ("u", [UnfreezeNext(), Resume()]), ("n", [Resume()])]
)
async def test_a_waiting_plateau_question_resumes_the_run_with_the_answer(key: str, answer: list) -> None:
    """The demo's plateau question holds the run (status paused) until answered: y (or u) unfreezes and resumes,
    n only resumes."""
    engine = scripted.ScriptedEngine(scripted.plateau_events(waiting=True))
    app = live_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: asking(app))
        assert dash(app).state.status == "paused"
        await pilot.press(key)
        await until(pilot, lambda: engine.received == answer)
        await until(pilot, lambda: dash(app).state.status == "running")
        assert not question_bar(app).display and dash(app).state.suggestion is None


async def test_worker_failure_shows_error_screen_and_app_stays_alive() -> None:
    def broken_runner(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no such backbone: resnet9000")

    app = TuituneApp("train", profile=PROFILE, run_dir=Path("runs/x"), runner=broken_runner)
    async with app.run_test() as pilot:
        await until(pilot, lambda: on_screen(app, ErrorScreen))
        assert "resnet9000" in text_of(app.screen.query_one("#cause", Static))
        assert "runs/x" in text_of(app.screen.query_one("#where", Static))
        await pilot.press("escape")
        await until(pilot, lambda: on_screen(app, DashboardScreen))
        assert dash(app).state.status == "failed"
        await pilot.press("u")  # no live run: a notice, no crash
        assert app.is_running
        await pilot.press("q")
    assert app.return_code == 1


async def test_picker_navigation_broken_profile_and_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    started: list[str] = []

    def runner(profile, run_dir, emit, control, **kwargs):
        started.append(f"{profile.name}:{run_dir}")
        for event in scripted.mid_run_events()[:3]:
            emit(event)

    app = TuituneApp(
        "picker",
        profile_dirs=[Path("profiles"), Path("profiles"), Path("missing")],
        runner=runner,
        make_run_dir=lambda p, out: Path(f"runs/{p.name}-1"),
    )
    async with app.run_test(size=(100, 30)) as pilot:
        picker = app.screen
        assert isinstance(picker, PickerScreen)
        assert [e.name for e in picker.entries] == ["broken", "demo", "plateau"]  # deduped, missing skipped
        assert picker.highlighted is not None and picker.highlighted.name == "demo"
        assert "resnet18" in text_of(picker.query_one("#detail", Static))
        await pilot.press("up")
        assert "learning_rate: unknown key" in text_of(picker.query_one("#detail", Static))
        await pilot.press("enter")  # broken: stays in the picker
        assert isinstance(app.screen, PickerScreen) and not started
        await pilot.press("down", "down")
        assert app.screen.query_one(OptionList).highlighted == 2
        await pilot.press("up", "enter")
        await until(pilot, lambda: app.dashboard is not None and dash(app).state.run_name == scripted.RUN)
        assert started == ["demo:runs/demo-1"]
        # the scripted runner returned without a terminal event: the dashboard reports that as a failure
        await until(pilot, lambda: on_screen(app, ErrorScreen))


async def test_replay_of_written_events_jsonl(tmp_path: Path) -> None:
    events = scripted.finished_events()
    (tmp_path / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in events) + '{"type": "Run')
    from tuitune.engine.record.runlog import read_events

    app = TuituneApp("replay", events=read_events(tmp_path))
    async with app.run_test() as pilot:
        await until(pilot, lambda: on_screen(app, SummaryScreen))
        assert "stopped from the dashboard" in text_of(app.screen.query_one("#summary", Static))
        await pilot.press("escape")
        table = app.screen.query_one(LayerTable)
        assert table.state_of("layer4") == "● train" and table.state_of("layer3") == "○ frozen"
        assert dash(app).state.events_seen == len(events)
        await pilot.press("q")
    assert app.return_code == 0


async def test_replay_at_speed_reaches_the_recorded_end() -> None:
    events = scripted.mid_run_events()  # (metric updates may be coalesced on the way: the end state is the same)
    app = TuituneApp("replay", events=events, speed=1000.0)
    async with app.run_test() as pilot:
        await until(pilot, lambda: dash(app).state.global_step == 2 * scripted.SPE + 10)
        assert dash(app).state.phase == 1
        assert len(dash(app).state.val_score) == 2


async def test_command_palette_lists_dashboard_actions() -> None:
    """Bindings, palette and log labels all come from the one table (`tuitune.ui.keys`)."""
    from typing import get_args

    from tuitune.engine.commands import Command
    from tuitune.ui.keys import COMMAND_LABELS, DASHBOARD_KEYS

    app = TuituneApp("replay", events=scripted.mid_run_events())
    async with app.run_test() as pilot:
        await pilot.pause()
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert {"Unfreeze next phase", "Stop early", "Pause / resume", "Save checkpoint", "Toggle log scale"} <= set(
            commands
        )
        assert all(commands[k.title] == k.palette_help for k in DASHBOARD_KEYS)
        bindings = {b.key: b.action for b in app.screen.BINDINGS}
        assert bindings == {k.key: f"key('{k.action}')" for k in DASHBOARD_KEYS}
        assert all(callable(getattr(dash(app).keys, k.action)) for k in DASHBOARD_KEYS)
        assert set(COMMAND_LABELS) == {c.__name__ for c in get_args(Command)}
        await pilot.press("l")
        assert dash(app).log_scale


async def test_x_key_toggles_the_whole_planned_span() -> None:
    """The plots follow the run; `x` shows the whole planned span, `x` again follows the run."""
    from tuitune.ui.widgets import MetricPlot

    app = TuituneApp("replay", events=scripted.mid_run_events(), control=None)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: dash(app).state.epoch == 3)
        plots = list(app.screen.query(MetricPlot))
        follow = (0.0, 4.0)  # epoch 2.5 of 6: plus one epoch, rounded up
        await until(pilot, lambda: all(p.x_span == follow for p in plots))
        await pilot.press("x")
        await until(pilot, lambda: all(p.x_span == (0.0, float(scripted.EPOCHS)) for p in plots))
        await pilot.press("x")
        await until(pilot, lambda: all(p.x_span == follow for p in plots))


MODAL_CASES = {  # modal -> (events that open it, keys pressed first, the answer's id)
    "lr_finder": (lambda: [*scripted.mid_run_events(), scripted.lr_found()], (), "#lr-text"),
    "quit": (scripted.mid_run_events, ("q",), "#question"),
    "error": (scripted.failed_events, (), "#cause"),
}


@pytest.mark.parametrize("name", list(MODAL_CASES))
async def test_every_modal_fits_80x24_with_its_answer_and_keys(name: str) -> None:
    """At 80x24 each modal shows its answer and its keys line whole: inside the terminal and inside the dialog's
    box (a child laid out past the box's bottom is clipped away)."""
    from textual.containers import Vertical
    from textual.screen import ModalScreen

    events, keys, answer = MODAL_CASES[name]
    app = TuituneApp("replay", events=events(), control=Control())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.dashboard is not None and dash(app).state.events_seen == len(events()))
        for key in keys:
            await pilot.press(key)
        await until(pilot, lambda: isinstance(app.screen, ModalScreen) and bool(app.screen.children))
        await pilot.pause()
        screen = app.screen
        box = screen.query_one(Vertical).region
        for selector in (answer, ".keys"):
            region = screen.query_one(selector).region
            assert region.height > 0 and screen.region.contains_region(region), (selector, region)
            assert box.contains_region(region), (selector, region, box)


async def test_the_first_run_hint_says_what_the_keys_do_until_one_is_used() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        hint = app.screen.query_one("#hint", Static)
        assert hint.display and hint.region.height == 1
        assert text_of(hint).startswith("u unfreeze next phase · f find LR · p pause · s stop")
        await pilot.press("p")
        await until(pilot, lambda: not hint.display)
    replay = TuituneApp("replay", events=scripted.mid_run_events())
    async with replay.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not replay.screen.query_one("#hint", Static).display  # a replay steers nothing


async def test_sigusr1_preempts_an_inline_run_and_the_app_exits_75() -> None:
    """A scheduler's SIGUSR1 (or SIGTERM) to a dashboard whose run trains in its own process: the run is asked to
    stop as `preempted` (it saves `last`), and the app exits 75 without waiting for a key. A fallback handler
    keeps a missing one from killing the test process."""
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        engine = scripted.ScriptedEngine(scripted.mid_run_events())
        app = live_app(engine)
        async with app.run_test() as pilot:
            await until(pilot, engine.started.is_set)
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(pilot, lambda: app.return_code is not None, timeout=30)
        assert engine.ended.is_set() and app.return_code == 75
        assert dash(app).state.finished is not None and dash(app).state.finished.status == "preempted"
    finally:
        signal.signal(signal.SIGUSR1, previous)
