"""The run queue's file: `FOLDER/queue.json`, one queue per runs folder, read and changed by `tuitune queue`
(add, rm, the list), `tuitune runs`, the picker and the queue process (`tuitune.remote.queue_process`).

Every change is a read-modify-write under an exclusive `fcntl.flock` on `FOLDER/.queue.lock` (`QueueStore.edit`),
written atomically (`atomic_write`: a crash leaves the old file or the new one), so `tuitune queue add` in two
terminals and the queue process never lose each other's changes. Readers that only list take no lock. The file
also names the queue process (pid and kernel start time, as a run's `process.json` does), so an `add` knows
whether one must be started. Plain Python: no torch, no socket, no process started here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.engine.record.files import write_json_atomic
from tuitune.errors import UserError
from tuitune.runs.process import proc_start_ticks, process_alive

__all__ = ["QUEUE_FILE", "Entry", "QueueState", "QueueStore", "process_record"]

QUEUE_FILE = "queue.json"
LOCK_FILE = ".queue.lock"
QUEUE_LOG = "queue.log"  # the queue process's own output
KEEP_ENDED = 500  # ended entries kept in the file (the oldest go first): the record stays bounded
WAITING, RUNNING = "waiting", "running"


@dataclass(frozen=True)
class Entry:
    """One queued run. `status`: waiting, running, then how its run ended (finished, stopped, failed, interrupted,
    preempted) with the run process's `exit_code`."""

    number: int
    profile: str  # the profile file, absolute
    overrides: tuple[str, ...]
    name: str  # the profile's name: the run directory is FOLDER/NAME-qNUMBER
    added: float
    status: str = WAITING
    run_dir: str | None = None
    gpu: str | None = None  # the CUDA_VISIBLE_DEVICES the run was pinned to; None on CPU
    pid: int | None = None
    proc_start: int | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    error: str = ""  # why it failed before its run process could say so (a profile that no longer loads)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overrides"] = list(self.overrides)
        return data

    @property
    def over(self) -> bool:
        return self.status not in (WAITING, RUNNING)


# field -> the JSON types it may hold (None: may be null); checked on every read, so a hand-edited or damaged
# file is refused in one line naming the entry and the key, and never overwritten
_FIELDS: dict[str, tuple[type, ...]] = {
    "number": (int,),
    "profile": (str,),
    "overrides": (list,),
    "name": (str,),
    "added": (int, float),
    "status": (str,),
    "run_dir": (str, type(None)),
    "gpu": (str, type(None)),
    "pid": (int, type(None)),
    "proc_start": (int, type(None)),
    "started": (int, float, type(None)),
    "ended": (int, float, type(None)),
    "exit_code": (int, type(None)),
    "error": (str,),
}
_REQUIRED = ("number", "profile", "overrides", "name", "added")


def _entry(data: Any, where: str) -> Entry:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object")
    for key in _REQUIRED:
        if key not in data:
            raise UserError(f"{where}: {key}: missing")
    for key, value in data.items():
        types = _FIELDS.get(key)
        if types is None:
            raise UserError(f"{where}: {key}: unknown key")
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(f"{where}: {key}: wrong type ({type(value).__name__})")
    if not all(isinstance(o, str) for o in data["overrides"]):
        raise UserError(f"{where}: overrides: expected a list of KEY=VALUE strings")
    return Entry(**{**data, "overrides": tuple(data["overrides"])})


@dataclass
class QueueState:
    """The queue file's content while a writer holds the lock: change it in place; `QueueStore.edit` writes it."""

    entries: list[Entry] = dataclasses.field(default_factory=list)
    next_number: int = 1
    process: dict[str, Any] | None = None  # the queue process: pid, proc_start, host, started

    def add(self, profile: str, overrides: list[str], name: str) -> Entry:
        entry = Entry(self.next_number, profile, tuple(overrides), name, time.time())
        self.next_number += 1
        self.entries.append(entry)
        ended = [e for e in self.entries if e.over]
        drop = {e.number for e in ended[: max(0, len(ended) - KEEP_ENDED)]}
        self.entries = [e for e in self.entries if e.number not in drop]
        return entry

    def get(self, number: int) -> Entry | None:
        return next((e for e in self.entries if e.number == number), None)

    def put(self, entry: Entry) -> None:
        self.entries = [entry if e.number == entry.number else e for e in self.entries]

    def remove(self, number: int) -> None:
        self.entries = [e for e in self.entries if e.number != number]

    def with_status(self, *statuses: str) -> list[Entry]:
        """The entries in one of `statuses`, in queue order (the order they were added)."""
        return sorted((e for e in self.entries if e.status in statuses), key=lambda e: e.number)

    def process_alive(self) -> bool:
        return process_alive(self.process)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "next_number": self.next_number,
            "process": self.process,
            "entries": [e.as_dict() for e in self.entries],
        }


