"""Real run processes, real sockets: every process a test starts is killed (its whole process group) at the end,
pass or fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import TINY_MODEL
from tuitune.config import dump_toml, profile_from_dict

ROOT = Path(__file__).resolve().parents[2]


def tiny_table(epochs: int = 400, trigger: str = "manual") -> dict[str, Any]:
    """A run long enough to steer (hundreds of sub-second epochs), progressive with a manual trigger."""
    return {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "data": {"kind": "synthetic", "num_samples": 64, "num_classes": 3, "batch_size": 16, "val_fraction": 0.25},
        "train": {
            "epochs": epochs,
            "lr": 0.01,
            "optimizer": "adamw",
            "log_every": 1,
            "schedule": "constant",
            "seed": 0,
            "device": "cpu",
        },
        "strategy": {"kind": "progressive", "trigger": trigger},
        "early_stopping": {"enabled": False},
    }


def tiny_profile(**kw: Any):
    return profile_from_dict(tiny_table(**kw), file="tiny.toml")


def write_profile(folder: Path, **kw: Any) -> Path:
    path = folder / "tiny.toml"
    path.write_text(dump_toml(tiny_table(**kw)), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def run_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "process.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until `cond()` is truthy (generous bound: the machine is shared; nothing here is a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout:.0f} s")
        time.sleep(0.05)


class Reaper:
    """Remembers every process (and run directory whose run process we started) and kills them all at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.run_dirs: list[Path] = []

    def popen(self, args: list[str], **kw: Any) -> subprocess.Popen:
        kw.setdefault("env", env())
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kw)
        self.procs.append(proc)
        return proc

    def tuitune(self, *args: str, **kw: Any) -> subprocess.Popen:
        return self.popen([sys.executable, "-m", "tuitune", *args], **kw)

    def watch(self, run_dir: Path) -> Path:
        self.run_dirs.append(run_dir)
        return run_dir

    def cleanup(self) -> None:
        from tuitune.runs.status import process_alive, read_json

        records = [read_json(d / "process.json") for d in self.run_dirs]
        pids = [p.pid for p in self.procs] + [r["pid"] for r in records if r and process_alive(r)]
        for pid in pids:
            for kill in (lambda pid=pid: os.killpg(pid, signal.SIGKILL), lambda pid=pid: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()
