"""Waits with a ceiling, for tests that watch a process: a hung process fails the test with a message instead of
hanging the suite."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable


def read_until(proc: subprocess.Popen, wanted: Callable[[str], bool], timeout: float, what: str) -> str:
    """Read `proc.stdout` (text) line by line until `wanted(line)`; that line. A reader thread does the blocking
    reads and stops at the line, so `communicate()` may read the rest afterwards. Fails after `timeout` seconds
    (the process is ended by the test's fixture, which ends the thread too) or when the output ends first."""
    assert proc.stdout is not None
    found: list[str] = []
    done = threading.Event()

    def reader() -> None:
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                if wanted(line):
                    found.append(line)
                    return
        finally:
            done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout):
        raise AssertionError(f"{what}: no such line in {timeout:.0f} s")
    if not found:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        err = proc.stderr.read()[-2000:] if proc.stderr is not None and proc.poll() is not None else ""
        raise AssertionError(f"{what}: the output ended first (exit {proc.poll()}); stderr: {err}")
    return found[0]
