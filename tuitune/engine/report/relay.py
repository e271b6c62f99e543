"""One worker thread per run for the sinks that talk to the world outside the run directory: the experiment
trackers (`trackers.py`) and the webhook (`webhook.py`).

The training thread only hands events over (`Relay.__call__`: a set lookup and a put on an unbounded C queue, a few
microseconds at a metric read); the sinks run on the relay's thread, so a slow tracker or a dead network never
slows a step. The queue is bounded where it can grow: a metric reading (`MetricsUpdated`) that finds
`max_waiting` events still waiting is dropped and counted (one warning at the end) rather than blocking the loop;
the other events are a few per epoch and are always queued.

The sinks start (`begin`) once the session has imported the engine, and while it builds the model and the data.
A sink that raises is dropped with one warning, and the run goes on. The run's end is the one place the training
thread waits (`finish`): the end event is handed over and the sinks get up to `flush_s` to write it and close (the
summary, an artifact, the last webhook), so their warnings reach the record before the end event does. What the
tracker libraries print from this thread goes to `RUN/report.log` (`prints.py`), not over the console or the
dashboard.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from tuitune.engine.events import EpochEnded, Event, MetricsUpdated, RunFailed, RunFinished
from tuitune.engine.report.prints import prints_to
from tuitune.errors import first_line

__all__ = ["ENDS", "Relay", "Sink", "SinkWarning"]

ENDS = frozenset({RunFinished, RunFailed})
MAX_WAITING = 2048  # events waiting for the relay thread before metric readings are dropped
FLUSH_S = 60.0  # the longest the run's end waits for the sinks (3 webhook tries of 10 s fit)
BATCH = 256  # events the relay thread takes at once before the sinks' flush


class SinkWarning(Exception):
    """A sink's trouble that leaves it on (a notification not delivered): its message is the warning, once per sink
    per run; later ones are not repeated."""


class Sink(Protocol):
    """Something the relay thread feeds: `start` at once (imports, connections: while the run sets itself up),
    `handle` each event of a type in `wants` (the run's end always), `flush` after each batch of events (a tracker
    writes what it buffered), `close` once after the end."""

    name: str
    wants: frozenset[type]

    def start(self) -> None: ...

    def handle(self, event: Event) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Relay:
    """The event sink the session adds for the run's trackers and webhook (see the module docstring)."""

    def __init__(
        self,
        sinks: Iterable[Sink],
        log: Path | None = None,
        *,
        max_waiting: int = MAX_WAITING,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._sinks = list(sinks)
        self._wants = frozenset().union(*(s.wants for s in self._sinks)) | ENDS
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._max_waiting = max_waiting
        self._flush_s = flush_s
        self._log = log
        self._dropped = 0
        self._dead: set[str] = set()
        self._warned: set[str] = set()  # sinks that raised a SinkWarning already
        self._warnings: collections.deque[str] = collections.deque()
        self.position = (0, 0)  # (epoch, global step) of the latest reading: where a warning is placed
        self._begun = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tuitune-report", daemon=True)
        self._thread.start()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._sinks]

    # ------------------------------------------------------------------------------------- the training thread
    def begin(self) -> None:
        """Let the sinks start (import their libraries, connect): called once the session has imported the
        engine (torch above all). Two threads importing the same modules at once can meet a module half
        initialized ("cannot import name ... from partially initialized module 'torch.utils'")."""
        self._begun.set()

    def __call__(self, event: Event) -> None:
        """Hand `event` over (never blocks). The run's end goes through `finish` instead."""
        kind = type(event)
        if kind not in self._wants:
            return
        if kind is MetricsUpdated or kind is EpochEnded:
            self.position = (event.epoch, event.global_step)  # type: ignore[union-attr]
            if kind is MetricsUpdated and self._queue.qsize() >= self._max_waiting:
                self._dropped += 1
                return
        self._queue.put(event)

    @property
    def has_warnings(self) -> bool:
        return bool(self._warnings)

    def warnings(self) -> list[str]:
        """The warnings the relay thread raised since the last call (each sink warns once)."""
        out = []
        while self._warnings:
            out.append(self._warnings.popleft())
        return out

    def finish(self, end: RunFinished | RunFailed) -> list[str]:
        """Hand the run's end over and wait (at most `flush_s`) for the sinks to write it and close; the warnings
        not yet taken."""
        self._begun.set()  # a run that ended before it began (an import failed) still tells the webhook
        self._queue.put(end)
        self._thread.join(self._flush_s)
        if self._thread.is_alive():
            self.warn(
                f"report: {', '.join(self.names)} still busy {self._flush_s:g} s after the run ended; "
                f"left behind (their last records may be missing)"
            )
        if self._dropped:
            self.warn(
                f"report: the trackers fell behind; {self._dropped} metric readings were not sent (the run's own "
                f"record has them all)"
            )
        return self.warnings()

    # --------------------------------------------------------------------------------------- the relay thread
    def warn(self, message: str) -> None:
        self._warnings.append(message)

    def _work(self) -> None:
        self._begun.wait()
        with prints_to(self._log):
            for sink in self._sinks:
                self._guard(sink, sink.start)
            ended = False
            while not ended:
                batch = self._take()
                for event in batch:
                    for sink in self._live():
                        if type(event) in sink.wants or type(event) in ENDS:
                            self._guard(sink, functools.partial(sink.handle, event))
                    ended = ended or type(event) in ENDS
                for sink in self._live():
                    self._guard(sink, sink.flush)
            for sink in self._sinks:
                self._guard(sink, sink.close, quiet=sink.name in self._dead)

    def _take(self) -> list[Event]:
        batch = [self._queue.get()]
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _live(self) -> list[Sink]:
        return [s for s in self._sinks if s.name not in self._dead]

    def _guard(self, sink: Sink, call: Callable[[], None], quiet: bool = False) -> None:
        """Run one sink call; an exception drops the sink (one warning), never the run; a `SinkWarning` is a
        warning only (the first of each sink)."""
        try:
            call()
        except SinkWarning as e:
            if sink.name not in self._warned:
                self._warned.add(sink.name)
                self.warn(str(e))
        except Exception as e:
            if not quiet:
                self._dead.add(sink.name)
                self.warn(
                    f"report: {sink.name} failed and is off for this run: {type(e).__name__}: {first_line(e, 200)}"
                )
