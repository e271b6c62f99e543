"""Progress of long setup steps (a download, a dataset scan, tokenization) as throttled `SetupProgressed` events.

Why throttled here and not in the sinks: a tokenizer or a download loop may call `advance` thousands of times a
second; the UI thread, the recorder and the console must see a few events a second, not one per chunk. Why a
plain callable sink: the engine never prints and never imports the UI; the dashboard, the headless console and
`events.jsonl` all receive the same events. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tuitune.engine.events import Event, SetupProgressed
from tuitune.fmt import fmt_rate

Emit = Callable[[Event], None]
EVERY_S = 0.5  # at most two events a second per task (plus the first and the last)


class Progress:
    """One task's progress: `advance(n)` as work gets done, `finish()` once, at the end (success only: a failure
    is reported by the error that follows). A `None` emit makes it a no-op, for callers with no sink."""

    def __init__(
        self,
        emit: Emit | None,
        task: str,
        detail: str,
        total: float | None,
        unit: str,
        *,
        scale: float = 1.0,
        every_s: float = EVERY_S,
    ) -> None:
        self.emit, self.task, self.detail, self.unit = emit, task, detail, unit
        self.scale, self.every_s = scale, every_s
        self.total = None if total is None else total * scale
        self.done = 0.0
        self.t0 = time.monotonic()
        self._last = -float("inf")
        self.finished = False
        self._send(force=True)

    def advance(self, n: float = 1.0) -> None:
        self.done += n * self.scale
        self._send()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.total is None:
            self.total = self.done
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        if self.emit is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0.05 and self.done else None
        self.emit(
            SetupProgressed(
                task=self.task,
                detail=self.detail,
                done=round(self.done, 3),
                total=None if self.total is None else round(self.total, 3),
                unit=self.unit,
                rate=None if rate is None else round(rate, 3),
                finished=self.finished,
            )
        )


def progress_text(e: SetupProgressed) -> str:
    """One line for the console and the dashboard: `download model.safetensors  12.3/45.6 MB  27%  1.2 MB/s`."""
    digits = 1 if e.unit == "MB" else 0
    done = f"{e.done:,.{digits}f}"
    amount = f"{done}/{e.total:,.{digits}f} {e.unit}" if e.total else f"{done} {e.unit}"
    parts = [f"{e.task} {e.detail}".strip(), amount]
    if e.total and not e.finished:
        parts.append(f"{min(e.done / e.total, 1.0):.0%}")
    if e.rate:
        parts.append(f"{fmt_rate(e.rate, digits, small=1.0)} {e.unit}/s")  # 0.41 batches/s, not 0
    if e.finished:
        parts.append("done")
    return "  ".join(parts)
