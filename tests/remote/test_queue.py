"""The run queue: its file (numbers, order, the lock, damage refused), `tuitune queue add / rm / list` (the door's
checks), the queue process's loop driven in-process with a quick start function (order, one run per GPU, entries
added while it runs, runs that end badly or were started by an earlier queue process), the picker's and
`tuitune runs`' lines for waiting entries; then one real queue process running two tiny runs in order."""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import Reaper, wait_for, write_profile
from tuitune.cli import build_parser, main
from tuitune.remote.queue_process import QueueRunner, gpu_slots
from tuitune.runs.queue_file import LOCK_FILE, QueueStore, format_queue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return write_profile(tmp_path, epochs=1)


def queued(folder: Path, profile: Path, n: int) -> QueueStore:
    store = QueueStore(folder)
    with store.edit() as state:
        for _ in range(n):
            state.add(str(profile), ["train.epochs=1"], "tiny")
    return store


class FakeRun:
    """A started run that ends after `polls` looks, leaving the summary a run of that `status` writes."""

    def __init__(self, run_dir: Path, polls: int = 1, code: int = 0, status: str | None = "finished") -> None:
        self.run_dir, self.polls, self.code, self.status = run_dir, polls, code, status
        self.pid = os.getpid()

    def poll(self) -> int | None:
        self.polls -= 1
        if self.polls > 0:
            return None
        if self.status is not None:
            (self.run_dir / "summary.json").write_text(json.dumps({"status": self.status}))
        return self.code


class Recorder:
    """The start function and the wait of a `QueueRunner`: records each start and what ran at each look."""

    def __init__(self, store: QueueStore, plan: dict[int, dict[str, Any]] | None = None) -> None:
        self.store, self.plan = store, plan or {}
        self.starts: list[tuple[int, str, str | None]] = []
        self.running_at_each_look: list[list[int]] = []
        self.on_wait: list[Any] = []

    def start(self, entry, run_dir: Path, gpu: str | None) -> FakeRun:
        self.starts.append((entry.number, run_dir.name, gpu))
        return FakeRun(run_dir, **self.plan.get(entry.number, {}))

    def wait(self, seconds: float) -> None:
        self.running_at_each_look.append([e.number for e in self.store.read().with_status("running")])
        assert len(self.running_at_each_look) < 50, "the queue never emptied"  # a stuck loop fails, not hangs
        if self.on_wait:
            self.on_wait.pop(0)()

    def runner(self, slots: list[str | None]) -> QueueRunner:
        return QueueRunner(self.store, start=self.start, slots=lambda: slots, wait=self.wait, say=lambda s: None)


def test_numbers_order_and_removal(tmp_path: Path, profile: Path) -> None:
    store = queued(tmp_path, profile, 3)
    with store.edit() as state:
        state.remove(2)
        state.add(str(profile), [], "tiny")
    state = store.read()
    assert [e.number for e in state.with_status("waiting")] == [1, 3, 4]  # numbers are never reused
    assert json.loads(store.path.read_text())["next_number"] == 5
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError), store.edit() as state:
        state.add(str(profile), [], "tiny")
        raise RuntimeError("a writer that fails")
    assert store.path.read_bytes() == before  # nothing written


def test_a_writer_holds_the_lock(tmp_path: Path, profile: Path) -> None:
    store = queued(tmp_path, profile, 1)
    with open(tmp_path / LOCK_FILE) as other:
        with store.edit(), pytest.raises(BlockingIOError):  # a second writer (`queue add`, the queue process) waits
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the edit is written


