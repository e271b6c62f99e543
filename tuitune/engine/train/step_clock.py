"""Where a step's time goes: waiting for data, forward and backward, the optimizer, the rest.

The loop marks the end of each part (`mark(PART)`); the time since the previous mark is that part's. On the CPU a mark
is a `perf_counter` reading. On CUDA it is an event recorded on the current stream: the time between two events is
the GPU's own timeline, so a host that runs ahead of the GPU costs nothing there and a GPU left idle (waiting for a
batch, or for the host's bookkeeping) shows as the part it waited in. Events are read only at the metric read (every
`train.log_every` steps), after its host sync, when every event recorded before it has completed: no per-step
sync. Recorded events go back to a pool, so a long run creates only as many as one window holds.

`split()` gives the window's milliseconds per optimizer step of each part, for `MetricsUpdated.step_split`. Parts:
- data: from the end of the previous step (or micro-batch) to the batch on the device: the loader's `next()` and
  the copy (and the targets' Mixup/CutMix);
- compute: forward, loss and backward;
- optimizer: clipping, the non-finite check, `optimizer.step()`, the schedule, the EMA;
- rest: what follows in the step: the running sums, the metric read, commands at the step boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

DATA, COMPUTE, OPTIMIZER, REST = "data", "compute", "optimizer", "rest"
PARTS = (DATA, COMPUTE, OPTIMIZER, REST)


class HostTimer:
    """Marks as `perf_counter` readings (or `now`'s: tests script it)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now

    def stamp(self) -> float:
        return self.now()

    def elapsed_ms(self, a: float, b: float) -> float:
        return (b - a) * 1000.0

    def release(self, stamps: Iterable[Any]) -> None:
        pass


class CudaTimer:
    """Marks as CUDA events recorded on the current stream, reused once read (`new_event`: tests script it)."""

    def __init__(self, new_event: Callable[[], Any] | None = None) -> None:
        self.new_event = new_event or (lambda: torch.cuda.Event(enable_timing=True))
        self.pool: list[Any] = []
        self.created = 0

    def stamp(self) -> Any:
        if self.pool:
            event = self.pool.pop()
        else:
            event = self.new_event()
            self.created += 1
        event.record()
        return event

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b))

    def release(self, stamps: Iterable[Any]) -> None:
        self.pool.extend(stamps)


class StepClock:
    """Marks per part, summed per window (see the module)."""

    def __init__(self, timer: HostTimer | CudaTimer) -> None:
        self.timer = timer
        self._marks: list[tuple[str, Any]] = []  # (the part that ended, its stamp) since the window's start
        self._start: Any = None
        self._steps = 0

    @classmethod
    def on(cls, device: torch.device) -> StepClock:
        return cls(CudaTimer() if device.type == "cuda" else HostTimer())

    def restart(self) -> None:
        """A new window from now (an epoch's first batch: the time before it, validation and saves, is no step's)."""
        old = [m for _, m in self._marks] + ([self._start] if self._start is not None else [])
        self.timer.release(old)
        self._marks, self._start, self._steps = [], self.timer.stamp(), 0

    def mark(self, part: str) -> None:
        """`part` ended now."""
        self._marks.append((part, self.timer.stamp()))

    def step_done(self) -> None:
        self._steps += 1

    def split(self) -> dict[str, float] | None:
        """The window's milliseconds per optimizer step of each part, then a new window from its last mark. Call
        after a host sync (the metric read) on CUDA. None before any step."""
        if self._start is None or not self._marks or not self._steps:
            return None
        totals = dict.fromkeys(PARTS, 0.0)
        last = self._start
        for part, stamp in self._marks:
            totals[part] += self.timer.elapsed_ms(last, stamp)
            last = stamp
        steps = self._steps
        self.timer.release([self._start, *(m for _, m in self._marks[:-1])])
        self._start, self._marks, self._steps = last, [], 0
        return {part: round(ms / steps, 3) for part, ms in totals.items()}
