"""A run's events for scripts: its history, then the live ones while it lives (`tuitune watch RUN_DIR`).

A live run is read over its control socket, which sends the recorded history and the live events as one stream with
no gap and no repeat (the server counts the lines it sends from `events.jsonl` under the lock the engine's events
pass); a run that ended (or died) is its `events.jsonl`. Each event is handed to `out` as its JSON object, from the
first event at or past `since` (a global step; 0: all of them), under today's names (`events.upgraded`: a run
recorded before `val_acc` became `val_score` reads as one recorded after). Plain Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune.engine.events import EVENT_TYPES, upgraded
from tuitune.exits import ExitCode
from tuitune.remote.client import RunClient
from tuitune.runs.process import socket_path
from tuitune.runs.status import is_run_dir, run_status

Out = Callable[[dict[str, Any]], None]
ENDS = ("RunFinished", "RunFailed")


class _Since:
    """Passes events from the first one whose `global_step` is at least `since` on (events without a step, such as
    a plateau question, pass once that point is reached)."""

    def __init__(self, since: int) -> None:
        self.since, self.open = since, since <= 0

    def __call__(self, data: dict[str, Any]) -> bool:
        if not self.open and isinstance(data.get("global_step"), int) and data["global_step"] >= self.since:
            self.open = True
        return self.open


def watch(run_dir: Path, out: Out, since: int = 0) -> tuple[int, str]:
    """Stream the run's events to `out`; (exit code, a line for stderr or ""). OK once the run's end (or, for a run
    that is not live, its whole record) is out; BAD_INPUT for no run here, or a live run lost before its end."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        return ExitCode.BAD_INPUT, f"{run_dir}: not a tuitune run directory (no events.jsonl or process.json)"
    passes = _Since(since)
    if run_status(run_dir) == "live":
        client = _client(run_dir)
        if client is not None:
            return _follow(run_dir, client, out, passes)
    return _recorded(run_dir, out, passes)


def _client(run_dir: Path) -> RunClient | None:
    path = socket_path(run_dir)
    try:
        return RunClient(path, timeout=5.0) if path is not None else None
    except (OSError, ValueError):  # the run ended (or is ending) as we came: its record has it all
        return None


def _follow(run_dir: Path, client: RunClient, out: Out, passes: _Since) -> tuple[int, str]:
    try:
        for data in client.messages():
            if data.get("type") not in EVENT_TYPES:  # the socket's own lines (Hello, Live, Reply...)
                continue
            if passes(data):
                out(upgraded(data))
            if data["type"] in ENDS:
                return ExitCode.OK, ""
    finally:
        client.close()
    if run_status(run_dir) != "live":  # it ended between its last event and our read: the record has the end
        return ExitCode.OK, ""
    return ExitCode.BAD_INPUT, f"{run_dir}: lost the connection to the run before its end"


def _recorded(run_dir: Path, out: Out, passes: _Since) -> tuple[int, str]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return ExitCode.OK, ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                data = json.loads(line)
            except ValueError:  # a torn last line of a killed run
                continue
            if isinstance(data, dict) and data.get("type") in EVENT_TYPES and passes(data):
                out(upgraded(data))  # a run recorded before the metrics' rename reads under today's names
    return ExitCode.OK, ""
