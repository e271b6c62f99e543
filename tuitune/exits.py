"""The process exit codes of every tuitune command, in one place: what a shell script, a scheduler or the multi-rank
launcher reads back."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0  # finished, or stopped early by a person or a rule
    FAILED = 1  # the run failed (its reason is in the summary and run.log)
    BAD_INPUT = 2  # a profile, a flag, a file or a command was refused before anything changed
    RANK_LOST = 3  # a multi-rank run lost a rank: the launcher says which
    INTERRUPTED = 130  # Ctrl+C or quit mid-run (128 + SIGINT, as shells report it)
    # SIGTERM or SIGUSR1 (a scheduler's time-limit warning or a preemption): `last` saved, the summary says
    # `preempted`, and the same command line resumes it. 75 is sysexits' EX_TEMPFAIL ("try again later"): distinct
    # from 143, which a shell reports for a process SIGTERM killed before it could save, so a batch script (or
    # slurm.conf `RequeueExit=75`, a Kubernetes podFailurePolicy) requeues on it and on nothing else.
    PREEMPTED = 75
