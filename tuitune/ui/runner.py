"""The bridge between the engine thread and the UI: one message type, the default runner, replay input.

The worker thread never touches a widget. Its `emit` posts an `EngineEventReceived` message to the dashboard
screen; the screen folds it into its state on the UI thread. torch, timm and transformers are imported inside
`default_runner`, which only ever runs in the worker thread, after the first frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from tuitune.config import RunProfile
from tuitune.engine.commands import Control
from tuitune.engine.events import Event, MetricsUpdated, RunFailed, SetupProgressed
from tuitune.engine.record.history import Recorded

Emit = Callable[[Event], None]


class Runner(Protocol):
    """Trains or follows a run in the dashboard's worker thread. `profile` None: attach to the run already going in
    `run_dir` (only `DetachedRunner(attach_only=True)` is given that)."""

    def __call__(
        self,
        profile: RunProfile | None,
        run_dir: Path,
        emit: Emit,
        control: Control,
        *,
        interactive: bool = True,
        resume: Path | None = None,
    ) -> Any: ...


RunDirMaker = Callable[[RunProfile, "str | None"], Path]


class EngineEventReceived(Message):
    """The engine emitted an event. Consecutive metric updates may be coalesced when the UI falls behind."""

    def __init__(self, event: Recorded) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # Textual asks the message it is about to handle whether the next queued one may stand for it.
        if not isinstance(message, EngineEventReceived):
            return False
        if isinstance(self.event, SetupProgressed):  # a later report of the same step stands for this one
            return (
                not self.event.finished
                and isinstance(message.event, SetupProgressed)
                and message.event.task == self.event.task
            )
        return isinstance(self.event, MetricsUpdated) and isinstance(message.event, MetricsUpdated)


def default_runner(
    profile: RunProfile | None,
    run_dir: Path,
    emit: Emit,
    control: Control,
    *,
    interactive: bool = True,
    resume: Path | None = None,
) -> Any:
    """The real engine in this process (`--inline`), with the control socket open so others can attach. Imported
    here, in the worker thread, so the first frame never waits for torch."""
    from tuitune.remote.host import serve_run

    if profile is None:
        raise ValueError("an inline run needs a profile; attaching is DetachedRunner(attach_only=True)'s")
    return serve_run(profile, run_dir, emit, control, interactive=interactive, resume=resume, mode="inline")


@dataclass(frozen=True)
class DetachedRunner:
    """The engine in a run process of its own that outlives the terminal (the default): spawn it, unless
    `attach_only`, then follow it over its control socket. The worker thread is a client; the dashboard's
    `Control` is a `ClientControl` (stop = stop the run; detach = leave it running)."""

    attach_only: bool = False
    detachable: bool = True

    def __call__(
        self,
        profile: RunProfile | None,
        run_dir: Path,
        emit: Emit,
        control: Control,
        *,
        interactive: bool = True,
        resume: Path | None = None,
    ) -> Any:
        from tuitune.remote.client import follow

        process = None
        if not self.attach_only:
            from tuitune.remote.spawn import start_run_process

            assert profile is not None
            process = start_run_process(profile, run_dir, resume=resume, interactive=interactive)
        return follow(run_dir, emit, control, process=process)


@dataclass(frozen=True)
class MultiRankRunner:
    """`tuitune train PROFILE --nproc N` with the dashboard: the ranks' launcher (`argv`: its `tuitune` command
    line, headless) in a process of its own, followed over rank 0's control socket like any detached run."""

    argv: tuple[str, ...]
    detachable: bool = True

    def __call__(
        self,
        profile: RunProfile | None,
        run_dir: Path,
        emit: Emit,
        control: Control,
        *,
        interactive: bool = True,
        resume: Path | None = None,
    ) -> Any:
        from tuitune.remote.client import follow
        from tuitune.remote.spawn import start_ranks_process

        return follow(run_dir, emit, control, process=start_ranks_process(list(self.argv), run_dir))


def is_detachable(runner: object) -> bool:
    return bool(getattr(runner, "detachable", False))


def default_run_dir(profile: RunProfile, out: str | None) -> Path:
    from tuitune.engine.session import new_run_dir

    return new_run_dir(profile, out)


@dataclass(frozen=True)
class LiveRun:
    """What the dashboard needs to start a run in its worker."""

    profile: RunProfile | None  # None: attaching to a run that is already going
    run_dir: Path | None = None  # None: the worker creates one with `make_run_dir(profile, out)`
    out: str | None = None
    resume: Path | None = None
    runner: Runner = default_runner
    make_run_dir: RunDirMaker = default_run_dir


def run_in_worker(run: LiveRun, emit: Emit, control: Control) -> None:
    """The body of the thread worker: create the run folder if needed, then train. Failures become `RunFailed`."""
    run_dir = run.run_dir
    try:
        if run_dir is None:
            if run.profile is None:
                raise ValueError("a run to attach to needs its run folder")
            run_dir = run.make_run_dir(run.profile, run.out)
        run.runner(run.profile, run_dir, emit, control, interactive=True, resume=run.resume)
    except Exception as e:  # the engine reports its own failures; this catches the rest (imports, run dir)
        message = " ".join(f"{type(e).__name__}: {e}".split()) if not _is_user_error(e) else " ".join(str(e).split())
        emit(RunFailed(message=message, run_dir=str(run_dir or "")))


def _is_user_error(e: Exception) -> bool:
    from tuitune.errors import UserError

    return isinstance(e, UserError)


def event_time(event: Recorded) -> float | None:
    return getattr(event, "elapsed_s", None)


def paced(events: list[Recorded], speed: float, stopped: Callable[[], bool]) -> Iterator[Recorded]:
    """Yield events spaced as recorded (by their `elapsed_s`), `speed` times faster; each wait capped at 2 s."""
    last: float | None = None
    for event in events:
        t = event_time(event)
        if speed > 0 and t is not None and last is not None and t > last:
            deadline = time.monotonic() + min((t - last) / speed, 2.0)
            while time.monotonic() < deadline and not stopped():
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
        if stopped():
            return
        if t is not None:
            last = t
        yield event
