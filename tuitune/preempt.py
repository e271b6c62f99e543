"""Signals that stop a run process, and how it ends for each: Ctrl+C (SIGINT) interrupts the run (`interrupted`,
exit 130); SIGTERM and SIGUSR1 preempt it (`preempted`, exit 75). SIGUSR1 is what SLURM's `--signal` sends before
a time limit and SIGTERM what it sends at preemption or the limit (SIGKILL follows after `KillWait`): either way
the engine finishes its current step, saves `last`, writes the summary, and the same command line
(`tuitune train PROFILE --out RUN_DIR --resume auto`) continues the run when the scheduler requeues it. Unhandled,
SIGUSR1 would end Python at once and lose everything since the last epoch's checkpoint.

Plain Python (no torch): the CLI installs these before the engine loads."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from tuitune.engine.commands import PREEMPTED, Control

__all__ = ["PREEMPT_SIGNALS", "install", "preempt"]

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def preempt(control: Control, signum: int) -> bool:
    """Ask the run to stop as `preempted`; True the first time (a stop already asked for keeps its status)."""
    first = not control.stop_requested
    name = signal.Signals(signum).name
    control.request_stop(PREEMPTED, f"preempted by {name}; the same command resumes it from `last`")
    return first


def install(control: Control, say: Callable[[str], None]) -> dict[int, Any]:
    """SIGTERM and SIGUSR1 preempt the run on `control`; `say` tells the log once. Returns the previous handlers
    (for `restore`). Main thread only, as `signal.signal` requires."""

    def on_signal(signum: int, frame: Any) -> None:
        if preempt(control, signum):
            say(f"{signal.Signals(signum).name}: saving the last checkpoint and stopping at the next step (preempted)")

    return {s: signal.signal(s, on_signal) for s in PREEMPT_SIGNALS}


def restore(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)
