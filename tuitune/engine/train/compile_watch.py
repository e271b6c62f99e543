"""`train.compile` across a run's changes: what torch.compile compiled, counted and reported as `ModelCompiled`.

Dynamo calls back at the start and the end of every compilation (`torch._dynamo.callback`); `CompileWatch` counts
them and their time on the training thread that compiles, and the loop reports what is new at its metric reads
and epoch ends (no per-step work). A compile id reads `frame/attempt`: an attempt above 0 is a recompile (a guard
of the frame's graph failed: a new input shape, a flag the graph depends on).

Each change of the trainable set changes what autograd records (which parameters require grad), so the graph compiled
for the last set fails its guards. Dynamo keeps every variant up to `recompile_limit` (8) per frame and then runs the
model eagerly for the rest of the run, silently but for one warning: a progressive run of more than 8 phases (a ViT
has 14 groups) would lose compilation in its last, most expensive phases. `drop_graphs` is called at each change
instead: the old set's graphs are never used again, so each phase compiles once, afresh.

The callbacks are process-wide: two runs compiling in one process at once would count each other's graphs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from tuitune.engine.events import ModelCompiled


class CompileWatch:
    """Counts compilations between `open()` and `close()`; `take()` hands over what is new since the last take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # compilation may end on another thread (lazy backward)
        self._started: dict[str, float] = {}
        self.total = 0
        self._new = self._recompiles = 0
        self._seconds = 0.0
        self._handler: Any = None

    def open(self) -> CompileWatch:
        from torch._dynamo.callback import callback_handler

        self._handler = callback_handler
        callback_handler.register_start_callback(self.started)
        callback_handler.register_end_callback(self.ended)
        return self

    def close(self) -> None:
        if self._handler is not None:
            for remove, callback in (
                (self._handler.remove_start_callback, self.started),
                (self._handler.remove_end_callback, self.ended),
            ):
                try:
                    remove(callback)
                except ValueError:  # already gone (torch._dynamo.reset() clears every callback)
                    pass
            self._handler = None

    def started(self, args: Any) -> None:
        with self._lock:
            self._started[str(args.compile_id)] = time.perf_counter()

    def ended(self, args: Any) -> None:
        key = str(args.compile_id)
        with self._lock:
            t0 = self._started.pop(key, None)
            self._seconds += time.perf_counter() - t0 if t0 is not None else 0.0
            self._new += 1
            self.total += 1
            self._recompiles += is_recompile(key)

    def take(self) -> tuple[int, int, float] | None:
        """(compiles, recompiles, seconds) since the last take; None when nothing was compiled."""
        with self._lock:
            if not self._new:
                return None
            out = (self._new, self._recompiles, self._seconds)
            self._new = self._recompiles = 0
            self._seconds = 0.0
            return out


def report(watch: CompileWatch | None, emit: Any, epoch: int, global_step: int) -> None:
    """Emit `ModelCompiled` for what was compiled since the last report, if anything."""
    new = watch.take() if watch is not None else None
    if new is not None and watch is not None:
        compiles, recompiles, seconds = new
        emit(ModelCompiled(compiles, recompiles, round(seconds, 3), watch.total, epoch, global_step))


def is_recompile(compile_id: str) -> bool:
    """`"0/1"`: frame 0's second compilation; `"[0/1]"`, `"0/1_2"` (a nested or lazy one) alike."""
    attempt = compile_id.strip("[]").split("/")[-1].split("_")[0]
    return attempt.isdigit() and int(attempt) > 0


def drop_graphs() -> None:
    """Forget every compiled graph (not the callbacks): the trainable set changed, so they are never used again."""
    torch._dynamo.reset_code_caches()
