"""The scripted engine answers each command with the events the real engine emits, in the same order, so the UI
tests fed by it (confirmation, pending, the event log) see what a real run sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.conftest import tiny_profile
from tests.ui import scripted
from tuitune.engine.commands import (
    ApplyLR,
    Command,
    Control,
    FindLR,
    Pause,
    Resume,
    SaveCheckpoint,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import CommandApplied, Event
from tuitune.engine.train.loop import Trainer

COMMANDS = [UnfreezeNext(), Pause(), Resume(), SaveCheckpoint(), FindLR(steps=4), ApplyLR(lr=0.02), StopEarly()]


def _kinds(events: list[Event]) -> list[str]:
    """Event types up to and including the command's confirmation."""
    names = [type(e).__name__ for e in events]
    return names[: names.index("CommandApplied") + 1]


@pytest.fixture(scope="module")
def engine_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What a real (tiny) trainer emits when it applies each command at a step boundary."""
    profile = tiny_profile(strategy={"kind": "progressive", "trigger": "manual"})
    emitted: list[Event] = []
    trainer = Trainer(profile, tmp_path_factory.mktemp("order"), emitted.append, Control(), interactive=True)
    answers: dict[str, list[str]] = {}
    for command in COMMANDS:
        emitted.clear()
        trainer.controller.apply(command)  # what `between_steps` calls for each queued command
        assert isinstance(emitted[-1], CommandApplied)
        answers[type(command).__name__] = _kinds(emitted)
    return answers


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_scripted_engine_answers_in_the_real_engines_order(
    command: Command, engine_answers: dict, tmp_path: Path
) -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    emitted: list[Event] = []
    engine._answer(command, emitted.append)
    assert _kinds(emitted) == engine_answers[type(command).__name__]


def test_the_real_engine_confirms_an_unfreeze_after_the_change(engine_answers: dict) -> None:
    assert engine_answers["UnfreezeNext"] == ["PhaseChanged", "LayersChanged", "CommandApplied"]
    assert engine_answers["ApplyLR"] == ["LayersChanged", "CommandApplied"]
