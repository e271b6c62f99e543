"""Errors a user can fix. The CLI prints them as one line and exits 2; the UI shows them inline."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a profile, a data file, a model name, a checkpoint. The message is one line naming the file
    and the key (or row) at fault."""


class DataError(UserError):
    """Data that cannot be used; the message is one line naming the data file (and row / key) at fault."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first line (its type's name when it says nothing), for one-line messages; cut at `limit`."""
    return ((str(error).strip().splitlines() or [type(error).__name__])[0])[:limit]
