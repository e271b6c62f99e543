"""Commands: what the world asks of a running engine, and the thread-safe channel that carries them.

The UI (or a signal handler) calls `Control.put`; the training loop drains the queue at step boundaries, applies
each command and acknowledges it with a `CommandApplied` event. `stop` is a flag rather than a queued command so
that the loop sees it at every step, even while paused, and quitting never hangs.

Every command is checked where it enters, here and only here (`command_from_json`, `command_from_dict`,
`check_command`: types, finite values, ranges, the depth and constants of its JSON), and `Control.put` refuses one
that fails, so no entry point (the socket, the dashboard, scripts, agents) can queue a command the engine would
choke on. A refusal is noted on the `Control` (bounded) for the engine to log as a `CommandRefused`
event; whether a named layer group exists is checked by the engine itself, at the step boundary.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import queue
import re
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from tuitune.errors import UserError, first_line


@dataclass(frozen=True)
class UnfreezeNext:
    """Move to the next phase now."""


@dataclass(frozen=True)
class StopEarly:
    """Finish the run now: save a checkpoint, evaluate, summarise."""


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class SaveCheckpoint:
    pass


@dataclass(frozen=True)
class FindLR:
    """Sweep the learning rate over `steps` steps from the current weights (restored afterwards)."""

    steps: int = 100


@dataclass(frozen=True)
class ApplyLR:
    """Set the current phase's LR: the head's base LR becomes `lr`, deeper groups keep their discriminative ratio."""

    lr: float


@dataclass(frozen=True)
class SetGroupTrainable:
    """Freeze (`trainable=False`) or unfreeze one layer group, whatever the phase. A frozen group keeps its
    optimizer state (it is only skipped); unfrozen again, it trains on from that state."""

    group: str
    trainable: bool


@dataclass(frozen=True)
class ScaleGroupLR:
    """Multiply one layer group's base LR by `factor`; every group's (and those still to join) when `group` is
    None. The schedule and warm-ups keep acting on top of it."""

    group: str | None
    factor: float


@dataclass(frozen=True)
class AdaptBatchNorm:
    """AdaBN: re-estimate every BatchNorm layer's running statistics on `batches` target (train) batches, then
    measure the domain shift again."""

    batches: int = 20


@dataclass(frozen=True)
class GenerateSamples:
    """A language model's greedy generations for the fixed validation prompts, now (`SamplesGenerated`)."""


@dataclass(frozen=True)
class RollBackPhase:
    """Undo the current phase: the weights of the phase before's best epoch come back, and the groups this phase
    unfroze are frozen again (the run goes on in the phase before)."""


Command = Union[  # noqa: UP007 (read at run time by typing.get_args, like events.Event)
    UnfreezeNext,
    StopEarly,
    Pause,
    Resume,
    SaveCheckpoint,
    FindLR,
    ApplyLR,
    SetGroupTrainable,
    ScaleGroupLR,
    AdaptBatchNorm,
    GenerateSamples,
    RollBackPhase,
]

COMMAND_TYPES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(Command)}

# ------------------------------------------------------------------------------------------------ checks
LR_FACTOR_MAX = 100.0  # ScaleGroupLR.factor in (0, LR_FACTOR_MAX]: one step up or down, never a sign flip
LR_MAX = 10.0  # ApplyLR.lr in (0, LR_MAX]
MAX_STEPS = 10_000  # FindLR.steps, AdaptBatchNorm.batches: a sweep or a re-estimate, not a second run
MAX_NAME = 200  # a layer group's name
MAX_DEPTH = 4  # JSON nesting: a command is one flat object
_SPECIAL = re.compile(rb'[][{}"\\]')  # what nesting depends on: brackets, quotes, backslashes


class BadCommand(UserError):
    """A command refused where it entered; `str()` is one line naming the command and the key."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"{command}: {reason}")
        self.command, self.reason = command, reason


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a finite number, got {_show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {value}")
    return float(value)


def _in_range(high: float) -> Callable[[Any], float]:
    """A finite number in (0, high]."""

    def check(value: Any) -> float:
        x = _number(value)
        if not 0 < x <= high:
            raise ValueError(f"must be in (0, {high:g}], got {x:g}")
        return x

    return check


def _count(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be in [{low}, {high}], got {value}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _group(value: Any) -> str:
    """A layer group's name; whether the run has it is the engine's check (it knows the groups)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise ValueError(f"must be a layer group's name, got {_show(value)}")
    return value


