"""A full disk mid-run, made with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so a write past it fails with
EFBIG), never by filling a real disk: a checkpoint or an events.jsonl write that fails ends the run `failed`, in one
line naming the file and the error, and the previous checkpoint stays intact and loadable."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import CheckpointSaved, Event, RunFailed
from tuitune.engine.record import checkpoint
from tuitune.engine.record.files import WriteFailed, atomic_write, write_text_atomic
from tuitune.engine.session import run_training


@contextmanager
def file_size_limit() -> Iterator[dict[str, int]]:
    """Lets the caller set a soft RLIMIT_FSIZE (`limit["bytes"]`) for a while; always restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield {}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _limit(nbytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_atomic_write_that_fails_names_the_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old\n")
    with file_size_limit():
        _limit(1000)
        with pytest.raises(WriteFailed) as failed:
            atomic_write(target, lambda tmp: tmp.write_text("x" * 5000))
    assert str(failed.value) == f"{target}: cannot write: File too large (EFBIG)"
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(ZeroDivisionError):  # a bug in the writer is no full disk: it goes through as it is
        atomic_write(target, lambda tmp: 1 / 0)
    with pytest.raises(WriteFailed, match=r"summary.json: cannot write: No space left on device \(ENOSPC\)$"):
        atomic_write(target, lambda tmp: _raise(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    assert target.read_text() == "old\n"


def _raise(error: Exception) -> None:
    raise error


@pytest.mark.parametrize("victim", ["checkpoint", "events.jsonl"])
def test_a_failed_write_ends_the_run_failed_and_keeps_the_last_checkpoint(tmp_path: Path, victim: str) -> None:
    """After epoch 1's `last` is saved, a size limit: above events.jsonl's size and below a checkpoint's (the
    epoch-2 save fails), or just above events.jsonl's size (its next lines fail). Either way: one RunFailed of
    kind "write" naming the file and EFBIG, the run stops there (no epoch 3), summary.json says failed with that
    reason, `last` still opens at epoch 1 with finite weights, and no temp file is left."""
    run_dir = tmp_path / "run"
    events: list[Event] = []
    with file_size_limit():

        def emit(event: Event) -> None:
            events.append(event)
            if isinstance(event, CheckpointSaved) and event.kind == "last" and event.epoch == 1:
                size = (run_dir / "events.jsonl").stat().st_size
                _limit(size + (64_000 if victim == "checkpoint" else 50))

        final = run_training(tiny_profile(train={"epochs": 4}), run_dir, emit, Control(), interactive=False)
    assert isinstance(final, RunFailed) and final.kind == "write", final
    wrote = r"(best|last)\.safetensors" if victim == "checkpoint" else r"events\.jsonl"
    assert re.search(f"/run/(checkpoints/)?{wrote}: cannot write: File too large \\(EFBIG\\);", final.message), (
        final.message
    )
    assert "the last checkpoint" in final.message and "epoch 1) is intact" in final.message
    assert final.epoch <= 2 and "\n" not in final.message
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stop_reason"] == final.message
    weights, state = checkpoint.open_checkpoint(run_dir / "checkpoints", "last")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in load_file(str(weights)).values())
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not (run_dir / "error.log").exists()  # a full disk is no bug: no traceback


def test_ctrl_c_mid_write_is_an_interrupt_even_when_the_writers_cleanup_raises_over_it(tmp_path: Path) -> None:
    """torch.save's zip writer, interrupted, raises a RuntimeError from its __exit__ ("unexpected pos 64 vs 0"):
    the second Ctrl+C must still end the run as interrupted (exit 130), not as a failed write; the old file stays."""
    target = tmp_path / "state.pt"
    target.write_text("old")

    class ZipWriter:  # as torch's: closing the archive after the interrupt fails, over the KeyboardInterrupt
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 64)
        with ZipWriter():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
