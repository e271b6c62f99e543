"""The queue process: runs the entries of a runs folder's queue (`tuitune.runs.queue_file`) one after another.

`python -m tuitune.remote.queue_process FOLDER`, started by `tuitune queue add` (or `queue start`) when none runs
for that folder, the way a run process is started (`spawn.spawn_detached`: a session of its own, SIGHUP ignored,
output in `FOLDER/queue.log`), so it outlives the terminal. Each entry becomes an ordinary detached run process
(`spawn.start_run_process`) in `FOLDER/NAME-qN`: its own `process.json`, control socket and `run.log`, so
`tuitune runs`, `attach`, `ctl` and the picker see it like any run. With GPUs, one run per GPU not already taken by
a queued run (`CUDA_VISIBLE_DEVICES` pinned to it); on CPU, one at a time. Entries added while it runs are picked
up at its next look (every `POLL_S`); it exits once nothing waits and nothing runs.

Queued runs are not interactive: nobody may be there to answer the plateau question, so they take the profile's
headless fallback trigger, as `--headless` runs and sweeps do; attach and `u` still unfreeze by hand.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from tuitune.engine.record.files import WriteFailed
from tuitune.errors import UserError, first_line
from tuitune.exits import ExitCode
from tuitune.runs.process import proc_start_ticks, process_alive
from tuitune.runs.queue_file import QUEUE_LOG, RUNNING, WAITING, Entry, QueueState, QueueStore, process_record
from tuitune.runs.status import SUMMARY_STATUS, run_status

POLL_S = 0.5

# how a run ended (`runs.status`) -> its exit code, for a run this process did not start (adopted from a queue
# process that went away), whose exit status it cannot read
STATUS_CODES = {"finished": ExitCode.OK, "stopped": ExitCode.OK, "interrupted": ExitCode.INTERRUPTED}
STATUS_CODES |= {"preempted": ExitCode.PREEMPTED, "failed": ExitCode.FAILED}


class Launched(Protocol):
    """A started run: `subprocess.Popen`, or what a test's start function returns."""

    pid: int

    def poll(self) -> int | None: ...


StartRun = Callable[[Entry, Path, "str | None"], Launched]


def gpu_slots(environ: Mapping[str, str], count: Callable[[], int]) -> list[str | None]:
    """The devices to run on, one run each: the ids in CUDA_VISIBLE_DEVICES when it is set (as CUDA reads it: up to
    the first negative id; empty: no GPU), else `count()` GPUs numbered from 0; `[None]` (one CPU run) without."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        ids = [str(i) for i in range(count())]
    else:
        ids = []
        for part in (p.strip() for p in visible.split(",")):
            if not part or part.startswith("-"):
                break
            ids.append(part)
    return list(ids) or [None]


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd")  # CUDA's driver opens the first, ROCm's the second


def torch_gpu_count() -> int:
    """GPUs torch sees: called once, only when an entry is about to start and no CUDA_VISIBLE_DEVICES says which
    devices to use. Without a GPU driver's device file no GPU can be used: 0 without importing torch (seconds)."""
    if not any(Path(p).exists() for p in GPU_DEVICE_FILES):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def start_queued_run(entry: Entry, run_dir: Path, gpu: str | None) -> subprocess.Popen:
    """The entry as a detached run process (the profile read now, so a queued file's fixes count), pinned to `gpu`."""
    from tuitune.config import load_profile
    from tuitune.remote.spawn import start_run_process

    profile = load_profile(entry.profile, list(entry.overrides))
    pin = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
    return start_run_process(profile, run_dir, interactive=False, extra_env=pin)


def new_entry_dir(folder: Path, entry: Entry) -> Path:
    """`FOLDER/NAME-qN`, or `-2`, `-3` ... after it when that exists (a queue file made anew numbers from 1 again)."""
    base, n = folder / f"{entry.name}-q{entry.number}", 1
    while True:
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1


