"""Interrupts with real processes: Ctrl+C and SIGTERM stop a headless run gracefully (SIGTERM and SIGUSR1 as
`preempted`, exit 75, and the same command resumes it), a second Ctrl+C exits at once, and `kill -9` in the middle
of checkpoint writes never leaves a `last` that fails to load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import tiny_profile
from tests.waiting import read_until
from tuitune.cli import main
from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.events import MetricsUpdated, RunFinished, RunStarted
from tuitune.engine.record import checkpoint
from tuitune.engine.record.runlog import read_events
from tuitune.runs.status import run_info

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _start(tmp: Path, name: str, **data: object) -> tuple[subprocess.Popen, Path]:
    """A long headless run in its own process group (like a terminal's foreground job, so a group signal also
    reaches DataLoader workers, as Ctrl+C does)."""
    profile = tmp / f"{name}.toml"
    table = profile_to_dict(tiny_profile(train={"epochs": 500}, data=dict(data)))
    profile.write_text(dump_toml(table))
    run_dir = tmp / name
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuitune", "train", str(profile), "--headless", "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
        start_new_session=True,
    )
    return proc, run_dir


def _wait_for_epoch(proc: subprocess.Popen, n: int = 1) -> str:
    """Read progress lines up to the end of epoch `n` (printed just before that epoch's checkpoints are saved)."""
    seen = [0]

    def nth_epoch(line: str) -> bool:
        seen[0] += line.startswith("epoch")
        return seen[0] == n

    return read_until(proc, nth_epoch, 180, f"epoch line {n}")


def test_ctrl_c_stops_gracefully_and_resumes(tmp_path: Path) -> None:
    """Two runs side by side: Ctrl+C (to the whole process group, one DataLoader worker), and Ctrl+C twice in a
    row (after epoch 2's line, so it may land in the middle of that epoch's saves, and epoch 1's checkpoint
    exists). Each exits 130 with a `last` that loads; the first then resumes from its saved epoch. (SIGTERM: the
    in-process test below; SIGUSR1 through a process: the preemption test.)"""
    runs = {
        "sigint": _start(tmp_path, "sigint", num_workers=1),
        "twice": _start(tmp_path, "twice"),
    }
    for name, (proc, _) in runs.items():
        _wait_for_epoch(proc, 2 if name == "twice" else 1)
        if name == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
    for name, (proc, run_dir) in runs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (name, err)
        weights, state = checkpoint.open_checkpoint(run_dir / "checkpoints", "last")
        assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values())
        assert state["epoch"] >= 1, name
        if name != "twice":  # a graceful stop also finishes the record
            assert '"status": "interrupted"' in (run_dir / "summary.json").read_text(), name
            assert "stopping at the next step" in err and "Traceback" not in err, (name, err)
    saved = checkpoint.open_checkpoint(tmp_path / "sigint" / "checkpoints", "last")[1]
    target = saved["epoch"] + 1
    assert main(["train", "--resume", str(tmp_path / "sigint"), "--headless", "--set", f"train.epochs={target}"]) == 0
    started = [e for e in read_events(tmp_path / "sigint") if isinstance(e, RunStarted)]
    assert [e.start_epoch for e in started] == [0, saved["epoch"]]
    assert checkpoint.open_checkpoint(tmp_path / "sigint" / "checkpoints", "last")[1]["epoch"] == target
    # the doubly interrupted run resumes too, whatever moment the second Ctrl+C hit
    assert main(["train", "--resume", str(tmp_path / "twice"), "--headless", "--set", "train.epochs=1"]) == 0


def test_sigterm_preempts_a_headless_run_which_saves_and_exits_75(tmp_path: Path, capsys) -> None:
    """SIGTERM (a scheduler's preemption or time limit) to this process while `tuitune train --headless` runs in
    it: the run stops at the next step, saves a `last` that loads, says `preempted` and exits 75; the handlers
    the CLI installed are taken down again."""
    profile = tmp_path / "long.toml"
    profile.write_text(dump_toml(profile_to_dict(tiny_profile(train={"epochs": 500}))))
    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)

    def after_epoch_1() -> None:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints").is_dir() or not list((run_dir / "checkpoints").glob("last*")):
            if time.monotonic() > deadline:
                return  # the run's own 500 epochs end the test as a failure: no kill of the test process
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=after_epoch_1, daemon=True).start()
    assert main(["train", str(profile), "--headless", "--out", str(run_dir)]) == 75
    assert "SIGTERM: saving the last checkpoint and stopping at the next step (preempted)" in capsys.readouterr().err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    weights, state = checkpoint.open_checkpoint(run_dir / "checkpoints", "last")
    assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values()) and state["epoch"] >= 1
    assert signal.getsignal(signal.SIGTERM) is before


ZYGOTE = r"""
import os, signal, sys
from pathlib import Path
import torch
from tuitune.engine.record import checkpoint
torch.set_num_threads(1)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed writers are reaped at once
directory = Path(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
target = ""  # where the writer kills itself: "<weights|state>-<mid|renamed>", or "" (after a whole save)
real_write = checkpoint.atomic_write


def dying_write(path, write):
    # checkpoint's own atomic write, with a kill -9 half-way through writing the temp file, or right after
    # the rename put it in place
    kind = "state" if path.name.endswith(".state.pt") else "weights"

    def half(tmp):
        write(tmp)
        if target == kind + "-mid":
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    real_write(path, half)
    if target == kind + "-renamed":
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint.atomic_write = dying_write


def save(version):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(version))
    checkpoint.save_checkpoint(directory, "last", model, {"version": version})


print("ready", flush=True)
for line in sys.stdin:
    version, point = line.split()
    pid = os.fork()
    if pid == 0:  # the writer: one whole save of `version`, then `version + 1` killed at `point`
        save(int(version))
        target = "" if point == "between" else point
        save(int(version) + 1)
        os.kill(os.getpid(), signal.SIGKILL)
    print(pid, flush=True)
"""

