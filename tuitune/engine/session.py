"""One call that runs a whole fine-tuning run, for the CLI and the UI worker alike.

It records the run directory, turns every failure into a `RunFailed` event with a one-line message (the full
traceback goes to `error.log` in the run directory, not over the screen), and returns the terminal event.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable

from tuitune.config import RunProfile
from tuitune.engine.commands import Control
from tuitune.engine.events import Event, RunFailed
from tuitune.engine.runlog import RunRecorder, new_run_dir, tee
from tuitune.errors import UserError

__all__ = ["run_training", "new_run_dir"]


def run_training(profile: RunProfile, run_dir: Path, emit: Callable[[Event], None], control: Control, *,
                 interactive: bool = True, resume: Path | None = None) -> Event:
    """Build and train; block until the run ends. Never raises for bad input or a failing run."""
    recorder = RunRecorder(run_dir, append=resume is not None)
    sink = tee(recorder, emit)
    try:
        from tuitune.engine.loop import Trainer  # torch, timm, transformers load here, in the worker

        return Trainer(profile, run_dir, sink, control, interactive=interactive, resume=resume).run()
    except UserError as e:
        failed = RunFailed(message=str(e), run_dir=str(run_dir), bad_input=True)
    except Exception as e:  # noqa: BLE001 - any failure becomes an event, the app stays alive
        log = run_dir / "error.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        first = (str(e).strip().splitlines() or [""])[0]
        failed = RunFailed(message=f"{type(e).__name__}: {first}"[:300], run_dir=str(run_dir), log_path=str(log))
    sink(failed)
    return failed
