"""Commands checked where they enter (`engine/commands.py`): types, finite values, ranges, JSON constants and
depth; a refusal is one line naming the key, one `CommandRefused` event in the run's log, and the run unchanged.
The group a command names is checked by the engine, at the step boundary, against the run's own groups."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
import typing

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tuitune.console import ConsolePrinter
from tuitune.engine import commands
from tuitune.engine.commands import (
    BadCommand,
    Control,
    FindLR,
    Pause,
    ScaleGroupLR,
    SetGroupTrainable,
    check_command,
    command_from_dict,
    command_from_json,
    load_json_line,
)
from tuitune.engine.events import CommandApplied, CommandRefused, LayersChanged, event_from_json, to_json
from tuitune.engine.train.loop import Trainer
from tuitune.ui.reducer import fold

# (the line as sent, what the one-line refusal must say)
REFUSED = [
    ('{"type":"ScaleGroupLR","group":"head","factor":NaN}', "ScaleGroupLR: 'factor' must be a finite number, got NaN"),
    ('{"type":"ScaleGroupLR","group":"head","factor":Infinity}', "'factor' must be a finite number, got Infinity"),
    ('{"type":"ScaleGroupLR","group":null,"factor":-Infinity}', "'factor' must be a finite number, got -Infinity"),
    ('{"type":"ScaleGroupLR","group":"head","factor":1e400}', "'factor' must be finite, got inf"),
    ('{"type":"ScaleGroupLR","group":"head","factor":-5}', "'factor' must be in (0, 100], got -5"),
    ('{"type":"ScaleGroupLR","group":"head","factor":0}', "'factor' must be in (0, 100], got 0"),
    ('{"type":"ScaleGroupLR","group":"head","factor":1e9}', "'factor' must be in (0, 100], got 1e+09"),
    ('{"type":"ScaleGroupLR","group":"head","factor":"2"}', "'factor' must be a finite number, got '2'"),
    ('{"type":"ScaleGroupLR","group":"head","factor":true}', "'factor' must be a finite number, got True"),
    ('{"type":"ScaleGroupLR","group":7,"factor":2}', "'group' must be a layer group's name, got 7"),
    ('{"type":"ScaleGroupLR","group":"head"}', "ScaleGroupLR: missing key 'factor'"),
    ('{"type":"ApplyLR","lr":0}', "ApplyLR: 'lr' must be in (0, 10], got 0"),
    ('{"type":"ApplyLR","lr":NaN}', "'lr' must be a finite number, got NaN"),
    ('{"type":"FindLR","steps":true}', "FindLR: 'steps' must be an integer, got True"),
    ('{"type":"FindLR","steps":1}', "'steps' must be in [2, 10000], got 1"),
    ('{"type":"AdaptBatchNorm","batches":2.5}', "'batches' must be an integer, got 2.5"),
    ('{"type":"SetGroupTrainable","group":"head","trainable":1}', "'trainable' must be true or false, got 1"),
    ('{"type":"Pause","now":true}', "Pause: unknown key 'now'"),
    ('{"type":"Reboot"}', "'Reboot': unknown command type (known: UnfreezeNext,"),
    ('{"type":NaN}', "NaN: unknown command type"),
    ('{"factor":2}', "command: missing key 'type'"),
    ("[1,2]", "command: must be a JSON object, got list"),
    ('{"type":"Pause"', "command: not JSON: Expecting"),
    ("\x00\xff garbage", "command: not JSON"),
    ("[" * 5 + "]" * 5, "command: JSON nested deeper than 4"),
    ("[" * 100_000, "command: JSON nested deeper than 4"),
]


@pytest.mark.parametrize(("line", "said"), REFUSED, ids=[r[0][:40] for r in REFUSED])
def test_a_bad_command_is_one_line_naming_the_key(line: str, said: str) -> None:
    with pytest.raises(BadCommand) as caught:
        command_from_json(line)
    text = str(caught.value)
    assert said in text and "\n" not in text and len(text) < 300


def test_good_commands_pass_and_come_back_checked() -> None:
    assert command_from_json('{"type":"ScaleGroupLR","group":"head","factor":1.5}') == ScaleGroupLR("head", 1.5)
    assert command_from_json(b'{"type":"ScaleGroupLR","group":null,"factor":100}') == ScaleGroupLR(None, 100.0)
    assert command_from_json('{"type":"FindLR"}') == FindLR()
    assert command_from_dict({"type": "SetGroupTrainable", "group": "layer2", "trainable": True}).trainable is True
    deep_string = command_from_json('{"type":"SetGroupTrainable","group":"[[[[[[[[[","trainable":true}')
    assert deep_string.group == "[[[[[[[[["  # brackets inside a string are not nesting
    assert isinstance(check_command(ScaleGroupLR("head", 2)).factor, float)


def test_the_depth_check_reads_strings_right_and_stays_linear() -> None:
    """Brackets in strings (escaped quotes included) are not nesting; the check takes milliseconds even on a line
    of 30,000 escaped quotes (a regular expression for whole strings took 34 s there, holding the GIL)."""
    group = r"a\"[[[[[[\\"
    assert json.loads(json.dumps(group)) == group
    line = json.dumps({"type": "SetGroupTrainable", "group": group, "trainable": True})
    assert command_from_json(line).group == group
    with pytest.raises(BadCommand, match="nested deeper"):
        command_from_json('{"type":"Pause","x":"\\\\","y":[[[[[1]]]]]}')
    start = time.perf_counter()
    with pytest.raises(BadCommand, match="not JSON"):
        command_from_json(b'"' + b'\\"' * 30_000)
    assert time.perf_counter() - start < 2.0


def test_json_constants_never_become_floats() -> None:
    """Python's json turns NaN and Infinity into floats; a command channel must not (`parse_constant`)."""
    for constant in ("NaN", "Infinity", "-Infinity"):
        value = load_json_line(f"[{constant}]")[0]
        assert not isinstance(value, (float, str)) and repr(value) == constant


