"""Steer a live run without its dashboard: one command over the run's control socket, and the engine's answer.

`steer(run_dir, verb, args)` is what `tuitune ctl RUN_DIR VERB [ARGS]` runs, and what an agent interface calls: it
connects (the socket is the run's, mode 0600, its user's only), reads the run's history up to the live point (to know
which question is open), sends the verb's command(s) with a request id and waits for the engine's answer to each: the
server's `Reply` (tuitune/remote/confirm.py matches the engine's `CommandApplied` / `CommandRefused` to the command).
Every dashboard key has its verb (`VERBS`). The result is an `Outcome`: applied, refused (with the reason), or
unreachable (no live run, no socket, another user's, the run ended first, no answer in time). Plain Python.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    Command,
    FindLR,
    GenerateSamples,
    Pause,
    Resume,
    RollBackPhase,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import to_dict
from tuitune.engine.questions import ENDS, questions_after
from tuitune.errors import UserError
from tuitune.exits import ExitCode
from tuitune.remote import protocol
from tuitune.remote.client import RunClient
from tuitune.remote.confirm import REPLY
from tuitune.runs.process import PROCESS_FILE, read_json, socket_path
from tuitune.runs.status import is_run_dir, run_status

APPLIED, REFUSED, UNREACHABLE = "applied", "refused", "unreachable"
EXIT_CODES = {APPLIED: ExitCode.OK, REFUSED: ExitCode.FAILED, UNREACHABLE: ExitCode.BAD_INPUT}
TIMEOUT_S = 60.0  # for the engine's answer: it acts at its next step boundary (an LR sweep takes its steps first)
ALL_GROUPS = "all"  # `lr all FACTOR`: every group's LR (ScaleGroupLR with no group), as the dashboard's +/- unselected


@dataclass(frozen=True)
class Outcome:
    status: str  # APPLIED, REFUSED or UNREACHABLE
    message: str  # one line per command answered
    events: tuple[dict[str, Any], ...] = ()  # the engine's events that answered, as JSON objects

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


class Unreachable(Exception):
    """The run cannot be reached, or stopped answering: the message says why, in one line."""


@dataclass
class Questions:
    """The questions the run asks now, folded from its events by the rule the dashboard's reducer uses
    (`engine.questions.questions_after`), and the latest LR sweep (`lr-find --apply` applies its suggestion)."""

    plateau: dict[str, Any] | None = None
    lr: dict[str, Any] | None = None
    last_sweep: dict[str, Any] | None = field(default=None, repr=False)  # the latest LRFound

    def fold(self, data: dict[str, Any]) -> None:
        if data.get("type") == "LRFound":
            self.last_sweep = data
        self.plateau, self.lr = questions_after(self.plateau, self.lr, data)


class Session:
    """One connection to a live run, past its history: commands out, the engine's answers back."""

    def __init__(self, run_dir: Path, timeout: float = TIMEOUT_S, sender: str = "") -> None:
        self.run_dir, self.timeout = Path(run_dir), timeout
        self.sender = sender  # the tag the run's log names the commands' sender by ("agent"); "" for none
        self.questions = Questions()
        self.client = _connect(self.run_dir)
        self._sent = 0
        try:
            self._read_history()
        except Unreachable:
            self.client.close()
            raise

    def _read_history(self) -> None:
        while (data := self._next(time.monotonic() + self.timeout)).get("type") != protocol.LIVE:
            self.questions.fold(data)

    def _next(self, deadline: float) -> dict[str, Any]:
        """The next line; Unreachable when the connection ends or nothing comes before `deadline`."""
        self.client.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = self.client.read()
        except ValueError:  # a line that is not JSON: not a tuitune run at the other end
            raise Unreachable(f"{self.run_dir}: the control socket sent something that is not JSON") from None
        if data is None:
            if time.monotonic() >= deadline:
                raise Unreachable(
                    f"{self.run_dir}: no answer from the run in {self.timeout:.0f} s (sent, not confirmed)"
                )
            raise Unreachable(f"{self.run_dir}: the run closed the connection before it answered")
        return data

    def send(self, command: Command) -> Outcome:
        """Send `command` with a fresh id; wait for the engine's answer (the events meanwhile fold into
        `questions`). A `Refused` line (the server's check at the socket) is the refusal of this command: one is
        outstanding at a time."""
        self._sent += 1
        request_id = f"ctl-{os.getpid()}-{self._sent}"
        try:
            self.client.send_raw(_command_line(command, request_id, self.sender))
        except OSError as e:
            raise Unreachable(f"{self.run_dir}: could not send to the run: {e}") from None
        deadline = time.monotonic() + self.timeout
        name = type(command).__name__
        while True:
            data = self._next(deadline)
            kind = data.get("type")
            if kind == REPLY and data.get("id") == request_id:
                return answered(name, data)
            if kind == protocol.REFUSED:
                return Outcome(REFUSED, refusal(name, data.get("reason")), (data,))
            self.questions.fold(data)
            if kind in ENDS:
                raise Unreachable(f"{self.run_dir}: the run ended ({kind}) before it answered {name}")

    def close(self) -> None:
        self.client.close()


