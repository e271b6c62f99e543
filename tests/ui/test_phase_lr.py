"""strategy.phase_lr = "find" in the dashboard: a phase start asks on the question bar (no dialog: every key still
works); the person answers there (`y` applies the suggestion, `n` keeps the phase's LR) or opens the curve with `f`
and accepts (`a`), overrides (`v`, `s`, a typed value) or keeps (`esc`) there, or lets the countdown apply the
suggestion. The countdown's second lasts `LRFinderScreen.TICK_S` wall seconds, set here: no test waits on a clock."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Static

from tests.ui import scripted
from tests.ui.test_pilot import asking, dash, live_app, on_screen, question_bar, text_of, until
from tuitune.engine.commands import ApplyLR, Pause
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
    [
        (["y"], SUGGESTED),
        (["n"], CURRENT),
        (["f", "a"], SUGGESTED),
        (["f", "v"], SUGGESTED),
        (["f", "s"], STEEP),
        (["f", "escape"], CURRENT),
        (["f", "e", *"5e-4", "enter"], 5e-4),
    ],
    ids=["bar-yes", "bar-no", "accept", "valley", "steepest", "keep", "typed"],
)
async def test_the_answer_is_sent_as_apply_lr(frozen_countdown, keys: list[str], lr: float) -> None:
    engine = phase_engine()
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        assert "LR for phase 2" in text_of(question_bar(app)) and "in 10 s" in text_of(question_bar(app))
        if keys[0] == "f":
            await pilot.press("f")
            await until(pilot, lambda: on_screen(app, LRFinderScreen))
            assert "in 10 s" in text_of(app.screen.query_one("#lr-countdown", Static))
            keys = keys[1:]
        await pilot.press(*keys)
        await until(pilot, lambda: engine.received == [ApplyLR(lr=lr)])
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await until(pilot, lambda: any(m.kind == "lr" for m in dash(app).state.markers))
        assert dash(app).state.lr_question is None  # the applied LR closed the question
        marker = [m for m in dash(app).state.markers if m.kind == "lr"][-1]
        assert marker.label == f"lr {lr:.1e}"


async def test_the_countdown_applies_the_suggestion_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LRFinderScreen, "TICK_S", 0.01)
    engine = phase_engine(wait_s=3)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: engine.received == [ApplyLR(lr=SUGGESTED)])
        await until(pilot, lambda: not question_bar(app).display)
        await pilot.pause(0.1)
        assert engine.received == [ApplyLR(lr=SUGGESTED)]  # once


async def test_typing_pauses_the_countdown_and_a_bad_value_is_refused(frozen_countdown) -> None:
    engine = phase_engine(wait_s=3)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        await pilot.press("f")
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


async def test_the_bar_countdown_waits_while_the_curve_is_open_and_answers_once(frozen_countdown) -> None:
    """The curve opened from the bar takes over the countdown (from the seconds left): the bar's clock sends nothing
    while the curve is open, and a person typing there stops the curve's. Ticks by hand: no clock."""
    engine = phase_engine(wait_s=3)
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        keys = dash(app).keys
        keys.tick()
        assert "in 2 s" in text_of(question_bar(app))
        await pilot.press("f")
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        screen = app.screen
        assert "in 2 s" in text_of(screen.query_one("#lr-countdown", Static))  # from the seconds left
        await pilot.press("e")
        for _ in range(5):  # more ticks of both clocks than the countdown had seconds
            keys.tick()
            screen._tick()
        await pilot.pause(0.1)
        assert engine.received == []
        await pilot.press(*"2e-3", "enter")
        await until(pilot, lambda: engine.received == [ApplyLR(lr=2e-3)])
        keys.tick()
        await pilot.pause(0.1)
        assert engine.received == [ApplyLR(lr=2e-3)]


async def test_other_keys_work_while_the_phase_lr_question_waits(frozen_countdown) -> None:
    engine = phase_engine()
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        await pilot.press("p")
        await until(pilot, lambda: engine.received == [Pause()])
        await until(pilot, lambda: dash(app).state.status == "paused")
        assert asking(app)  # still asked: a pause answers nothing
        await pilot.press("y")
        await until(pilot, lambda: engine.received == [Pause(), ApplyLR(lr=SUGGESTED)])


async def test_a_replay_shows_no_curve_and_waits_for_nothing() -> None:
    from tuitune.ui.app import TuituneApp

    app = TuituneApp("replay", events=[*scripted.mid_run_events(), scripted.phase_lr_found()])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        assert isinstance(app.screen, DashboardScreen) and not question_bar(app).display
        assert "LR finder for phase 2: suggested 3.2e-03" in dash(app).state.log[-1].text


def test_parse_lr() -> None:
    assert parse_lr(" 3e-4 ") == 3e-4 and parse_lr("0.01") == 0.01
    assert [parse_lr(t) for t in ("", "abc", "-1e-3", "0", "nan", "inf")] == [None] * 6
