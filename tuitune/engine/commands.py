"""Commands: what the world asks of a running engine, and the thread-safe channel that carries them.

The UI (or a signal handler) calls `Control.put`; the training loop drains the queue at step boundaries, applies
each command and acknowledges it with a `CommandApplied` event. `stop` is a flag rather than a queued command so
that the loop sees it at every step, even while paused, and quitting never hangs.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Union


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
]


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

    def put(self, command: Command) -> None:
        self._queue.put(command)
        self._wake.set()

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
