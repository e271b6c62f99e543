"""Each run directory as one row: its status, phase, epoch, best metric and what holds it (`tuitune runs`, `tuitune
attach`, the picker's live runs), read from the files alone.

Status, without talking to the process: `live` while the process `process.json` names lives (`tuitune.runs.process`);
otherwise the status `summary.json` records (`finished`, `stopped`, `interrupted`, `preempted`, `failed`) when
that summary was written by this process; otherwise `on host X` when the record names another machine (neither
live nor dead from here); otherwise `dead` (killed with -9, the OOM killer, a reboot): gone without
a summary. Only the few event types that carry progress are parsed from events.jsonl. Plain Python, no torch, no
Textual.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tuitune.config.loop import metric_name, recorded_checkpoint_metric
from tuitune.engine.events import upgraded
from tuitune.engine.record.history import event_lines
from tuitune.errors import UserError
from tuitune.fmt import fmt_value, score_label
from tuitune.runs.process import PROCESS_FILE, other_host, process_alive, read_json

SUMMARY_STATUS = {
    "finished": "finished",
    "stopped_early": "stopped",
    "interrupted": "interrupted",
    "preempted": "preempted",
    "failed": "failed",
}


@dataclass(frozen=True)
class RunInfo:
    """One row of `tuitune runs`."""

    name: str
    path: str
    status: str  # live, finished, stopped, interrupted, preempted, failed, dead
    phase: str  # "2/3"
    epoch: str  # "5/300"
    best: str  # "val acc 98.12% @ 4"
    started: float | None  # unix time
    last_event: float | None  # unix time of the last write to events.jsonl
    pid: int | None  # live runs only
    socket: str | None  # live runs only
    held: str = ""  # a live run that waits for a person: "paused", or the question it asks ("unfreeze layer3?")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_run_dir(path: Path) -> bool:
    return (path / "events.jsonl").exists() or (path / PROCESS_FILE).exists()


def run_status(run_dir: Path) -> str:
    """The run's status from process.json and summary.json only (its events are not read)."""
    run_dir = Path(run_dir)
    return _status(run_dir, read_json(run_dir / PROCESS_FILE), read_json(run_dir / "summary.json"))


def _status(run_dir: Path, record: dict[str, Any] | None, summary: dict[str, Any] | None) -> str:
    """`live` while the recorded process lives; else the summary's status when this process wrote it; else `dead`."""
    started = record.get("started") if record else None
    if process_alive(record):
        return "live"
    if summary is not None and (started is None or (run_dir / "summary.json").stat().st_mtime >= started - 1):
        return SUMMARY_STATUS.get(str(summary.get("status")), str(summary.get("status")))
    host = other_host(record)
    return f"on host {host}" if host else "dead"


def last_event_time(run_dir: Path) -> float | None:
    """Unix time of the last write to the run's events.jsonl, None without one."""
    events = Path(run_dir) / "events.jsonl"
    return events.stat().st_mtime if events.exists() else None


