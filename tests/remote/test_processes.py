"""Real run processes over real sockets: spawn, attach, steer, two viewers, reattach, SIGHUP, kill -9."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from tests.remote.conftest import ROOT, env, run_pid, tiny_profile, wait_for, write_profile
from tests.remote.viewer import Viewer
from tuitune.engine.commands import Pause, Resume, SaveCheckpoint, StopEarly, UnfreezeNext
from tuitune.remote.client import connect
from tuitune.remote.spawn import start_run_process
from tuitune.runs.status import list_runs, run_info


def events_count(run_dir: Path) -> int:
    try:
        return (run_dir / "events.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def test_spawn_attach_steer_two_viewers_reattach(tmp_path: Path, reaper) -> None:
    run_dir = reaper.watch(tmp_path / "run")
    run_dir.mkdir()
    proc = start_run_process(tiny_profile(), run_dir)
    reaper.procs.append(proc)
    a = Viewer(connect(run_dir, process=proc))
    wait_for(lambda: "EpochEnded" in a.types(), 120, "first epoch")
    assert run_info(run_dir).status == "live" and run_info(run_dir).pid == proc.pid
    assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # a session of its own: no terminal's SIGHUP reaches it
    b = Viewer(connect(run_dir))
    wait_for(lambda: "Live" in b.types(), 30, "second viewer live")
    history = [m for m in b.messages[: b.types().index("Live")] if m["type"] != "Hello"]
    assert history and history[0]["type"] == "RunStarted"  # the whole past first

    a.client.send(UnfreezeNext())  # from one viewer...
    wait_for(lambda: "UnfreezeNext" in a.applied() and "UnfreezeNext" in b.applied(), 60, "confirmed on both")
    assert any(m["type"] == "PhaseChanged" and m["reason"] == "manual" for m in b.live())

    b.client.close()  # leave; the run goes on; come back: the history now holds the command
    before = events_count(run_dir)
    wait_for(lambda: events_count(run_dir) > before + 5, 60, "training goes on with one viewer gone")
    c = Viewer(connect(run_dir))
    wait_for(lambda: "Live" in c.types(), 30, "reattached")
    assert "UnfreezeNext" in c.applied()  # from the history

    c.client.send(Pause())
    wait_for(lambda: "Pause" in a.applied() and "Pause" in c.applied(), 60, "paused")
    c.client.send(Resume())
    c.client.send(StopEarly())
    wait_for(lambda: "RunFinished" in a.types() and "RunFinished" in c.types(), 120, "stopped")
    assert a.applied()[-3:] == c.applied()[-3:] == ["Pause", "Resume", "StopEarly"]
    assert proc.wait(timeout=60) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped_early" and run_info(run_dir).status == "stopped"
    recorded = [
        json.loads(line)["global_step"]
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if line.startswith('{"type":"MetricsUpdated"')
    ]
    assert recorded == list(range(1, summary["global_step"] + 1))  # log_every 1: every step, none lost
    seen = [m["global_step"] for m in a.messages if m["type"] == "MetricsUpdated"]
    assert seen == sorted(set(seen)) and set(seen) <= set(recorded)  # a viewer behind gets them coalesced
    assert not (run_dir / "control.sock").exists()
    a.client.close(), c.client.close()


def test_kill9_is_dead_attach_says_so_and_resume_continues(tmp_path: Path, reaper) -> None:
    run_dir = reaper.watch(tmp_path / "run")
    run_dir.mkdir()
    proc = start_run_process(tiny_profile(), run_dir)
    reaper.procs.append(proc)
    wait_for(lambda: (run_dir / "checkpoints" / "last.state.pt").exists(), 120, "a last checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    info = run_info(run_dir)
    assert info.status == "dead" and info.pid is None and info.last_event
    runs = subprocess.run(
        [sys.executable, "-m", "tuitune", "runs", str(tmp_path), "--json"],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(runs.stdout)[0]["status"] == "dead"
    attach = subprocess.run(
        [sys.executable, "-m", "tuitune", "attach", str(run_dir)],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert attach.returncode == 2 and attach.stdout == ""
    lines = attach.stderr.strip().splitlines()
    assert len(lines) == 1 and "dead" in lines[0] and "tuitune replay" in lines[0] and "--resume" in lines[0]
    resumed = subprocess.run(
        [sys.executable, "-m", "tuitune", "train", "--resume", str(run_dir), "--headless", "--set", "train.epochs=3"],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert run_info(run_dir).status == "finished"
    starts = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if line.startswith('{"type":"RunStarted"')
    ]
    assert len(starts) == 2 and starts[1]["start_epoch"] >= 1


def test_sighup_to_the_dashboard_is_a_detach(tmp_path: Path, reaper) -> None:
    """`tuitune train` in a pseudo-terminal it leads (as under tmux or sshd); the terminal goes away (the master
    closes: the kernel sends SIGHUP). The dashboard ends, the run process trains on, and a new client attaches."""
    profile = write_profile(tmp_path)
    run_dir = reaper.watch(tmp_path / "run")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def controlling_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    dashboard = reaper.popen(
        [sys.executable, "-m", "tuitune", "train", str(profile), "--out", str(run_dir)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env={**env(), "TERM": "xterm-256color"},
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    drained = threading.Thread(target=_drain, args=(master,), daemon=True)
    drained.start()
    wait_for(lambda: events_count(run_dir) > 10, 120, "the run trains")
    pid = run_pid(run_dir)
    assert pid and pid != dashboard.pid and os.getsid(pid) == pid
    os.close(master)  # the terminal is gone
    assert dashboard.wait(timeout=30) == 0
    before = events_count(run_dir)
    wait_for(lambda: events_count(run_dir) > before + 5, 60, "still training after the hangup")
    assert run_info(run_dir).status == "live"
    v = Viewer(connect(run_dir))
    wait_for(lambda: "Live" in v.types(), 30, "reattached")
    assert v.messages[0]["type"] == "RunStarted" and v.client.hello["history"] > 10  # the past first
    v.client.send(StopEarly())
    wait_for(lambda: "RunFinished" in v.types(), 120, "stopped")
    wait_for(lambda: [r.status for r in list_runs(tmp_path)] == ["stopped"], 60, "the run process ended")
    v.client.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def test_headless_stays_in_the_foreground_and_accepts_attaches(tmp_path: Path, reaper) -> None:
    profile = write_profile(tmp_path)
    run_dir = reaper.watch(tmp_path / "run")
    headless = reaper.tuitune(
        "train",
        str(profile),
        "--headless",
        "--out",
        str(run_dir),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: run_pid(run_dir) == headless.pid, 120, "the headless process owns the run")
    v = Viewer(connect(run_dir))
    wait_for(lambda: "EpochEnded" in v.types(), 120, "an epoch")
    v.client.send(SaveCheckpoint())
    wait_for(lambda: "SaveCheckpoint" in v.applied(), 60, "the command applied")
    os.kill(headless.pid, signal.SIGINT)  # Ctrl+C: stop at the next step
    out, _ = headless.communicate(timeout=120)
    assert headless.returncode == 130 and "command SaveCheckpoint applied" in out
    wait_for(lambda: "RunFinished" in v.types(), 30, "the viewer saw the end")
    assert [m["status"] for m in v.messages if m["type"] == "RunFinished"] == ["interrupted"]
    assert run_info(run_dir).status == "interrupted"
    v.client.close()