def refusal(name: str, reason: Any) -> str:
    """`refused: ScaleGroupLR: <reason>`, the command named once (the engine's reasons start with it already)."""
    text = str(reason or "no reason given")
    return f"refused: {text}" if text.startswith(f"{name}: ") else f"refused: {name}: {text}"


def answered(name: str, reply: dict[str, Any]) -> Outcome:
    """The `Reply` line for command `name` as an outcome: `applied: ScaleGroupLR (layer4 LR x1.5) at epoch 3,
    step 70`, or `refused: ScaleGroupLR: <reason>`."""
    event = reply.get("event") if isinstance(reply.get("event"), dict) else None
    events = (event,) if event else ()
    if not reply.get("ok"):
        return Outcome(REFUSED, refusal(name, reply.get("reason") or (event or {}).get("reason")), events)
    e = event or {}
    detail = f" ({e['detail']})" if e.get("detail") else ""
    where = f" at epoch {e.get('epoch', '?')}, step {e.get('global_step', '?')}" if e else ""
    return Outcome(APPLIED, f"applied: {name}{detail}{where}", events)


def _command_line(command: Command, request_id: str, sender: str = "") -> bytes:
    tag = {"sender": sender} if sender else {}
    return (json.dumps({**to_dict(command), "id": request_id, **tag}, separators=(",", ":")) + "\n").encode()


def _connect(run_dir: Path) -> RunClient:
    """The run's socket, or Unreachable saying why in one line (no run here, not live, no socket, refused)."""
    if not is_run_dir(run_dir):
        raise Unreachable(f"{run_dir}: not a tuitune run directory (no events.jsonl or process.json)")
    status = run_status(run_dir)
    if status != "live":
        raise Unreachable(f"{run_dir}: the run is not live ({status})")
    path = socket_path(run_dir)
    if path is None:
        raise Unreachable(f"{run_dir}: the run recorded no control socket")
    try:
        return RunClient(path, timeout=5.0)
    except PermissionError:
        raise Unreachable(f"{run_dir}: permission denied on the control socket {path} (another user's run)") from None
    except (OSError, ValueError) as e:  # refused (RunRefused says why), gone, not listening
        ended = _ended_status(run_dir)  # a run that is ending closes its socket while its process still lives
        if ended:
            raise Unreachable(f"{run_dir}: the run is not live ({ended}; its process is exiting)") from None
        raise Unreachable(f"{run_dir}: cannot connect to the control socket {path}: {e}") from None


def _ended_status(run_dir: Path) -> str:
    """The status its summary.json gives once this process wrote it (not a resumed run's old one), else ""."""
    record, summary = read_json(run_dir / PROCESS_FILE), read_json(run_dir / "summary.json")
    started = record.get("started", 0) if record else 0
    if summary is None or (run_dir / "summary.json").stat().st_mtime < started - 1:
        return ""
    return str(summary.get("status", "ended"))


# ------------------------------------------------------------------------------------------------ verbs

Action = Callable[[Session], Outcome]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"ctl: {what} must be a positive number, got {text!r}")
    return value


def _one(command: Command) -> Action:
    return lambda session: session.send(command)


def _answer(args: Sequence[str]) -> Action:
    if args[0] not in ("yes", "no"):
        raise UserError(f"ctl: answer takes yes or no, got {args[0]!r}")
    yes = args[0] == "yes"

    def act(session: Session) -> Outcome:
        q = session.questions
        if q.lr is not None:
            return session.send(ApplyLR(lr=float(q.lr["suggestion"] if yes else q.lr["current_lr"])))
        if q.plateau is None:
            return Outcome(REFUSED, "refused: answer: the run asks no question now")
        commands: list[Command] = [UnfreezeNext()] if yes else []
        if q.plateau.get("waiting"):
            commands.append(Resume())  # the engine holds the run until it hears the answer
        if not commands:
            return Outcome(APPLIED, "answered no: the run does not wait for this answer; nothing sent")
        return _in_turn(session, commands)

    return act