def _group_or_all(value: Any) -> str | None:
    return None if value is None else _group(value)


# Every command's keys and their checks: a command type missing here cannot be sent at all.
FIELD_CHECKS: dict[type, dict[str, Callable[[Any], Any]]] = {
    UnfreezeNext: {},
    StopEarly: {},
    Pause: {},
    Resume: {},
    SaveCheckpoint: {},
    FindLR: {"steps": _count(2, MAX_STEPS)},
    ApplyLR: {"lr": _in_range(LR_MAX)},
    SetGroupTrainable: {"group": _group, "trainable": _flag},
    ScaleGroupLR: {"group": _group_or_all, "factor": _in_range(LR_FACTOR_MAX)},
    AdaptBatchNorm: {"batches": _count(1, MAX_STEPS)},
    GenerateSamples: {},
    RollBackPhase: {},
}


def _checked(cls: type, fields: dict[str, Any]) -> Command:
    """`cls` built from `fields`, each checked; BadCommand names the first key at fault."""
    name, checks = cls.__name__, FIELD_CHECKS.get(cls)
    if checks is None:
        raise BadCommand(name, "not a command")
    unknown = sorted(set(fields) - set(checks), key=str)
    if unknown:
        raise BadCommand(name, f"unknown key {_show(unknown[0])} (keys: {', '.join(checks) or 'none'})")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in fields:
            if f.default is dataclasses.MISSING:
                raise BadCommand(name, f"missing key {f.name!r}")
            continue
        try:
            out[f.name] = checks[f.name](fields[f.name])
        except ValueError as e:
            raise BadCommand(name, f"{f.name!r} {e}") from None
    return cls(**out)


def command_from_dict(data: Any) -> Command:
    """A checked command from its JSON form (`{"type": "ScaleGroupLR", "group": "head", "factor": 1.5}`)."""
    if not isinstance(data, dict):
        raise BadCommand("command", f"must be a JSON object, got {type(data).__name__}")
    if "type" not in data:
        raise BadCommand("command", "missing key 'type'")
    kind = data["type"]
    cls = COMMAND_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadCommand(_show(kind), f"unknown command type (known: {', '.join(COMMAND_TYPES)})")
    return _checked(cls, {k: v for k, v in data.items() if k != "type"})


def check_command(command: Any) -> Command:
    """A built command checked like one that came as JSON (the dashboard's, a script's); the checked copy."""
    if not dataclasses.is_dataclass(command) or isinstance(command, type):
        raise BadCommand(type(command).__name__, "not a command")
    return _checked(type(command), {f.name: getattr(command, f.name) for f in dataclasses.fields(command)})


class _Constant:
    """NaN, Infinity or -Infinity as read from JSON: neither a float nor a string, so the check of the key that
    holds it refuses it by name (`'factor' must be a finite number, got NaN`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _deeper_than(raw: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit`: one pass over the special bytes only, linear
    whatever the input (a regular expression for whole strings goes quadratic on a run of escaped quotes)."""
    depth, in_string, escaped = 0, False, -1
    for m in _SPECIAL.finditer(raw):
        i, c = m.start(), raw[m.start()]
        if i == escaped:
            continue
        if in_string:
            if c == 0x5C:  # a backslash: the next byte is escaped
                escaped = i + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif c in b"]}":
            depth -= 1
    return False


def load_json_line(line: str | bytes) -> Any:
    """One line of JSON as a command channel reads it: NaN and +/-Infinity (which Python's json turns into floats)
    read as names that no check accepts as a number, nesting deeper than MAX_DEPTH refused before parsing (no
    RecursionError). BadCommand says why."""
    raw = line.encode("utf-8", "replace") if isinstance(line, str) else bytes(line)
    if _deeper_than(raw, MAX_DEPTH):
        raise BadCommand("command", f"JSON nested deeper than {MAX_DEPTH}")
    try:
        return json.loads(raw, parse_constant=_Constant)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer too long
        raise BadCommand("command", f"not JSON: {first_line(e, 120)}") from None


