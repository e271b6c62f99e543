"""An open question never locks the dashboard: while the plateau question waits (the demo's, holding the run), every
key still reaches the engine, and the question stays on its bar until it is answered or the engine moves on."""

from __future__ import annotations

import pytest

from tests.ui import scripted
from tests.ui.test_pilot import asking, dash, live_app, on_screen, question_bar, text_of, until
from tuitune.engine.commands import (
    AdaptBatchNorm,
    FindLR,
    Resume,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.ui.dashboard import DashboardScreen
from tuitune.ui.lrfinder import LRFinderScreen
from tuitune.ui.summary import SummaryScreen

# keys pressed while the question waits -> what reaches the engine, and whether the question is still open after the
# engine's confirmation (a Resume ends the wait: the run trains on, the question is moot; a stop ends the run)
WHILE_ASKED = {
    "save": (["c"], [SaveCheckpoint()], True),
    "freeze-group": (["down", "space"], [SetGroupTrainable(group="stem", trainable=True)], True),
    "lr-up": (["plus"], [ScaleGroupLR(group=None, factor=1.5)], True),
    "adabn": (["b"], [AdaptBatchNorm()], True),
    "pause-key-resumes": (["p"], [Resume()], False),
    "stop": (["s"], [StopEarly()], False),
}


@pytest.mark.parametrize("name", list(WHILE_ASKED))
async def test_every_key_works_while_the_plateau_question_waits(name: str) -> None:
    keys, sent, still_open = WHILE_ASKED[name]
    engine = scripted.ScriptedEngine(scripted.plateau_events(waiting=True))
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        await pilot.press(*keys)
        await until(pilot, lambda: engine.received == sent)
        await until(pilot, lambda: not dash(app).state.pending)  # the engine confirmed it
        assert question_bar(app).display == still_open
        assert (dash(app).state.suggestion is not None) == still_open
        if name == "stop":
            await until(pilot, lambda: on_screen(app, SummaryScreen))


async def test_f_opens_the_lr_finder_over_the_question_then_u_answers_it() -> None:
    engine = scripted.ScriptedEngine(scripted.plateau_events(waiting=True))
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        await pilot.press("f")
        await until(pilot, lambda: on_screen(app, LRFinderScreen))
        assert engine.received == [FindLR()]
        assert question_bar(app).display  # still asked, under the curve
        await pilot.press("escape")
        await until(pilot, lambda: asking(app))
        assert "unfreeze layer4?" in text_of(question_bar(app))
        await pilot.press("u")
        await until(pilot, lambda: engine.received == [FindLR(), UnfreezeNext(), Resume()])
        await until(pilot, lambda: dash(app).state.phase == 1 and dash(app).state.status == "running")
        assert not question_bar(app).display


async def test_a_question_answered_elsewhere_is_moot() -> None:
    """Another client (`tuitune ctl`, a second dashboard) unfreezes: the phase changes and the bar goes, with nothing
    sent from here."""
    engine = scripted.ScriptedEngine(scripted.plateau_events())
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        control = dash(app).link.control
        assert control is not None
        control.put(UnfreezeNext())  # as the socket server puts another client's command
        await until(pilot, lambda: dash(app).state.phase == 1)
        assert isinstance(app.screen, DashboardScreen) and not question_bar(app).display
        await pilot.press("y")  # nothing left to answer
        await pilot.pause(0.1)
        assert engine.received == [UnfreezeNext()]


async def test_the_question_bar_fits_80x24() -> None:
    engine = scripted.ScriptedEngine(scripted.plateau_events(waiting=True))
    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: asking(app))
        await pilot.pause()
        region = question_bar(app).region
        assert region.height >= 1 and app.screen.region.contains_region(region)
        assert "y/u yes · n no" in text_of(question_bar(app))
