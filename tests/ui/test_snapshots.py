"""Snapshot tests: fixed sizes, scripted events, no clock on screen."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.containers import VerticalScroll

from tests.ui import scripted
from tuitune.engine.commands import Control
from tuitune.ui.app import TuituneApp

FIXTURES = Path(__file__).parent / "fixtures"


def test_picker(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)  # paths on screen are relative to the working folder
    app = TuituneApp("picker", profile_dirs=[Path("profiles")])
    assert snap_compare(app, terminal_size=(100, 30))


def test_picker_broken_profile(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    app = TuituneApp("picker", profile_dirs=[Path("profiles")])
    assert snap_compare(app, terminal_size=(80, 24), press=["up"])


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_after_unfreeze(snap_compare, size: tuple[int, int]) -> None:
    app = TuituneApp("replay", events=scripted.mid_run_events(), control=Control())
    assert snap_compare(app, terminal_size=size)


def test_dashboard_wide(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.mid_run_events(), control=Control())
    assert snap_compare(app, terminal_size=(200, 60))


def _asking_app(events: list) -> TuituneApp:
    """The events folded at mount, with a control to steer: the question is asked as in a live run. (A live scripted
    engine in a worker drew the curves slightly differently from run to run in one test process: the Pilot tests
    drive it; the snapshots fold the same events in the same order.)"""
    return TuituneApp("replay", events=events, control=Control())


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_plateau_question(snap_compare, size: tuple[int, int]) -> None:
    """The demo's plateau question (the run waits for it) on the question bar: the dashboard stays whole and
    steerable around it."""
    assert snap_compare(_asking_app(scripted.plateau_events(waiting=True)), terminal_size=size)


def test_plateau_question_lr_finder_over_it_80x24(snap_compare) -> None:
    """`f` while the plateau question waits: the engine's sweep (LRFound, then its confirmation, as the engine sends
    them) opens the curve over the dashboard, the question still below."""
    from tuitune.engine.events import CommandApplied

    g = 3 * scripted.SPE
    events = [*scripted.plateau_events(waiting=True), scripted.lr_found(3, g), CommandApplied("FindLR", 3, g)]
    assert snap_compare(_asking_app(events), terminal_size=(80, 24))


def test_phase_lr_question(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase's LR question at 120x40 (its countdown frozen: one second lasts an hour)."""
    from tuitune.ui.lrfinder import LRFinderScreen

    monkeypatch.setattr(LRFinderScreen, "TICK_S", 3600.0)
    app = _asking_app([*scripted.mid_run_events(), scripted.phase_lr_found()])
    assert snap_compare(app, terminal_size=(120, 40))


def test_summary(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.finished_events())
    assert snap_compare(app, terminal_size=(100, 30))


def test_summary_small(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.finished_events())
    assert snap_compare(app, terminal_size=(80, 24))


def test_summary_per_class_report(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.imbalanced_finished_events())
    assert snap_compare(app, terminal_size=(80, 24))


def test_error_screen(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.failed_events(), control=Control())
    assert snap_compare(app, terminal_size=(100, 30))


def test_lr_finder(snap_compare) -> None:
    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.lr_found()], control=Control())
    assert snap_compare(app, terminal_size=(120, 40))


def test_phase_lr_countdown_small(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    """strategy.phase_lr = "find" at 80x24: the question bar with its keys and countdown, then (`f`) the curve, its
    keys and the countdown fit; the countdown never moves here (one of its seconds lasts an hour), so no clock
    reaches the snapshot."""
    from tuitune.ui.lrfinder import LRFinderScreen

    monkeypatch.setattr(LRFinderScreen, "TICK_S", 3600.0)
    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.phase_lr_found()], control=Control())
    assert snap_compare(app, terminal_size=(80, 24), press=["f"])


def test_dashboard_phase_lr_markers(snap_compare) -> None:
    """The LR chosen at each phase start: a line on both plots, named on the loss plot, beside the phase line."""
    app = TuituneApp("replay", events=scripted.phase_lr_events())
    assert snap_compare(app, terminal_size=(120, 40))


def test_summary_compression(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.compressed_finished_events())
    assert snap_compare(app, terminal_size=(120, 40))


def test_dashboard_regression(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.regression_events(), control=Control())
    assert snap_compare(app, terminal_size=(80, 24))


def test_dashboard_extras(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.extras_events(), control=Control())
    assert snap_compare(app, terminal_size=(120, 40))


# Every modal at 80x24, the smallest supported terminal: its answer and its keys must be on screen.


def test_lr_finder_80x24(snap_compare) -> None:
    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.lr_found()], control=Control())
    assert snap_compare(app, terminal_size=(80, 24))


def test_quit_confirm_80x24(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.mid_run_events(), control=Control())
    assert snap_compare(app, terminal_size=(80, 24), press=["q"])


def test_error_screen_80x24(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.failed_events(), control=Control())
    assert snap_compare(app, terminal_size=(80, 24))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_group_selected(snap_compare, size: tuple[int, int]) -> None:
    """layer2 unfrozen out of turn and its LR raised (x1.5), then selected with the cursor (down x3)."""
    app = TuituneApp("replay", events=scripted.steered_events(), control=Control())
    assert snap_compare(app, terminal_size=size, press=["down", "down", "down"])


def test_summary_views_small(snap_compare) -> None:
    """80x24: the confusion heatmap and the top confusions fit above the fold."""
    app = TuituneApp("replay", events=scripted.views_finished_events())
    assert snap_compare(app, terminal_size=(80, 24))


def test_summary_views_thumbnails_small(snap_compare) -> None:
    """80x24, scrolled to the worst errors: four thumbnails a row with their labels."""

    async def scroll(pilot) -> None:
        for _ in range(1200):  # the summary screen opens once the replay ends (a ceiling of about 60 s)
            if pilot.app.screen.query(VerticalScroll):
                break
            await pilot.pause(0.05)
        pilot.app.screen.query_one(VerticalScroll).scroll_to(y=20, animate=False)
        await pilot.pause()

    app = TuituneApp("replay", events=scripted.views_finished_events())
    assert snap_compare(app, terminal_size=(80, 24), run_before=scroll)


def test_summary_views(snap_compare) -> None:
    app = TuituneApp("replay", events=scripted.views_finished_events())
    assert snap_compare(app, terminal_size=(120, 40))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_dashboard_domain_shift(snap_compare, size) -> None:
    """The layer table's shift column and the event log's advice, after AdaBN."""
    app = TuituneApp("replay", events=scripted.shift_events(), control=Control())
    assert snap_compare(app, terminal_size=size)
