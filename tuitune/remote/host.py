"""The run process: the engine, the run recorder and the control server, in one process that owns the run.

`serve_run` is what every mode runs: the detached run process (`python -m tuitune.remote.host RUN_DIR`, started
by `spawn`), `tuitune train --headless` (foreground, Ctrl+C stops it) and the dashboard's `--inline` worker. It
binds the control socket and records the process in `process.json` before torch is imported, so a dashboard can
attach while the model is still being built.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune import preempt
from tuitune.config import RunProfile, profile_from_dict
from tuitune.engine.commands import Control
from tuitune.engine.events import Event
from tuitune.exits import run_exit_code
from tuitune.remote.server import RunServer
from tuitune.runs.process import mark_ended, write_process_record

LAUNCH_FILE = "launch.json"


def serve_run(
    profile: RunProfile,
    run_dir: Path,
    emit: Callable[[Event], None],
    control: Control,
    *,
    interactive: bool,
    resume: Path | None = None,
    mode: str = "detached",
    dist: Any = None,
    launched: bool = False,
) -> Event:
    """Train `profile` in this process with the control socket open; return the terminal event. A rank of a
    multi-rank run (`dist`, see `tuitune.multirank`): rank 0 serves the socket and records the process, so a
    dashboard attaches to it and its commands reach every rank; the other ranks only train."""
    from tuitune.engine.record.runlog import tee
    from tuitune.engine.session import run_training

    if dist is not None and not dist.is_main:
        return run_training(
            profile, run_dir, emit, control, interactive=interactive, resume=resume, dist=dist, launched=launched
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    server = RunServer(run_dir, control, resumed=resume is not None)
    write_process_record(run_dir, server.path, mode)
    try:
        return run_training(
            profile,
            run_dir,
            tee(server, emit),
            control,
            interactive=interactive,
            resume=resume,
            dist=dist,
            launched=launched,
        )
    finally:
        mark_ended(run_dir)
        server.close()


def write_launch(run_dir: Path, profile: RunProfile, resume: Path | None, interactive: bool) -> Path:
    """What the detached process needs to start the run: the resolved profile (overrides applied) and options."""
    from tuitune.config import profile_to_dict
    from tuitune.engine.record.files import write_json_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LAUNCH_FILE
    data = {
        "profile": profile_to_dict(profile),
        "source_path": profile.source_path,
        "resume": str(resume) if resume is not None else None,
        "interactive": interactive,
    }
    write_json_atomic(path, data)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m tuitune.remote.host RUN_DIR`: the detached run process. Its own session (the spawner set that
    up), SIGHUP ignored, SIGINT stops the run at the next step (`interrupted`), SIGTERM / SIGUSR1 too, as
    `preempted` (a scheduler's; see `tuitune.preempt`); exit code as `tuitune train --headless`."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])
    launch: dict[str, Any] = json.loads((run_dir / LAUNCH_FILE).read_text(encoding="utf-8"))
    profile = profile_from_dict(launch["profile"], file=launch.get("source_path") or "<launch>")
    resume = Path(launch["resume"]) if launch.get("resume") else None
    control = Control()

    def say(text: str) -> None:
        try:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
        except (OSError, RuntimeError):  # run.log unwritable, or a print this handler cut into
            pass

    def on_interrupt(signum: int, frame: Any) -> None:
        say("SIGINT: stopping at the next step")
        control.request_stop()

    signal.signal(signal.SIGINT, on_interrupt)
    preempt.install(control, say)
    print(f"[{time.strftime('%H:%M:%S')}] run process {os.getpid()} for {run_dir}", flush=True)
    from tuitune.console import ConsolePrinter  # its progress lines go to run.log

    final = serve_run(
        profile,
        run_dir,
        ConsolePrinter(),
        control,
        interactive=bool(launch.get("interactive", True)),
        resume=resume,
        mode="detached",
    )
    return run_exit_code(final)


if __name__ == "__main__":
    raise SystemExit(main())
