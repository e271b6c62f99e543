"""What an attach sees and what reads as live, in this process: a real run (`serve_run`, tiny, on CPU) with its real
socket, a client attaching mid-run; real child processes for the liveness of a recorded pid."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from tests.engine.conftest import tiny_profile
from tests.remote.conftest import wait_for
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded
from tuitune.remote.client import RunClient
from tuitune.remote.host import serve_run
from tuitune.runs.process import mark_ended, proc_start_ticks, socket_path, write_process_record
from tuitune.runs.status import run_status

COALESCED = {"MetricsUpdated", "LayersChanged"}  # a viewer behind may get these coalesced (latest wins), by design


class Attach:
    """Attaches to the run at its `at`-th event, from inside the engine's emit (so the run is mid-way), and reads
    every message on a thread of its own until the run process closes the connection."""

    def __init__(self, run_dir: Path, at: int) -> None:
        self.run_dir, self.at, self.seen = run_dir, at, 0
        self.messages: list[dict] = []
        self.thread: threading.Thread | None = None

    def __call__(self, event) -> None:
        self.seen += 1
        if self.seen == self.at:
            path = socket_path(self.run_dir)
            assert path is not None
            client = RunClient(path)
            self.messages.append(client.hello)
            self.thread = threading.Thread(target=lambda: self.messages.extend(client.messages()), daemon=True)
            self.thread.start()

    def split(self) -> tuple[dict, list[dict], list[dict]]:
        assert self.thread is not None, "never attached"
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the connection was not closed when the run ended"
        types = [m["type"] for m in self.messages]
        live = types.index("Live")
        return self.messages[0], self.messages[1:live], self.messages[live + 1 :]


def assert_history_then_live_is_the_record(run_dir: Path, attach: Attach) -> int:
    """The history is exactly the first lines of events.jsonl (as many as the greeting said), and the live events
    are the rest of it, in order, none missing but coalesced metric / layer updates, none twice; the history's
    length."""
    record = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    hello, history, live = attach.split()
    assert hello["type"] == "Hello" and hello["history"] == len(history) > 0
    assert history == record[: len(history)], "the history is not the first lines of events.jsonl"
    rest = iter(record[len(history) :])
    for got in live:
        expected = next(rest, None)
        while expected is not None and expected != got and expected["type"] in COALESCED:
            expected = next(rest, None)
        assert expected == got, f"live event {got['type']} is not the next line of events.jsonl"
    left = [e["type"] for e in rest]
    assert set(left) <= COALESCED, f"lines of events.jsonl never sent: {left}"
    assert live and live[-1]["type"] == "RunFinished"
    return len(history)


def stop_after_an_epoch(attach: Attach) -> tuple:
    """The run's sink and control: one epoch, then a stop (a finished run would export; that adds nothing here)."""
    control = Control()

    def emit(event) -> None:
        attach(event)
        if isinstance(event, EpochEnded):
            control.request_stop()

    return emit, control


def test_an_attach_gets_every_line_of_the_record_once_also_after_a_resume(tmp_path: Path) -> None:
    """Attached mid-run, then again mid-way through the resumed run (after a kill left half a line at the end of
    events.jsonl): history + live = the lines of events.jsonl, the first run's included, the torn line not."""
    run_dir = tmp_path / "run"
    profile = tiny_profile(train={"epochs": 3, "log_every": 1, "domain_shift": False})
    first = Attach(run_dir, at=6)
    end = serve_run(profile, run_dir, *stop_after_an_epoch(first), interactive=False, mode="headless")
    assert end.status == "interrupted" and end.epochs == 1
    assert_history_then_live_is_the_record(run_dir, first)
    before = (run_dir / "events.jsonl").read_text().count("\n")
    with open(run_dir / "events.jsonl", "a") as f:
        f.write('{"type":"MetricsUpdated","epoch":2,"st')  # what a kill -9 mid-write leaves

    again = Attach(run_dir, at=4)
    end = serve_run(profile, run_dir, *stop_after_an_epoch(again), interactive=False, resume=run_dir, mode="headless")
    assert end.status == "interrupted" and end.epochs == 2
    assert assert_history_then_live_is_the_record(run_dir, again) > before  # the first run's lines, then more
    assert (run_dir / "events.jsonl").read_text().count('"type":"RunStarted"') == 2


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_zombie_or_an_ended_run_process_never_reads_as_live(tmp_path: Path) -> None:
    """process.json names a real child process: live while it runs; not live once it has exited but is not yet
    reaped (a zombie: its pid still exists), nor once reaped; nor while the process lives on after `mark_ended`
    (a headless main in a test, an inline dashboard back at the picker); nor when the pid is reused by another
    process (its start time differs)."""
    record_dir = tmp_path / "run"
    record_dir.mkdir()

    def record(pid: int, shift: int = 0) -> None:
        data = {"pid": pid, "proc_start": (proc_start_ticks(pid) or 0) + shift, "started": 0.0, "mode": "headless"}
        (record_dir / "process.json").write_text(json.dumps(data))

    child = _start(["sleep", "60"])
    try:
        record(child.pid)
        assert run_status(record_dir) == "live"
        record(child.pid, shift=1)  # the same pid, another process (after a reboot)
        assert run_status(record_dir) == "dead"
        record(child.pid)
        child.kill()
        wait_for(lambda: _state(child.pid) == "Z", 30, "the killed child is a zombie")
        assert run_status(record_dir) == "dead"  # its pid exists, but nothing runs there
    finally:
        child.kill()
        child.wait(timeout=30)
    assert run_status(record_dir) == "dead"  # reaped: the pid is gone

    write_process_record(record_dir, record_dir / "control.sock", "headless")  # this process, alive
    assert run_status(record_dir) == "live"
    (record_dir / "summary.json").write_text('{"status": "finished"}')
    mark_ended(record_dir)
    assert run_status(record_dir) == "finished"


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2 :].split()[0]
