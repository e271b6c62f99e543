"""Headless runs: the same engine, with a console sink instead of the dashboard (and the control socket open:
`tuitune attach RUN_DIR` brings a dashboard to it).

Ctrl+C asks the engine to stop at the next step (it saves `last` and writes the summary: `interrupted`); a second
Ctrl+C exits at once. Checkpoint writes are atomic, so even that loses nothing already saved. SIGTERM and SIGUSR1
(a scheduler's preemption or time-limit warning) stop it the same way as `preempted`, exit 75 (see `preempt`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from tuitune.config import RunProfile
from tuitune.console import ConsolePrinter
from tuitune.exits import ExitCode, run_exit_code


def run_headless(
    profile: RunProfile, run_dir: Path, resume: Path | None = None, dist: Any = None, launched: bool = False
) -> int:
    """Run to the end in this thread. Exit code: the run's (`run_exit_code`: PREEMPTED after SIGTERM/SIGUSR1);
    INTERRUPTED on a second Ctrl+C; RANK_LOST when this is a rank of a multi-rank run started by `--nproc` and
    another rank died (the launcher reports which). `dist`: this rank's `DistContext` under torchrun; only rank 0
    prints."""
    from tuitune import preempt
    from tuitune.engine.commands import Control
    from tuitune.engine.session import RankGone
    from tuitune.remote.host import serve_run

    control = Control()
    interrupts = {"n": 0}

    def on_signal(signum: int, frame: Any) -> None:
        interrupts["n"] += 1
        if interrupts["n"] > 1:
            raise KeyboardInterrupt  # the second Ctrl+C: out now (checkpoint writes are atomic)
        say("stopping at the next step (saving the last checkpoint); Ctrl+C again to exit now")
        control.request_stop()

    def say(text: str) -> None:
        if dist is None or dist.is_main:
            _tell(text)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_signal), **preempt.install(control, say)}
    sink = ConsolePrinter(log=run_dir / "run.log") if dist is None or dist.is_main else (lambda event: None)
    try:
        final = serve_run(
            profile,
            run_dir,
            sink,
            control,
            interactive=False,
            resume=resume,
            mode="headless",
            dist=dist,
            launched=launched,
        )  # a foreground run that dashboards may attach to (rank 0)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except RankGone:
        return ExitCode.RANK_LOST
    finally:
        preempt.restore(previous)
    return run_exit_code(final)


def _tell(text: str) -> None:
    """A line on stderr from a signal handler: never an error of its own (a closed stderr, a print it cut into)."""
    try:
        print(f"\n{text}", file=sys.stderr, flush=True)
    except (OSError, RuntimeError):
        pass