# where each kill lands -> (what it leaves beside `last`, the version `last` then holds: the one before, or the
# new one). "kept": the old weights, linked under their id before the new ones are written, until the new state is
# in place; "temp": the half-written temp file.
KILLS = {
    "weights-mid": ({"temp", "kept"}, 0),
    "weights-renamed": ({"kept"}, 0),  # new weights beside the old state
    "state-mid": ({"temp", "kept"}, 0),
    "state-renamed": ({"kept"}, 1),  # both new; the old weights not removed yet
    "between": (set(), 1),
}


def test_kill_9_mid_write_never_corrupts_last(tmp_path: Path) -> None:
    """Writers (forked from one process that imported torch once, to keep this fast) save `last` once, then are
    killed with SIGKILL while saving it again, at each moment of the write in turn: half-way through the weights'
    temp file, right after the weights are renamed into place, half-way through the state, right after the state
    is renamed, and after the whole save; twice each. After every kill `last` opens, its weights match its state,
    and it holds the version the moment implies (the new one only once its state is in place)."""
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert zygote.stdout is not None and zygote.stdin is not None
    try:
        assert read_until(zygote, lambda line: True, 120, "the writers' parent is ready").strip() == "ready"
        for n, point in enumerate(list(KILLS) * 2):
            version = 10 * (n + 1)
            zygote.stdin.write(f"{version} {point}\n")
            zygote.stdin.flush()
            pid = int(read_until(zygote, lambda line: True, 60, "a writer started"))
            deadline = time.monotonic() + 60
            while _alive(pid):
                assert time.monotonic() < deadline, f"writer {pid} ({point}) did not die"
                time.sleep(0.005)
            names = [p.name for p in tmp_path.iterdir()]
            left = {"temp"} if any(n.endswith(".tmp") for n in names) else set()
            left |= {"kept"} if any(n.startswith(".last.") and n.endswith(".safetensors") for n in names) else set()
            expected_left, newer = KILLS[point]
            assert left == expected_left, (point, names)
            weights, state = checkpoint.open_checkpoint(tmp_path, "last")
            values = torch.cat([t.flatten() for t in load_file(str(weights)).values()])
            assert state["version"] == version + newer, (point, state["version"])
            assert bool((values == float(state["version"])).all()), (point, state["version"])
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigusr1_preempts_and_the_same_command_resumes_then_says_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """What a SLURM job with `--signal=USR1@120 --requeue` does, by hand: the same `--resume auto` command three
    times. 1st (a process; SIGUSR1 to its whole group, DataLoader worker included, after epoch 1's line): exit 75,
    summary `preempted`, `tuitune runs` says preempted, the socket gone, `last` saved where it stopped. 2nd (in
    this process): resumes there and finishes; global steps continue exactly where the first left off. 3rd: one
    line saying the run is finished and how to extend it, exit 0, nothing appended to events.jsonl."""
    profile = tmp_path / "long.toml"
    table = profile_to_dict(tiny_profile(train={"epochs": 3}, data={"num_samples": 1200, "num_workers": 1}))
    profile.write_text(dump_toml(table))
    run_dir = tmp_path / "run"
    command = ["train", str(profile), "--headless", "--out", str(run_dir), "--resume", "auto"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuitune", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        _wait_for_epoch(proc, 1)
        os.killpg(proc.pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err
    assert "SIGUSR1: saving the last checkpoint and stopping at the next step (preempted)" in err
    assert "Traceback" not in err, err
    first = read_events(run_dir)
    assert isinstance(first[-1], RunFinished) and first[-1].status == "preempted", first[-1]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    assert run_info(run_dir).status == "preempted"
    assert not Path(json.loads((run_dir / "process.json").read_text())["socket"]).exists()
    _, state = checkpoint.open_checkpoint(run_dir / "checkpoints", "last")
    assert state["global_step"] == first[-1].global_step
    print(f"\npreempted at global step {state['global_step']} (epoch {state['epoch']}, step {state['step_in_epoch']})")

    assert main(command) == 0  # requeued: the same command
    events = read_events(run_dir)
    second = events[len(first) :]
    started = [e for e in second if isinstance(e, RunStarted)]
    assert len(started) == 1 and started[0].start_step == state["global_step"]
    steps = [e.global_step for e in second if isinstance(e, MetricsUpdated)]
    spe = started[0].steps_per_epoch
    assert steps == sorted(steps) and steps[0] > state["global_step"]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "finished"
    assert events[-1].global_step == 3 * spe  # no step lost, none repeated
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["preempted", "finished"]

    capsys.readouterr()
    before = (run_dir / "events.jsonl").read_bytes()
    assert main(command) == 0  # requeued once more after finishing: nothing to do
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{run_dir}: already finished (3/3 epochs), nothing to train; to train on, add epochs: "
        f"tuitune train --resume {run_dir} --set train.epochs=N (N > 3)"
    ]
    assert (run_dir / "events.jsonl").read_bytes() == before
    assert main(["train", str(profile), "--headless", "--resume", "auto"]) == 2  # auto needs the run's folder