def test_the_door_checks_the_profile_and_set_like_train(tmp_path: Path, profile: Path, monkeypatch, capsys) -> None:
    store = queued(tmp_path / "runs", profile, 1)
    before = store.path.read_bytes()
    monkeypatch.setattr("tuitune.remote.spawn.spawn_detached", lambda *a, **k: pytest.fail("nothing may start"))
    cases = {
        "train.epochz": ["--set", "train.epochz=1"],
        "train.epochs": ["--set", "train.epochs=-3"],
        "--set": ["--set", "trainepochs"],
    }
    for key, flags in cases.items():
        code = main(["queue", "add", str(profile), "--runs-dir", str(tmp_path / "runs"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and key in err[0], (key, err)
        train = main(["train", str(profile), "--headless", *flags, "--out", str(tmp_path / "t")])
        assert train == 2 and capsys.readouterr().err.strip() == err[0]  # the very line `tuitune train` prints
    assert main(["queue", "add", str(tmp_path / "nope.toml"), "--runs-dir", str(tmp_path / "new")]) == 2
    assert "nope.toml" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert store.path.read_bytes() == before


def test_add_list_rm_and_the_runs_list(tmp_path: Path, profile: Path, monkeypatch, capsys) -> None:
    spawned: list[list[str]] = []

    class Me:  # the "queue process": this live test process, so the second add finds it running
        pid = os.getpid()

    monkeypatch.setattr("tuitune.remote.spawn.spawn_detached", lambda args, log: spawned.append(args) or Me())
    runs = tmp_path / "runs"
    for overrides in (["--set", "train.epochs=1"], []):
        assert main(["queue", "add", str(profile), "--runs-dir", str(runs), *overrides]) == 0
    out = capsys.readouterr().out
    assert "queued #1: tiny (next)" in out and "queued #2: tiny (1 ahead of it)" in out
    assert spawned == [["tuitune.remote.queue_process", str(runs.resolve())]]  # one queue process, started once
    with QueueStore(runs).edit() as state:  # as the queue process marks a started entry
        first = state.get(1)
        assert first is not None
        state.put(dataclasses.replace(first, status="running", run_dir=str(runs / "tiny-q1")))
    assert main(["queue", "--runs-dir", str(runs)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert f"queue process {os.getpid()} runs it" in rows[0]
    assert re.match(r"1\s+\S*tiny.toml\s+train.epochs=1\s+running", rows[2])
    assert re.match(r"2\s+\S*tiny.toml\s+-\s+waiting", rows[3])
    assert main(["runs", str(runs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "queued #2: tiny, waiting"
    assert main(["queue", "rm", "1", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "entry 1 is running" in err[0] and "tuitune ctl" in err[0]
    assert main(["queue", "--runs-dir", str(runs), "rm", "9"]) == 2 and "no entry 9" in capsys.readouterr().err
    assert main(["queue", "rm", "2", "--runs-dir", str(runs)]) == 0
    assert capsys.readouterr().out.strip() == "removed #2 (tiny, waiting)"
    assert main(["queue", "--json", "--runs-dir", str(runs)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["number"], e["status"]) for e in listed["entries"]] == [(1, "running")]
    assert main(["queue", "start", "--runs-dir", str(runs)]) == 0
    assert f"queue process {os.getpid()} already runs the queue" in capsys.readouterr().out and len(spawned) == 1


def test_a_damaged_queue_file_is_one_line_and_kept(tmp_path: Path, profile: Path, capsys) -> None:
    store = queued(tmp_path, profile, 1)
    data = json.loads(store.path.read_text())
    data["entries"][0]["number"] = "one"
    store.path.write_text(json.dumps(data))
    before = store.path.read_bytes()
    for argv in (["queue"], ["queue", "add", str(profile)], ["queue", "rm", "1"]):
        assert main([*argv, "--runs-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"tuitune: error: {store.path}: entry 1: number: wrong type (str)"]
    assert store.path.read_bytes() == before


def test_the_runner_runs_entries_in_order_and_picks_up_new_ones(tmp_path: Path, profile: Path) -> None:
    store = queued(tmp_path, profile, 2)
    rec = Recorder(store, plan={1: {"polls": 2}, 2: {"code": 1, "status": "failed"}, 3: {"status": None, "code": 9}})
    rec.on_wait.append(lambda: queued(tmp_path, profile, 1))  # added while #1 runs
    assert rec.runner([None]).run() == 0
    assert [s[:2] for s in rec.starts] == [(1, "tiny-q1"), (2, "tiny-q2"), (3, "tiny-q3")]
    assert all(len(running) <= 1 for running in rec.running_at_each_look)  # on CPU: one at a time
    state = store.read()
    ended = [(e.number, e.status, e.exit_code) for e in state.entries]
    assert ended == [(1, "finished", 0), (2, "failed", 1), (3, "failed", 9)]  # #3 left no summary
    times = [(e.started, e.ended) for e in state.entries]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(times))
    assert state.process is None  # the queue is empty: the process let go of the folder
    assert "no queue process" in format_queue(state, tmp_path)


def test_one_run_per_gpu(tmp_path: Path, profile: Path) -> None:
    store = queued(tmp_path, profile, 3)
    rec = Recorder(store, plan={1: {"polls": 3}, 2: {"polls": 1}})
    rec.runner(["0", "1"]).run()
    assert rec.starts == [(1, "tiny-q1", "0"), (2, "tiny-q2", "1"), (3, "tiny-q3", "1")]  # #3 takes the freed GPU
    assert rec.running_at_each_look[0] == [1, 2]


def test_gpu_slots_from_the_environment_or_the_count() -> None:
    assert gpu_slots({}, lambda: 2) == ["0", "1"]
    assert gpu_slots({}, lambda: 0) == [None]
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": ""}, lambda: 8) == [None]
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": "2, 3"}, lambda: 8) == ["2", "3"]
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, lambda: 8) == ["1"]  # CUDA stops at a negative id
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": "GPU-5d1c"}, lambda: 8) == ["GPU-5d1c"]


def test_a_profile_gone_bad_fails_its_entry_and_a_run_left_by_an_earlier_queue_is_adopted(
    tmp_path: Path, profile: Path, monkeypatch
) -> None:
    store = queued(tmp_path, profile, 2)
    adopted = tmp_path / "tiny-q1"
    adopted.mkdir()
    (adopted / "summary.json").write_text(json.dumps({"status": "stopped_early"}))
    with store.edit() as state:  # #1 was started by a queue process that is gone; its run ended since
        entry = state.get(1)
        assert entry is not None
        state.put(dataclasses.replace(entry, status="running", run_dir=str(adopted), pid=2**22 + 7))
        state.process = {"pid": 2**22 + 7, "proc_start": 1}  # that dead queue process
    profile.write_text(profile.read_text().replace("lr = 0.01", "lr = -1.0"))  # broken since it was queued
    monkeypatch.setattr("tuitune.remote.spawn.start_run_process", lambda *a, **k: pytest.fail("it must not start"))
    QueueRunner(store, slots=lambda: [None], wait=Recorder(store).wait, say=lambda s: None).run()
    one, two = store.read().entries
    assert (one.status, one.exit_code) == ("stopped", 0)  # read from its run directory's summary
    assert (two.status, two.exit_code, two.run_dir) == ("failed", 2, None)
    assert "train.lr" in two.error and not (tmp_path / "tiny-q2").exists()


def test_a_second_queue_process_leaves_the_queue_to_the_first(tmp_path: Path, profile: Path) -> None:
    from tuitune.runs.queue_file import process_record

    store = queued(tmp_path, profile, 1)
    with store.edit() as state:
        state.process = process_record(os.getpid())  # a live one
    rec = Recorder(store)
    assert QueueRunner(store, start=rec.start, slots=lambda: [None], wait=rec.wait, pid=1).run() == 0
    assert rec.starts == [] and store.read().with_status("waiting")


async def test_the_picker_lists_waiting_entries_under_live_runs(tmp_path: Path, profile: Path) -> None:
    from textual.widgets import OptionList

    from tuitune.profiles import PACKAGE_PROFILES
    from tuitune.ui.app import TuituneApp
    from tuitune.ui.picker import PickerScreen

    queued(tmp_path / "runs", profile, 2)
    app = TuituneApp("picker", profile_dirs=[PACKAGE_PROFILES], runs_dir=tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, PickerScreen)
        options = picker.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels[:2] == ["⧗ #1 tiny  queued · waiting", "⧗ #2 tiny  queued · waiting"]
        assert options.get_option_at_index(0).disabled
        assert options.highlighted == 2  # the first profile, under the queue's lines
        assert picker.highlighted is not None and picker.highlighted.name == "demo"
        await pilot.press("q")


def test_the_readme_queue_lines_parse() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("\n## Queue\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line.partition("  #")[0]) for line in block.splitlines() if line.strip()]
    assert len(lines) >= 4
    for argv in lines:
        assert argv[0] == "tuitune"
        build_parser().parse_args(argv[1:])  # an unknown subcommand or flag: SystemExit


def test_a_real_queue_process_runs_two_runs_in_order(tmp_path: Path, profile: Path, monkeypatch) -> None:
    """`queue add` twice: one queue process (its own session) runs both as detached run processes with their
    sockets, one after the other, and ends. Every process is killed at the end, pass or fail."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    reaper = Reaper()
    try:
        for _ in range(2):
            assert main(["queue", "add", str(profile), "--runs-dir", str(runs), "--set", "data.num_samples=32"]) == 0
        store = QueueStore(runs)
        process = store.read().process
        assert process is not None and os.getsid(process["pid"]) == process["pid"] != os.getsid(0)
        first = runs / "tiny-q1"
        wait_for(lambda: live_with_socket(first), 120, "the first queued run live, its socket bound")
        wait_for(lambda: store.read().process is None, 240, "the queue process ran both and let go")
        one, two = store.read().entries
        assert [(e.status, e.exit_code) for e in (one, two)] == [("finished", 0), ("finished", 0)]
        assert one.ended is not None and two.started is not None and one.ended <= two.started
        from tuitune.runs.status import list_runs

        assert [(r.name, r.status) for r in list_runs(runs)] == [("tiny-q1", "finished"), ("tiny-q2", "finished")]
        assert "queue empty" in (runs / "queue.log").read_text()
    finally:
        reaper.procs.extend(queue_process_spawned())
        reaper.run_dirs.extend(p for p in runs.glob("tiny-q*") if p.is_dir())
        reaper.cleanup()


def queue_process_spawned() -> list:
    from tuitune.remote.spawn import SPAWNED

    return [p for p in SPAWNED if "tuitune.remote.queue_process" in p.args]


def live_with_socket(run_dir: Path) -> bool:
    from tuitune.runs.process import socket_path
    from tuitune.runs.status import run_status

    path = socket_path(run_dir) if (run_dir / "process.json").exists() else None
    return path is not None and path.exists() and run_status(run_dir) == "live"
