"""The record a run process keeps in its run directory, and whether that process still lives.

A run process writes `process.json` when it starts (pid, the kernel's start time of that pid, its control socket's
path, mode, host) and marks it ended when its summary is written; its output goes to `run.log`. Whether it lives is
read from /proc, never by talking to it: the pid must be alive and be the same process (its start time matches, so a
pid reused after a reboot is not mistaken for the run). The run process (`tuitune.remote.host`) writes the record;
`tuitune.runs.status`, the clients of `tuitune.remote` and the sweep's worker checks read it. Plain Python.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tuitune.engine.record.files import write_json_atomic

__all__ = [
    "LOG_FILE",
    "PROCESS_FILE",
    "log_tail",
    "mark_ended",
    "proc_start_ticks",
    "process_alive",
    "read_json",
    "socket_path",
    "write_process_record",
]

PROCESS_FILE = "process.json"
LOG_FILE = "run.log"  # a run process's own output (its console lines, a traceback that escaped the engine)


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time since boot, in clock ticks); None if the pid is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def write_process_record(run_dir: Path, socket_path: Path, mode: str) -> dict[str, Any]:
    """Atomically record this process as the run's owner (replacing the record of an earlier, resumed one)."""
    record = {
        "pid": os.getpid(),
        "proc_start": proc_start_ticks(os.getpid()),
        "socket": str(socket_path),
        "started": time.time(),
        "mode": mode,
        "host": socket.gethostname(),
        "uid": os.getuid(),
    }
    write_json_atomic(run_dir / PROCESS_FILE, record)
    return record


def mark_ended(run_dir: Path) -> None:
    """The run is over (its summary is written): the process may live on (a headless `main()` in a test, an
    `--inline` dashboard going back to the picker), but it no longer owns a live run."""
    record = read_json(run_dir / PROCESS_FILE)
    if record is not None and record.get("pid") == os.getpid():
        record["ended"] = time.time()
        write_json_atomic(run_dir / PROCESS_FILE, record)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def other_host(record: dict[str, Any] | None) -> str:
    """The host named by a process record of a run not marked ended, when it is not this one ("" otherwise): a run
    directory on a shared disk, whose process this machine can neither see alive nor call dead."""
    if not record or record.get("ended"):
        return ""
    host = record.get("host")
    return str(host) if host not in (None, socket.gethostname()) else ""


def process_alive(record: dict[str, Any] | None) -> bool:
    if not record or not isinstance(record.get("pid"), int) or record.get("ended"):
        return False
    if record.get("host") not in (None, socket.gethostname()):
        return False  # a run directory on a shared disk, owned by a process on another machine: not ours to see
    ticks = proc_start_ticks(record["pid"])
    return ticks is not None and (record.get("proc_start") is None or ticks == record["proc_start"])


def socket_path(run_dir: Path) -> Path | None:
    """The control socket the run's process recorded; None before it recorded one (or without a record)."""
    record = read_json(Path(run_dir) / PROCESS_FILE)
    return Path(record["socket"]) if record and record.get("socket") else None


def log_tail(run_dir: Path, lines: int = 3) -> str:
    """The last lines of run.log, on one line (why a run process ended before it could be attached to)."""
    try:
        text = (Path(run_dir) / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