def _lr_find(apply: bool) -> Action:
    def act(session: Session) -> Outcome:
        found = session.send(FindLR())
        sweep = session.questions.last_sweep
        if found.status != APPLIED or not apply or sweep is None:
            return found
        if float(sweep.get("valley") or 0) == 0 and float(sweep.get("steep") or 0) == 0:
            return Outcome(REFUSED, f"{found.message}\nrefused: ApplyLR: the sweep found no suggestion", found.events)
        applied = session.send(ApplyLR(lr=float(sweep["suggestion"])))
        return Outcome(applied.status, f"{found.message}\n{applied.message}", found.events + applied.events)

    return act


def _in_turn(session: Session, commands: Sequence[Command]) -> Outcome:
    """Each command after the engine answered the one before; the first refusal ends it."""
    lines: list[str] = []
    events: tuple[dict[str, Any], ...] = ()
    for command in commands:
        outcome = session.send(command)
        lines.append(outcome.message)
        events += outcome.events
        if outcome.status != APPLIED:
            break
    return Outcome(outcome.status, "\n".join(lines), events)


@dataclass(frozen=True)
class Verb:
    args: tuple[str, ...]  # the arguments' names, for the usage line; optional ones in [brackets]
    action: Callable[[Sequence[str], bool], Action]  # (arguments, --apply) -> what to do once connected
    help: str

    @property
    def arity(self) -> tuple[int, int]:
        return sum(not a.startswith("[") for a in self.args), len(self.args)


VERBS: dict[str, Verb] = {
    "unfreeze": Verb(
        ("[GROUP]",),
        lambda a, _: _one(SetGroupTrainable(group=a[0], trainable=True) if a else UnfreezeNext()),
        "the next phase now (u); with GROUP: that layer group",
    ),
    "freeze": Verb(("GROUP",), lambda a, _: _one(SetGroupTrainable(group=a[0], trainable=False)), "a layer group"),
    "lr": Verb(
        ("GROUP", "FACTOR"),
        lambda a, _: _one(ScaleGroupLR(group=None if a[0] == ALL_GROUPS else a[0], factor=_number(a[1], "FACTOR"))),
        f"multiply a group's LR by FACTOR (GROUP {ALL_GROUPS}: every group's)",
    ),
    "lr-find": Verb((), lambda a, apply: _lr_find(apply), "sweep the LR (f); --apply: then apply its suggestion"),
    "pause": Verb((), lambda a, _: _one(Pause()), "pause at the next step (p)"),
    "resume": Verb((), lambda a, _: _one(Resume()), "resume a paused run"),
    "save": Verb((), lambda a, _: _one(SaveCheckpoint()), "save a checkpoint now (c)"),
    "stop": Verb((), lambda a, _: _one(StopEarly()), "stop early: save, evaluate, summarise (s)"),
    "adabn": Verb((), lambda a, _: _one(AdaptBatchNorm()), "re-estimate BatchNorm statistics on target data (b)"),
    "generate": Verb((), lambda a, _: _one(GenerateSamples()), "a language model's samples now (g)"),
    "rollback": Verb(
        (), lambda a, _: _one(RollBackPhase()), "undo the current phase: the phase before's best weights (r)"
    ),
    "answer": Verb(("yes|no",), lambda a, _: _answer(a), "answer the open question: the plateau's, a phase's LR"),
}


def plan(verb: str, args: Sequence[str], apply: bool = False) -> Action:
    """The verb's action with its arguments checked (UserError, before anything is sent, for bad ones)."""
    spec = VERBS.get(verb)
    if spec is None:
        raise UserError(f"ctl: unknown verb {verb!r} (one of {', '.join(VERBS)})")
    low, high = spec.arity
    if not low <= len(args) <= high:
        raise UserError(f"ctl: usage: tuitune ctl RUN_DIR {verb} {' '.join(spec.args)}".rstrip())
    if apply and verb != "lr-find":
        raise UserError("ctl: --apply goes with lr-find only")
    return spec.action(args, apply)


def steer(
    run_dir: Path,
    verb: str,
    args: Sequence[str] = (),
    *,
    apply: bool = False,
    timeout: float = TIMEOUT_S,
    sender: str = "",
) -> Outcome:
    """Connect, act, wait for the engine's answer: the library behind `tuitune ctl` (and `tuitune mcp`, whose
    commands name `sender="agent"` for the run's log). Bad arguments raise UserError (nothing sent); every other
    end is an `Outcome`."""
    action = plan(verb, args, apply)
    try:
        session = Session(run_dir, timeout, sender)
    except Unreachable as e:
        return Outcome(UNREACHABLE, str(e))
    try:
        return action(session)
    except Unreachable as e:
        return Outcome(UNREACHABLE, str(e))
    finally:
        session.close()
