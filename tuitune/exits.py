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