def process_record(pid: int) -> dict[str, Any]:
    """The queue process's record (what `runs.process.process_alive` reads): a pid reused later is not taken for it."""
    return {"pid": pid, "proc_start": proc_start_ticks(pid), "host": socket.gethostname(), "started": time.time()}


class QueueStore:
    """The queue of one folder: `read()` for a look, `edit()` for a change (locked, written atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / QUEUE_FILE

    def read(self) -> QueueState:
        """The queue as last written (an empty one without a file); a damaged file: `UserError` naming it."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return QueueState()
        except OSError as e:
            raise UserError(f"{self.path}: cannot read the queue: {e.strerror}") from None
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as e:
            raise UserError(f"{self.path}: not a queue file (invalid JSON: {e})") from None
        return self._state(data)

    def _state(self, data: Any) -> QueueState:
        where = str(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise UserError(f"{where}: entries: expected a list (not a queue file?)")
        entries = [_entry(e, f"{where}: entry {i + 1}") for i, e in enumerate(data["entries"])]
        numbers = [e.number for e in entries]
        if len(set(numbers)) != len(numbers):
            raise UserError(f"{where}: entries: an entry number appears twice")
        next_number = data.get("next_number", 1)
        if isinstance(next_number, bool) or not isinstance(next_number, int):
            raise UserError(f"{where}: next_number: expected an integer")
        process = data.get("process")
        if process is not None and not isinstance(process, dict):
            raise UserError(f"{where}: process: expected an object or null")
        return QueueState(entries, max([next_number, *(n + 1 for n in numbers)]), process)

    @contextmanager
    def edit(self) -> Iterator[QueueState]:
        """The queue under an exclusive lock; written back atomically when the block ends without an error (an
        error leaves the file as it was)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / LOCK_FILE, "a")  # noqa: SIM115 (held open for the block: the lock is on it)
        except OSError as e:
            raise UserError(f"{self.folder}: cannot open the queue's lock file: {e.strerror}") from None
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            state = self.read()
            before = state.as_dict()
            yield state
            if state.as_dict() != before:
                write_json_atomic(self.path, state.as_dict())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a queue file holds")


def describe(entry: Entry) -> str:
    """An entry's status cell: `waiting`, `running`, `finished (exit 0)`, `failed (exit 2: the reason)`."""
    if not entry.over:
        return entry.status + (f" (gpu {entry.gpu})" if entry.status == RUNNING and entry.gpu is not None else "")
    code = f"exit {entry.exit_code}" if entry.exit_code is not None else "exit unknown"
    return f"{entry.status} ({code}{': ' + entry.error if entry.error else ''})"


def shown_path(path: str) -> str:
    """A path relative to the working folder when it lies under it (shorter lines), else as recorded."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def format_queue(state: QueueState, folder: Path) -> str:
    """`tuitune queue`: whether a queue process runs, then one row per entry, in queue order."""
    from tuitune.runs.status import clock, table_lines

    waiting = len(state.with_status(WAITING))
    if state.process_alive() and state.process:
        head = f"queue of {folder}: queue process {state.process['pid']} runs it"
    elif waiting:
        head = f"queue of {folder}: no queue process runs; {waiting} waiting (tuitune queue start starts one)"
    else:
        head = f"queue of {folder}: no queue process (nothing waits; tuitune queue add starts one)"
    if not state.entries:
        return f"{head}\nthe queue is empty"
    header = ("#", "profile", "overrides", "status", "run dir", "started", "ended")
    rows = [
        (
            str(e.number),
            shown_path(e.profile),
            " ".join(e.overrides) or "-",
            describe(e),
            shown_path(e.run_dir) if e.run_dir else "-",
            clock(e.started),
            clock(e.ended),
        )
        for e in sorted(state.entries, key=lambda e: e.number)
    ]
    return "\n".join([head, *table_lines(header, rows)])


def waiting_entries(folder: Path) -> list[Entry]:
    """The waiting entries of the folder's queue, in order (`tuitune runs` and the picker show them); none without
    a queue, or with a damaged queue file (`tuitune queue` says what is wrong with it)."""
    try:
        return QueueStore(folder).read().with_status(WAITING)
    except UserError:
        return []


def waiting_lines(folder: Path) -> list[str]:
    """`tuitune runs`: a line per waiting entry, under its table."""
    return [waiting_text(e) for e in waiting_entries(folder)]


def waiting_text(entry: Entry) -> str:
    overrides = f" ({' '.join(entry.overrides)})" if entry.overrides else ""
    return f"queued #{entry.number}: {entry.name}{overrides}, waiting"