def test_every_command_type_has_a_check_for_each_of_its_keys() -> None:
    """A command added without checks could never be sent; one with a key left unchecked would pass unchecked."""
    for cls in typing.get_args(commands.Command):
        assert set(commands.FIELD_CHECKS[cls]) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_control_put_refuses_notes_and_queues_nothing() -> None:
    control = Control()
    for bad in (ScaleGroupLR("head", math.nan), ScaleGroupLR("head", -5.0), {"type": "ApplyLR", "lr": 1e30}):
        with pytest.raises(BadCommand):
            control.put(bad, "test")
    assert control.drain() == []
    refusals = control.drain_refusals()
    assert [(r.command, r.sender) for r in refusals] == [("ScaleGroupLR", "test")] * 2 + [("ApplyLR", "test")]
    assert "'factor' must be finite, got nan" in refusals[0].reason
    assert control.put({"type": "Pause"}) == Pause() and control.drain() == [Pause()]


def test_refusals_waiting_for_the_log_stay_bounded() -> None:
    control = Control()
    for _ in range(commands.MAX_REFUSALS + 250):
        control.refuse("command", "not JSON")
    refusals = control.drain_refusals()
    assert len(refusals) == commands.MAX_REFUSALS + 1
    assert refusals[-1].reason == "250 more commands refused (not logged one by one)"
    assert control.drain_refusals() == []


def test_a_tiny_run_refuses_bad_commands_and_trains_on_unchanged(tmp_path) -> None:
    """A real run: at step 1 a NaN factor, a negative one and an unknown group are refused (one event each, the
    LRs untouched); a good factor sent with them is applied. The events replay, print and reduce as one line each."""
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if getattr(event, "global_step", None) == 1 and type(event).__name__ == "MetricsUpdated":
            for bad in (ScaleGroupLR("head", math.nan), ScaleGroupLR("head", -5.0)):
                with pytest.raises(BadCommand):
                    control.put(bad, "dashboard")
            control.put(ScaleGroupLR("nope", 2.0), "dashboard")  # well formed: the engine knows the groups
            control.put(SetGroupTrainable("layer9", True), "dashboard")
            control.put(ScaleGroupLR("head", 1.5), "dashboard")

    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "manual"}, train={"epochs": 1, "log_every": 1, "lr": 0.01}
    )
    Trainer(profile, tmp_path, emit, control, interactive=True).run()
    refused = of_type(events, CommandRefused)
    assert [(r.command, r.global_step, r.sender, r.queued) for r in refused] == [
        ("ScaleGroupLR", 1, "dashboard", False),
        ("ScaleGroupLR", 1, "dashboard", False),
        ("ScaleGroupLR", 1, "dashboard", True),  # refused by the engine once queued: its sender still named
        ("SetGroupTrainable", 1, "dashboard", True),
    ]
    assert "'group' 'nope' is not a layer group of this run" in refused[2].reason
    assert [(c.command, c.global_step) for c in of_type(events, CommandApplied)] == [("ScaleGroupLR", 1)]
    lrs = [layer.lr for e in of_type(events, LayersChanged) for layer in e.layers if layer.name == "head"]
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs) and {round(lr, 12) for lr in lrs} <= {0.01, 0.015}
    assert [event_from_json(to_json(r)) for r in refused] == refused
    out = io.StringIO()
    printer = ConsolePrinter(out=out)
    for r in refused:
        printer(r)
    assert out.getvalue().splitlines()[0] == (
        "command refused from dashboard: ScaleGroupLR: 'factor' must be finite, got nan"
    )
    assert len(out.getvalue().splitlines()) == 4
    state = fold(events)
    assert sum("refused" in line.text for line in state.log) == 4