def command_from_json(line: str | bytes) -> Command:
    """A checked command from one line of JSON: what the socket, a command line or an agent hands in."""
    return command_from_dict(load_json_line(line))


@dataclass(frozen=True)
class Refusal:
    """A command refused at the edge, for the engine to log (`CommandRefused`) at its next step boundary."""

    command: str
    reason: str  # the one line the sender got: "ScaleGroupLR: 'factor' must be a finite number, got NaN"
    sender: str = ""


MAX_SENDERS = 1000  # queued commands whose sender is kept for their `CommandApplied`
MAX_REFUSALS = 100  # refusals waiting for the engine to log them; more are counted, not kept (records stay bounded)


INTERRUPTED = ("interrupted", "interrupted by the user")
PREEMPTED = "preempted"  # a scheduler's warning or preemption: `last` saved, the same command resumes the run
CUT_SHORT = (INTERRUPTED[0], PREEMPTED)  # end statuses of a run that will go on later: no export, no after-run tools


class Control:
    """Commands in, from any thread. The loop calls `drain()` between steps and `stop_requested` every step."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._stop_status = INTERRUPTED
        self._refusals: collections.deque[Refusal] = collections.deque()
        self._lock = threading.Lock()  # guards the refusals and the senders below
        self.refusals_lost = 0
        # (command, sender) of the latest queued commands, for the engine's `CommandApplied.sender`: matched by
        # identity (two Pause() from two senders are equal), bounded (a command the engine never applies ages out)
        self._senders: collections.deque[tuple[Command, str]] = collections.deque(maxlen=MAX_SENDERS)

    def put(self, command: Command | dict[str, Any], sender: str = "") -> Command:
        """Queue a command (built, or its JSON form) once checked, and return it; one that fails its checks
        raises BadCommand, for the sender, and is noted (`refuse`) for the run's log. Nothing is queued then."""
        try:
            checked = command_from_dict(command) if isinstance(command, dict) else check_command(command)
        except BadCommand as e:
            self.refuse(e.command, str(e), sender)
            raise
        if sender:
            with self._lock:
                self._senders.append((checked, sender))
        self._queue.put(checked)
        self._wake.set()
        return checked

    def sender_of(self, command: Command) -> str:
        """Who queued this very command object (`put`'s sender), once; "" when unknown."""
        with self._lock:
            for i, (queued, sender) in enumerate(self._senders):
                if queued is command:
                    del self._senders[i]
                    return sender
        return ""

    def refuse(self, command: str, reason: str, sender: str = "") -> None:
        """Note a refused command for the run's log (the engine emits it as `CommandRefused`); nothing is queued."""
        with self._lock:
            if len(self._refusals) >= MAX_REFUSALS:
                self.refusals_lost += 1
                return
            self._refusals.append(Refusal(command, reason, sender))
        self._wake.set()

    def drain_refusals(self) -> list[Refusal]:
        """The refusals noted since the last call (those past MAX_REFUSALS as one line that counts them)."""
        with self._lock:
            out = list(self._refusals)
            self._refusals.clear()
            if self.refusals_lost:
                out.append(Refusal("command", f"{self.refusals_lost} more commands refused (not logged one by one)"))
                self.refusals_lost = 0
        return out

    def drain(self) -> list[Command]:
        out: list[Command] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def request_stop(self, status: str = INTERRUPTED[0], reason: str = INTERRUPTED[1]) -> None:
        """Interrupt the run at the next step boundary (quit, Ctrl+C; `status="preempted"` for a scheduler's
        SIGTERM / SIGUSR1). The first request names the run's end status. Safe from any thread or signal handler."""
        if not self._stop.is_set():
            self._stop_status = (status, reason)
        self._stop.set()
        self._wake.set()

    @property
    def stop_status(self) -> tuple[str, str]:
        """(status, reason) the run ends with when it stops on this request: `RunFinished.status` and `.reason`."""
        return self._stop_status

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float) -> None:
        """Sleep while paused until a command or a stop arrives (or `timeout` passes)."""
        self._wake.wait(timeout)
        self._wake.clear()
