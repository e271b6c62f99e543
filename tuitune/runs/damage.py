"""What is damaged in a run directory, as one line per finding: `runs`, `attach`, `replay`, `compare` and
`train --resume` print these (on stderr) and go on with what is intact.

A torn last line in `events.jsonl` (power cut, kill -9 mid-write: readers skip it, a resumed run cuts it off), a
missing or unreadable `summary.json` of a run that is over, a `process.json` that cannot be read, that names
another host (a shared disk: neither live nor dead from here) or a pid now reused by another process. Plain
Python: no torch, no Textual.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tuitune.runs.process import PROCESS_FILE, other_host, proc_start_ticks, process_alive, read_json

SUMMARY_FILE = "summary.json"


def torn_tail(path: Path) -> int:
    """Bytes after the last newline of `path` (0: it ends on a whole line, is empty, or is missing). Every record
    line is written with its newline, so anything after the last one is a line cut off mid-write."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            back = min(size, 1 << 16)
            f.seek(size - back)
            tail = f.read(back)
    except OSError:
        return 0
    if not tail or tail.endswith(b"\n"):
        return 0
    return len(tail) - tail.rfind(b"\n") - 1  # no newline in the last 64 KiB: at least that much


def reused_pid(record: dict[str, Any] | None) -> bool:
    """The recorded pid is alive on this host but is another process (its start time differs): the run's is gone."""
    if not record or record.get("ended") or other_host(record) or not isinstance(record.get("pid"), int):
        return False
    ticks = proc_start_ticks(record["pid"])
    return ticks is not None and record.get("proc_start") is not None and ticks != record["proc_start"]


def damage_notes(run_dir: Path, *, summary: bool = True) -> list[str]:
    """One line per damaged record of `run_dir`; `summary=False` leaves out the summary's absence where the caller
    says it already (`runs` and `attach` call such a run dead) or it is no damage (a run to resume was cut off)."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / PROCESS_FILE)
    if process_alive(record):  # its process is writing: nothing is damaged, a last line may be on its way
        return []
    notes: list[str] = []
    events = run_dir / "events.jsonl"
    if torn := torn_tail(events):
        notes.append(
            f"{events}: the last line is torn ({torn} bytes with no newline: cut off mid-write); read up to it"
        )
    pid = record.get("pid") if record else None
    if record is None and (run_dir / PROCESS_FILE).exists():
        notes.append(f"{run_dir / PROCESS_FILE}: unreadable; the run's process is unknown")
    elif host := other_host(record):
        notes.append(f"{run_dir}: process.json names run process {pid} on host {host}: its state is not known here")
    elif reused_pid(record):
        notes.append(f"{run_dir}: pid {pid} now belongs to another process: the run's own process is gone")
    path = run_dir / SUMMARY_FILE
    if not path.exists() and summary and not other_host(record):
        notes.append(f"{run_dir}: no {SUMMARY_FILE} (the run ended without writing one); read from its events")
    elif path.exists() and read_json(path) is None:
        notes.append(f"{path}: unreadable; read from the run's events instead")
    return notes


def say_damage(run_dirs: list[Path], *, summary: bool = True) -> None:
    """Print each run's damage notes, one line each, on stderr (stdout stays the command's own output)."""
    for run_dir in run_dirs:
        for note in damage_notes(run_dir, summary=summary):
            print(f"tuitune: note: {note}", file=sys.stderr, flush=True)
