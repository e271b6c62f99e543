"""The run directory, written from the event stream alone.

`RunRecorder` is one more event sink beside the UI or the console: `events.jsonl` (every event), `metrics.csv`,
the resolved `profile.toml`, `summary.json` and `history.jsonl` (the condensed history a first frame reads:
tuitune/engine/record/history.py). Because it sees nothing but events, a replayed run and a live one
leave the same record. Plain Python: no torch.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tuitune.config import RunProfile, dump_toml
from tuitune.engine.events import (
    EpochEnded,
    Event,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    event_from_json,
    to_json,
)
from tuitune.engine.record import history
from tuitune.engine.record.files import WriteFailed, write_json_atomic
from tuitune.errors import UserError

METRIC_COLUMNS = (
    "kind",
    "epoch",
    "step",
    "global_step",
    "train_loss",
    "train_score",
    "val_loss",
    "val_score",
    "samples_per_s",
    "elapsed_s",
    "phase",
)


def new_run_dir(profile: RunProfile, out: str | None = None, force: bool = False) -> Path:
    """Create the run directory: `--out DIR` as given, else `runs/<name>-<timestamp>`. An existing run (one with
    an `events.jsonl`) is never reused without `force`, so nothing saved is overwritten by accident."""
    if out:
        path = Path(out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{profile.name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{profile.name}-{stamp}-{n}"
    if (path / "events.jsonl").exists() and not force:
        raise UserError(
            f"{path}: --out: a run already exists here (use --resume {path} to continue it, or --force to overwrite)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: --out: cannot create the run directory: {e.strerror}") from None
    return path


def _drop_torn_line(path: Path) -> None:
    """A run killed mid-write (the second Ctrl+C, kill -9) can leave half a line at the end of `events.jsonl` or
    `metrics.csv`; appending after it would bury it mid-file, where replay refuses it. Cut it off before a resumed
    run appends."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def tee(*sinks: Callable[[Event], None]) -> Callable[[Event], None]:
    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return emit


