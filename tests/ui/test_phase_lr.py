"""strategy.phase_lr = "find" in the dashboard: the curve opens on its own at a phase start, and the person
accepts (`a`), overrides (`v`, `s`, a typed value), keeps the phase's LR (`esc`), or lets the countdown apply the
suggestion. The countdown's second lasts `LRFinderScreen.TICK_S` wall seconds, set here: no test waits on a clock."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Static

from tests.ui import scripted
from tests.ui.test_pilot import dash, live_app, on_screen, text_of, until
from tuitune.engine.commands import ApplyLR
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.lrfinder import LRFinderScreen, parse_lr

SUGGESTED, STEEP, CURRENT = 3.2e-3, 1.1e-2, 3e-3


def phase_engine(wait_s: float = 10.0) -> scripted.ScriptedEngine:
    return scripted.ScriptedEngine([*scripted.mid_run_events(), scripted.phase_lr_found(wait_s)])


@pytest.fixture
def frozen_countdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LRFinderScreen, "TICK_S", 3600.0)


@pytest.mark.parametrize(
    ("keys", "lr"),
    [(["a"], SUGGESTED), (["v"], SUGGESTED), (["s"], STEEP), (["escape"], CURRENT), (["e", *"5e-4", "enter"], 5e-4)],
    ids=["accept", "valley", "steepest", "keep", "typed"],
)
async def test_the_answer_is_sent_as_apply_lr(frozen_countdown, keys: list[str], lr: float) -> None:
    engine = phase_engine()
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        assert "in 10 s" in text_of(app.screen.query_one("#lr-countdown", Static))
        await pilot.press(*keys)
        await until(pilot, lambda: engine.received == [ApplyLR(lr=lr)])
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await until(pilot, lambda: any(m.kind == "lr" for m in dash(app).state.markers))
        marker = [m for m in dash(app).state.markers if m.kind == "lr"][-1]
        assert marker.label == f"lr {lr:.1e}"


async def test_the_countdown_applies_the_suggestion_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LRFinderScreen, "TICK_S", 0.01)
    engine = phase_engine(wait_s=3)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: engine.received == [ApplyLR(lr=SUGGESTED)])
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))


async def test_typing_pauses_the_countdown_and_a_bad_value_is_refused(frozen_countdown) -> None:
    engine = phase_engine(wait_s=3)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        screen = app.screen
        assert isinstance(screen, LRFinderScreen) and screen.counting
        await pilot.press("e")
        assert not screen.counting
        for _ in range(5):  # more ticks than the countdown had seconds
            screen._tick()
        await pilot.press(*"abc", "enter")
        await pilot.pause(0.1)
        assert app.screen is screen and engine.received == []
        assert "paused" in text_of(screen.query_one("#lr-countdown", Static))
        screen.query_one("#lr-input", Input).value = ""
        await pilot.press(*"2e-3", "enter")
        await until(pilot, lambda: engine.received == [ApplyLR(lr=2e-3)])


async def test_a_replay_shows_no_curve_and_waits_for_nothing() -> None:
    from tuitune.ui.app import TuituneApp

    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.phase_lr_found()])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        assert isinstance(app.screen, DashboardScreen)
        assert "LR finder for phase 2: suggested 3.2e-03" in dash(app).state.log[-1].text


def test_parse_lr() -> None:
    assert parse_lr(" 3e-4 ") == 3e-4 and parse_lr("0.01") == 0.01
    assert [parse_lr(t) for t in ("", "abc", "-1e-3", "0", "nan", "inf")] == [None] * 6
