"""The process exit codes of every tuitune command, in one place: what a shell script, a scheduler or the multi-rank
launcher reads back, and the one mapping from how a run ended to its code.

The bottom of the package: nothing of tuitune at import (the run's event types load inside `run_exit_code`), no
torch, no Textual, so the command line, the engine's callers and the UI all take their codes from here.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuitune.engine.events import Event

__all__ = ["ExitCode", "run_exit_code"]


class ExitCode(IntEnum):
    OK = 0  # finished, or stopped early by a person or a rule; `tuitune ctl`: the engine confirmed the command
    FAILED = 1  # the run failed (its reason is in the summary and run.log); `ctl`: the run refused the command (why)
    # a profile, a flag, a file or a command was refused before anything changed; `ctl` / `watch`: also a run that
    # cannot be reached (no live run in that folder, no socket, another user's, it ended or did not answer in time)
    BAD_INPUT = 2
    RANK_LOST = 3  # a multi-rank run lost a rank: the launcher says which
    INTERRUPTED = 130  # Ctrl+C or quit mid-run (128 + SIGINT, as shells report it)
    # SIGTERM or SIGUSR1 (a scheduler's time-limit warning or a preemption): `last` saved, the summary says
    # `preempted`, and the same command line resumes it. 75 is sysexits' EX_TEMPFAIL ("try again later"): distinct
    # from 143, which a shell reports for a process SIGTERM killed before it could save, so a batch script (or
    # slurm.conf `RequeueExit=75`, a Kubernetes podFailurePolicy) requeues on it and on nothing else.
    PREEMPTED = 75


# RunFinished.status -> code; a status this table does not know is a run whose end is not understood: FAILED
FINISHED_CODES = {
    "finished": ExitCode.OK,
    "stopped_early": ExitCode.OK,
    "interrupted": ExitCode.INTERRUPTED,
    "preempted": ExitCode.PREEMPTED,
}


def run_exit_code(final: Event | None) -> ExitCode:
    """A run's exit code from its terminal event, the same for `tuitune train --headless`, the detached run
    process, the multi-rank launcher and the dashboard: a `RunFinished` by its status, a `RunFailed` BAD_INPUT
    when the person can fix it (profile, data, model, checkpoint) and FAILED otherwise; anything else (None: no
    end recorded, a run that died) FAILED."""
    from tuitune.engine.events import RunFailed, RunFinished

    if isinstance(final, RunFinished):
        return FINISHED_CODES.get(final.status, ExitCode.FAILED)
    if isinstance(final, RunFailed):
        return ExitCode.BAD_INPUT if final.bad_input else ExitCode.FAILED
    return ExitCode.FAILED
