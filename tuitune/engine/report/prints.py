"""What one thread prints, sent to a file of its own: the tracker libraries print banners and notes ("* Trackio
project initialized", MLflow's database set-up) that would land in the middle of a headless run's console lines.

`sys.stdout` and `sys.stderr` are replaced, while some thread is routed, by a proxy that writes each call to the
file routed for the calling thread and everything else to the stream it replaced: other threads (the training loop,
the console printer, the dashboard) see no difference. `contextlib.redirect_stdout` would not do: it is
process-wide. A stream put in place by someone else meanwhile (Textual's print capture, pytest's) is left alone.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_routes: dict[int, IO[str]] = {}
_lock = threading.Lock()


class _Routed:
    """A text stream that writes to the calling thread's file when it has one, else to `default`."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def write(self, text: str) -> int:
        target = _routes.get(threading.get_ident())
        return (target if target is not None else self.default).write(text)

    def flush(self) -> None:
        target = _routes.get(threading.get_ident())
        (target if target is not None else self.default).flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer ...: the real stream's
        return getattr(self.default, name)


def _install() -> None:
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, _Routed) and current is not None:
            setattr(sys, name, _Routed(current))


def _uninstall() -> None:
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if isinstance(current, _Routed):
            setattr(sys, name, current.default)


@contextmanager
def prints_to(path: Path | None) -> Iterator[None]:
    """While inside, what the calling thread prints (stdout and stderr) is appended to `path` (None: dropped)."""
    try:
        f: IO[str] = open(path if path is not None else os.devnull, "a", encoding="utf-8")  # noqa: SIM115
    except OSError:
        f = open(os.devnull, "a", encoding="utf-8")  # noqa: SIM115 (a run directory that cannot take the file: prints are dropped)
    ident = threading.get_ident()
    with _lock:
        _routes[ident] = f
        _install()
    try:
        yield
    finally:
        with _lock:
            _routes.pop(ident, None)
            if not _routes:
                _uninstall()
        f.close()