def run_info(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    record = read_json(run_dir / PROCESS_FILE)
    summary = read_json(run_dir / "summary.json")
    events = run_dir / "events.jsonl"
    last_event = last_event_time(run_dir)
    started = record.get("started") if record else None
    status = _status(run_dir, record, summary)
    phase, epoch, best, held = _progress(events, summary if status != "live" else None)
    if started is None:
        started = (run_dir / "profile.toml").stat().st_mtime if (run_dir / "profile.toml").exists() else last_event
    live = status == "live"
    return RunInfo(
        name=run_dir.name,
        path=str(run_dir),
        status=status,
        phase=phase,
        epoch=epoch,
        best=best,
        started=started,
        last_event=last_event,
        pid=record["pid"] if live and record else None,
        socket=record.get("socket") if live and record else None,
        held=held if live else "",
    )


def _best_text(key: str, value: Any, epoch: Any, metric: str) -> str:
    """`val acc 90.00% @ 42`, `val loss 0.2100 @ 3`, `val exact match 50.00% @ 2`; `-` before a best epoch."""
    if not isinstance(value, (int, float)):
        return "-"
    return f"{score_label(key, metric)} {fmt_value(key, value, metric)} @ {epoch}"


def _progress(events: Path, summary: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """Phase, epoch, best metric and what holds the run (see `_held`) from the events (only the few types that
    carry them are parsed). Those are events the recorder's snapshot (`history.jsonl`) keeps whole, so the lines
    are its kept lines and the ones after it (`event_lines`): time that does not grow with the run."""
    phases = epochs = phase = epoch = 0
    metric, key, best, best_epoch, held = "acc", "val_score", None, None, ""
    try:
        for line in _text_lines(events):
            if line.startswith('{"type":"RunStarted"'):
                e = _loads(line)
                phases, epochs, phase = len(e.get("phases", ())), e.get("epochs", 0), e.get("phase", 0)
                metric = e.get("metric", "acc")
                key = recorded_checkpoint_metric(e.get("profile", {}))
                epoch = e.get("start_epoch", epoch)
            elif line.startswith('{"type":"EpochEnded"'):
                e = _loads(line)
                epoch, phase = e.get("epoch", epoch), e.get("phase", phase)
                if e.get("is_best"):  # the checkpoint metric's value: a field, or one of the extras
                    e = upgraded(e)  # (logs before the rename: val_acc)
                    best, best_epoch = e.get(key, e.get("extra", {}).get(key)), epoch
            elif line.startswith('{"type":"PhaseChanged"'):
                phase = _loads(line).get("phase", phase)
            held = _held(line, held)
    except (OSError, UserError):  # no events.jsonl (yet), or it went away
        pass
    if summary and isinstance(summary.get("best"), dict) and summary["best"].get("value") is not None:
        b = summary["best"]
        key, best, best_epoch = metric_name(str(b.get("metric", key))), b["value"], b.get("epoch")
    text = _best_text(key, best, best_epoch, metric)
    return (f"{phase + 1}/{phases}" if phases else "-"), (f"{epoch}/{epochs}" if epochs else "-"), text, held


_PARSED = tuple(b'{"type":"%s"' % t for t in (b"RunStarted", b"EpochEnded", b"PhaseChanged", b"UnfreezeSuggested"))
_COMMAND, _READING = b'{"type":"CommandApplied"', '{"type":"MetricsUpdated"'


def _text_lines(events: Path) -> Iterator[str]:
    """The lines `_progress` and `_held` read, decoded: the types they parse; a reading as its type alone (it only
    ends a hold, and half the lines are readings). Every other line leaves both as they were: skipped undecoded."""
    reading = _READING.encode()
    for raw in event_lines(events):
        if raw.startswith(_PARSED) or raw.startswith(_COMMAND):
            yield raw.decode("utf-8", errors="replace")
        elif raw.startswith(reading):
            yield _READING


def _held(line: str, held: str) -> str:
    """What holds a run after this event line: a plateau question that waits for its answer (`strategy.plateau_wait`,
    the demo's), a pause, or nothing once it trains again. A detached run can wait for days: `tuitune runs` says so."""
    if line.startswith('{"type":"UnfreezeSuggested"') and '"waiting":true' in line:
        return "waiting: unfreeze " + ", ".join(_loads(line).get("next_groups", ())) + "?"
    if line.startswith('{"type":"CommandApplied"'):
        command = _loads(line).get("command")
        return "paused" if command == "Pause" else "" if command in ("Resume", "UnfreezeNext") else held
    if line.startswith(('{"type":"MetricsUpdated"', '{"type":"EpochEnded"')):
        return ""
    return held


def _loads(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:  # a torn last line
        return {}
    return data if isinstance(data, dict) else {}


def list_runs(folder: Path) -> list[RunInfo]:
    """Every run directory directly under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = [run_info(p) for p in sorted(folder.iterdir()) if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.name))


def live_runs(folder: Path) -> list[RunInfo]:
    """Live runs under `folder`, newest first: only the runs whose process lives have their events read."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    alive = [p for p in folder.iterdir() if p.is_dir() and is_run_dir(p) and process_alive(read_json(p / PROCESS_FILE))]
    runs = sorted((run_info(p) for p in alive), key=lambda r: (r.started or 0.0, r.name))
    return [r for r in reversed(runs) if r.status == "live"]


def clock(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def format_table(runs: list[RunInfo]) -> str:
    header = ("name", "status", "phase", "epoch", "best", "started", "pid")
    rows = [
        (
            r.name,
            r.status
            + (f" (last event {clock(r.last_event)[11:]})" if r.status == "dead" else "")
            + (f", {r.held}" if r.held else ""),
            r.phase,
            r.epoch,
            r.best,
            clock(r.started),
            str(r.pid) if r.pid else "",
        )
        for r in runs
    ]
    return "\n".join(table_lines(header, rows))


def table_lines(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Plain text columns (`tuitune runs`, `tuitune compare`): each as wide as its widest cell, two spaces apart."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]


def dead_message(info: RunInfo) -> str:
    """The one line `tuitune attach` prints for a dead run."""
    return (
        f"{info.path}: the run process is gone and wrote no summary (dead; last event at "
        f"{clock(info.last_event)}): see what it recorded with `tuitune replay {info.path}`, continue it "
        f"with `tuitune train --resume {info.path}`"
    )
