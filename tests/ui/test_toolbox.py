"""Pilot tests for the toolbox events: LR finder (f, the modal, a/esc), task metrics (RMSE), extra series,
the feature cache badge, failure kinds."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from tests.ui import scripted
from tests.ui.test_pilot import dash, live_app, on_screen, text_of, until
from tuitune.engine.commands import ApplyLR, Control, FindLR
from tuitune.engine.events import RunFailed
from tuitune.ui.app import TuituneApp
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.lrfinder import LRFinderScreen
from tuitune.ui.modals import ErrorScreen
from tuitune.ui.widgets import LayerTable, MetricPlot, StatusBar


def lr_cell(app: TuituneApp, group: str = "head") -> str:
    return str(app.screen.query_one(LayerTable).get_cell(group, "LR"))


def plot_text(app: TuituneApp, plot_id: str) -> str:
    """What a plot draws, as plain text (plotext's canvas at the widget's size)."""
    plot = app.screen.query_one(f"#{plot_id}", MetricPlot)
    plot.show(dash(app).state)
    plot.fit(plot.size.width, plot.size.height)
    return plot.plt.build()


async def test_f_finds_lr_then_a_applies_the_suggestion_after_confirmation() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events(), auto=False)
    app = live_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        await pilot.press("f")
        await until(pilot, lambda: engine.received == [FindLR()])
        assert "find LR" in str(app.screen.query_one(StatusBar).render())  # pending until the engine answers
        await pilot.press("f")  # a second press while the sweep runs sends nothing
        assert engine.received == [FindLR()]
        engine.gate.set()
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        assert "suggested 3.2e-03 (valley), steepest 1.1e-02, current 3.0e-03" in text_of(
            app.screen.query_one("#lr-text", Static)
        )
        assert "FindLR" not in dash(app).state.pending
        engine.gate.clear()
        await pilot.press("a")
        await until(pilot, lambda: engine.received == [FindLR(), ApplyLR(lr=3.2e-3)])
        assert isinstance(app.screen, DashboardScreen)
        await pilot.pause(0.1)
        assert lr_cell(app) == "3.0e-03"  # unchanged until the engine confirms
        engine.gate.set()
        await until(pilot, lambda: lr_cell(app) == "3.2e-03")
        await until(pilot, lambda: not dash(app).state.pending)  # the confirmation follows the new layer table
        assert "applied: apply LR (head lr 3.2e-03)" in dash(app).state.log[-1].text


async def test_escape_closes_the_lr_finder_without_a_command() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = live_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, engine.started.is_set)
        await pilot.press("f")
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        await pilot.press("escape")
        await until(pilot, lambda: on_screen(app, DashboardScreen))
        await pilot.pause(0.05)
        assert engine.received == [FindLR()]
        assert lr_cell(app) == "3.0e-03"


async def test_lr_found_in_a_plain_replay_only_logs() -> None:
    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.lr_found()])
    async with app.run_test() as pilot:
        await pilot.pause(0.1)
        assert isinstance(app.screen, DashboardScreen)
        assert "LR finder: suggested 3.2e-03" in dash(app).state.log[-1].text
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Find LR" in titles


async def test_regression_run_shows_rmse_not_percentages() -> None:
    app = TuituneApp("replay", events=scripted.regression_events(), control=Control())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.1)
        status = str(app.screen.query_one(StatusBar).render())
        assert "best val rmse 0.8046" in status and "%" not in status
        assert "cache" in status  # the feature cache badge
        assert "val loss 1.0117 rmse 0.8046 · mae 0.6437" in dash(app).state.log[-1].text
        score = plot_text(app, "acc-plot")
        assert "RMSE (lower is better)" in score and "%" not in score


async def test_extra_series_are_plotted() -> None:
    app = TuituneApp("replay", events=scripted.extras_events(), control=Control())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.1)
        loss, score = plot_text(app, "loss-plot"), plot_text(app, "acc-plot")
        assert all(label in loss for label in ("task", "distill", "val", "ema"))
        assert all(label in score for label in ("train", "val", "ema", "source", "100%"))
        await pilot.press("l")  # log scale with the extra series
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.1)
        assert "source acc 68.0%" in dash(app).state.log[-1].text


@pytest.mark.parametrize(
    "kind,title,hint",
    [
        ("oom", "out of memory", "smaller batch size"),
        ("nonfinite", "the loss is not finite", "lower lr"),
        ("bad_input", "fix the input", "Fix the profile"),
        ("error", "unexpected error", "full traceback"),
    ],
)
async def test_error_screen_for_each_failure_kind(kind: str, title: str, hint: str) -> None:
    message = {
        "oom": "CUDA out of memory: tried to allocate 2.00 GiB",
        "nonfinite": "loss is nan at step 8 (5 non-finite steps in a row)",
        "bad_input": "profiles/x.toml: [train] lr: expected a number, got 'fast'",
        "error": "RuntimeError: shape mismatch in layer4.0.conv1 (64 vs 128 channels)",
    }[kind]
    failed = RunFailed(
        message=message,
        run_dir=scripted.RUN_DIR,
        log_path=f"{scripted.RUN_DIR}/error.log",
        bad_input=kind == "bad_input",
        epoch=1,
        global_step=8,
        kind=kind,
    )
    app = TuituneApp("replay", events=[scripted.run_started(), failed], control=Control())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: on_screen(app, ErrorScreen))
        assert title in text_of(app.screen.query_one(".title", Static))
        assert message in " ".join(text_of(app.screen.query_one("#cause", Static)).split())
        assert hint in text_of(app.screen.query_one("#hint", Static))