class RunRecorder:
    """An event sink that keeps the run directory up to date."""

    def __init__(self, run_dir: Path, *, append: bool = False, started: RunStarted | None = None) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        if append:
            _drop_torn_line(run_dir / "events.jsonl")
        self._events: IO[str] = open(run_dir / "events.jsonl", mode, encoding="utf-8")
        if append:
            self._history = history.condense(run_dir)
        else:
            (run_dir / history.SNAPSHOT).unlink(missing_ok=True)  # another run's, overwritten (--force)
            self._history = history.Condenser()
        metrics_path = run_dir / "metrics.csv"
        new_metrics = not (append and metrics_path.exists())
        if not new_metrics:
            _drop_torn_line(metrics_path)
        self._metrics_file: IO[str] = open(metrics_path, "w" if new_metrics else "a", newline="", encoding="utf-8")
        self._metrics = csv.writer(self._metrics_file)
        if new_metrics:
            self._metrics.writerow(METRIC_COLUMNS)
        self._started: RunStarted | None = started  # given when appending a run's end from outside it
        self._phase = started.phase if started is not None else 0
        self._writing = run_dir / "events.jsonl"  # the file being written now (named when a write fails)
        self._failed = False  # a write failed: only the run's end is recorded now

    def __call__(self, event: Event) -> None:
        """Record `event`. A write that fails raises `WriteFailed` naming the file, once: the run ends on it, and
        the record then takes only that end, as far as the disk lets it (never raising again)."""
        if self._failed:
            if isinstance(event, (RunFinished, RunFailed)):
                self._end_after_failure(event)
            return
        try:
            self._record(event)
        except WriteFailed:
            self._failed = True
            raise
        except OSError as e:
            self._failed = True
            raise WriteFailed(Path(e.filename) if e.filename else self._writing, e) from e

    def _end_after_failure(self, event: RunFinished | RunFailed) -> None:
        for write in (lambda: self._append(event), lambda: self._write_summary(event)):
            try:
                write()
            except (OSError, WriteFailed):
                pass
        self.close()

    def _append(self, event: Event) -> None:
        self._writing = self.run_dir / "events.jsonl"
        line = to_json(event) + "\n"
        self._events.write(line)
        self._events.flush()
        self._history.feed(line.encode("utf-8"))

    def _record(self, event: Event) -> None:
        self._append(event)
        if isinstance(event, MetricsUpdated) and self._history.readings % history.SNAPSHOT_READINGS == 0:
            self._writing = self.run_dir / history.SNAPSHOT
            history.write_snapshot(self.run_dir, self._history)
        if isinstance(event, RunStarted):
            self._started, self._phase = event, event.phase
            self._writing = self.run_dir / "profile.toml"
            self._writing.write_text(dump_toml(event.profile), encoding="utf-8")
        elif isinstance(event, PhaseChanged):
            self._phase = event.phase
        elif isinstance(event, MetricsUpdated):
            self._row(
                "step",
                event.epoch,
                event.step,
                event.global_step,
                event.train_loss,
                event.train_score,
                "",
                "",
                event.samples_per_s,
                event.elapsed_s,
            )
        elif isinstance(event, EpochEnded):
            self._row(
                "epoch",
                event.epoch,
                "",
                event.global_step,
                event.train_loss,
                event.train_score,
                event.val_loss,
                event.val_score,
                event.samples_per_s,
                event.elapsed_s,
            )
        elif isinstance(event, (RunFinished, RunFailed)):
            self._write_summary(event)
            self.close()

    def _row(self, *values: Any) -> None:
        self._writing = self.run_dir / "metrics.csv"
        self._metrics.writerow([_fmt(v) for v in values] + [self._phase])
        self._metrics_file.flush()

    def _write_summary(self, event: RunFinished | RunFailed) -> None:
        summary = summarize(event, self._started)
        write_json_atomic(self.run_dir / "summary.json", summary)

    def close(self) -> None:
        if not self._events.closed:
            try:  # the snapshot only speeds up opening: without it (or with an older one) readers read more lines
                history.write_snapshot(self.run_dir, self._history)
            except (OSError, WriteFailed):
                pass
        for f in (self._events, self._metrics_file):
            if not f.closed:
                try:
                    f.close()
                except OSError:  # its buffered rest could not be written: the failure was reported already
                    pass


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def summarize(event: RunFinished | RunFailed, started: RunStarted | None) -> dict[str, Any]:
    """`summary.json`: what a person (or a script) wants to know about a run without reading its events."""
    profile = started.profile if started else None
    if isinstance(event, RunFailed):
        return {
            "status": "failed",
            "stop_reason": event.message,
            "best": None,
            "final": None,
            "test": None,
            "phases": [],
            "samples_per_s": None,
            "wall_s": None,
            "profile": profile,
            "checkpoints": {},
            "log": event.log_path or None,
        }
    return {
        "status": event.status,
        "stop_reason": event.reason,
        "best": event.best,
        "final": event.final,
        "test": event.test,
        "per_class_acc": event.per_class_acc,
        "per_class": event.per_class_report or None,
        "phases": list(event.phases),
        "epochs": event.epochs,
        "global_step": event.global_step,
        "samples_per_s": event.samples_per_s,
        "wall_s": event.wall_s,
        "profile": profile,
        "checkpoints": event.checkpoints,
        "metric": started.metric if started else "acc",
        "compression": event.compression,
        "export_dir": event.export_dir or None,
        "confusion": [list(row) for row in event.confusion] if event.confusion is not None else None,
        "misclassified": list(event.misclassified),
    }


def read_events(run_dir: Path) -> list[Event]:
    """Every event of a recorded run (a run directory, or its events.jsonl), for replay. A torn last line (a run
    killed mid-write) is skipped; any other unreadable line is an error naming it."""
    path = Path(run_dir)
    path = path / "events.jsonl" if path.is_dir() else path
    if not path.exists():
        raise UserError(f"{path}: no events.jsonl here (is this a tuitune run directory?)")
    lines = path.read_text(encoding="utf-8").splitlines()
    events = []
    for i, line in enumerate(lines, start=1):
        if line.strip():
            try:
                events.append(event_from_json(line))
            except (ValueError, KeyError, TypeError) as e:
                if i == len(lines):
                    break
                raise UserError(f"{path}: line {i}: not a tuitune event ({e})") from None
    return events
