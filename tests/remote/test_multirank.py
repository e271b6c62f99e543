"""A multi-rank run steered as the dashboard steers it: `--nproc 2` started by `MultiRankRunner` in a process of
its own, followed over rank 0's control socket; u, p and s sent through the socket take effect at a metric read
(the step where every rank exchanges commands), and the run's record says so."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tests.remote.conftest import write_profile
from tuitune.engine.commands import Pause, Resume, StopEarly, UnfreezeNext
from tuitune.engine.events import CommandApplied, MetricsUpdated, PhaseChanged, RunFinished
from tuitune.engine.record.runlog import read_events
from tuitune.remote.client import ClientControl
from tuitune.remote.spawn import SPAWNED
from tuitune.ui.runner import MultiRankRunner

ROOT = Path(__file__).resolve().parents[2]


def test_u_p_s_through_rank_0s_socket_steer_a_two_rank_run(tmp_path: Path, monkeypatch, reaper) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    profile = write_profile(tmp_path)  # manual trigger: only `u` unfreezes
    run = tmp_path / "run"
    run.mkdir()
    control, events, plan = ClientControl(), [], {}

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and not plan:  # as a person would, after the first live metrics
            plan["sent"] = event.global_step
            for command in (UnfreezeNext(), Pause(), Resume()):
                control.put(command)
        if isinstance(event, CommandApplied) and event.command == "Resume":
            control.put(StopEarly())

    runner = MultiRankRunner(
        (
            "train",
            str(profile),
            "--headless",
            "--nproc",
            "2",
            "--out",
            str(run),
            "--force",
            "--set",
            "strategy.fallback=none",
        )
    )
    reaper.watch(run)  # rank 0 (process.json); the launcher below
    worker = threading.Thread(target=runner, args=(None, run, emit, control), daemon=True)
    worker.start()
    worker.join(timeout=240)
    reaper.procs.extend(SPAWNED)
    assert not worker.is_alive(), f"no end; run.log: {(run / 'run.log').read_text()[-2000:]}"
    applied = [(e.command, e.global_step) for e in events if isinstance(e, CommandApplied)]
    names = [c for c, _ in applied]
    assert names == ["UnfreezeNext", "Pause", "Resume", "StopEarly"], applied
    change = next(e for e in events if isinstance(e, PhaseChanged))
    assert change.global_step == applied[0][1] and change.reason == "manual"
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped_early"
    recorded = read_events(run)
    assert [(e.command, e.global_step) for e in recorded if isinstance(e, CommandApplied)] == applied
    assert recorded[0].world_size == 2 and os.path.exists(run / "process.json")