class QueueRunner:
    """The loop of the queue process, with its edges as arguments (how a run starts, which devices, how to wait),
    so tests drive it in-process. Every look at the queue is one locked edit of the file: runs that ended are
    recorded, free devices take the next waiting entries, and an empty queue releases the folder."""

    def __init__(
        self,
        store: QueueStore,
        *,
        start: StartRun = start_queued_run,
        slots: Callable[[], list[str | None]] = lambda: gpu_slots(os.environ, torch_gpu_count),
        wait: Callable[[float], None] = time.sleep,
        say: Callable[[str], None] = print,
        pid: int | None = None,
    ) -> None:
        self.store, self.start, self.slots, self.wait, self.say = store, start, slots, wait, say
        self.pid = os.getpid() if pid is None else pid
        self.children: dict[int, Launched] = {}  # entry number -> the run this process started
        self.devices: list[str | None] | None = None  # found once, when the first entry is about to start
        self.stopping = False

    def request_stop(self) -> None:
        """SIGTERM / SIGINT: start nothing more and leave; a running run goes on (a later queue process adopts it)."""
        self.stopping = True

    def run(self) -> int:
        if not self._claim():
            return ExitCode.OK
        while True:
            with self.store.edit() as state:
                self._reap(state)
                if not self.stopping:
                    self._fill(state)
                if self.stopping or not state.with_status(WAITING, RUNNING):
                    # said before the queue is let go: whoever sees it let go finds the line in the log
                    self.say(
                        "queue stopped; a running run goes on" if self.stopping else "queue empty: queue process ends"
                    )
                    state.process = None
                    break
            self.wait(POLL_S)
        return ExitCode.OK

    def _claim(self) -> bool:
        """Own the folder's queue, unless another live queue process does."""
        with self.store.edit() as state:
            record = state.process
            if record and record.get("pid") != self.pid and process_alive(record):
                self.say(f"queue process {record['pid']} already runs this queue; this one ends")
                return False
            if not record or record.get("pid") != self.pid:
                state.process = process_record(self.pid)
        return True

    def _reap(self, state: QueueState) -> None:
        for entry in state.with_status(RUNNING):
            child = self.children.get(entry.number)
            if child is not None:
                code = child.poll()
                if code is None:
                    continue
                del self.children[entry.number]
            elif process_alive({"pid": entry.pid, "proc_start": entry.proc_start}):
                continue  # a run an earlier queue process started: still going
            else:
                code = None
            ended = ended_entry(entry, code)
            state.put(ended)
            self.say(f"#{entry.number} {ended.status} (exit {ended.exit_code}): {entry.run_dir}")

    def _fill(self, state: QueueState) -> None:
        waiting = state.with_status(WAITING)
        if not waiting:
            return
        if self.devices is None:
            self.devices = self.slots()
        busy = {e.gpu for e in state.with_status(RUNNING)}
        for entry, gpu in zip(waiting, [d for d in self.devices if d not in busy]):
            state.put(self._start(entry, gpu))

    def _start(self, entry: Entry, gpu: str | None) -> Entry:
        run_dir = new_entry_dir(self.store.folder, entry)
        now = time.time()
        try:
            child = self.start(entry, run_dir, gpu)
        except (UserError, WriteFailed, OSError) as e:  # a profile that no longer loads, a full disk, no fork
            self.say(f"#{entry.number} failed to start: {first_line(e)}")
            kept = any(run_dir.iterdir())  # a launch.json written before the spawn failed stays to be read
            if not kept:
                run_dir.rmdir()
            failed = dataclasses.replace(entry, status="failed", started=now, ended=now, error=first_line(e, 200))
            return dataclasses.replace(failed, exit_code=ExitCode.BAD_INPUT, run_dir=str(run_dir) if kept else None)
        self.children[entry.number] = child
        where = f" on gpu {gpu}" if gpu is not None else ""
        self.say(f"#{entry.number} {entry.name} started{where}: {run_dir} (pid {child.pid})")
        return dataclasses.replace(
            entry,
            status=RUNNING,
            run_dir=str(run_dir),
            gpu=gpu,
            pid=child.pid,
            proc_start=proc_start_ticks(child.pid),
            started=now,
        )


def ended_entry(entry: Entry, code: int | None) -> Entry:
    """A run that ended: its status as its run directory records it (`finished`, `stopped`, ...; a run that left no
    summary: `failed`) and its exit code (`code`, or for an adopted run the code of that status)."""
    status = run_status(Path(entry.run_dir)) if entry.run_dir else "dead"
    status = status if status in SUMMARY_STATUS.values() else "failed"
    exit_code = code if code is not None else STATUS_CODES.get(status)
    return dataclasses.replace(entry, status=status, exit_code=exit_code, ended=time.time())


def ensure_running(state: QueueState, folder: Path) -> tuple[int, bool]:
    """Start the folder's queue process unless one lives (call with the queue locked, so two `add`s start one):
    its pid, and whether it was started now."""
    if state.process and state.process_alive():
        return int(state.process["pid"]), False
    from tuitune.remote.spawn import spawn_detached

    folder = Path(folder).resolve()
    proc = spawn_detached(["tuitune.remote.queue_process", str(folder)], folder / QUEUE_LOG)
    state.process = process_record(proc.pid)
    return proc.pid, True


def main(argv: list[str] | None = None) -> int:
    """`python -m tuitune.remote.queue_process FOLDER`: SIGHUP ignored; SIGINT / SIGTERM: no new entry is started
    and the process ends (the run in flight goes on)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    folder = Path((sys.argv[1:] if argv is None else argv)[0])

    def say(text: str) -> None:
        try:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
        except (OSError, RuntimeError):  # queue.log unwritable, or a print a signal handler cut into
            pass

    runner = QueueRunner(QueueStore(folder), say=say)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: runner.request_stop())
    say(f"queue process {os.getpid()} for {folder}")
    try:
        return runner.run()
    except UserError as e:  # the queue file damaged under it: said in queue.log; `tuitune queue` says it too
        say(f"error: {e}")
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
