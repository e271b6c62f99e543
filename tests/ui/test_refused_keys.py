"""The dashboard's commands go through the engine's own checks (`Control.put`) like every other entry point's: an
LR typed in the finder that passes its own parse but not the command's range is refused with one notification,
and nothing reaches the engine."""

from __future__ import annotations

import pytest

from tests.ui import scripted
from tests.ui.test_pilot import dash, live_app, on_screen, until
from tuitune.engine.commands import ApplyLR
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.lrfinder import LRFinderScreen


async def test_an_lr_out_of_range_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LRFinderScreen, "TICK_S", 3600.0)
    engine = scripted.ScriptedEngine([*scripted.mid_run_events(), scripted.phase_lr_found(10.0)])
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: dash(app).keys.question() is not None)
        await pilot.press("f")  # the phase's LR question: its curve opens over the dashboard
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        await pilot.press("e", *"50", "enter")  # positive and finite: the finder takes it; ApplyLR's range does not
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app._notifications)
        await pilot.pause(0.1)
        assert [n.message for n in app._notifications] == ["Refused: ApplyLR: 'lr' must be in (0, 10], got 50"]
        assert engine.received == [] and "ApplyLR" not in dash(app).state.pending
        await pilot.press("y")  # a good command still goes: the suggestion, answered from the question bar
        await until(pilot, lambda: len(engine.received) == 1)
        assert isinstance(engine.received[0], ApplyLR) and 0 < engine.received[0].lr <= 10
