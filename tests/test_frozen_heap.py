"""The training run's frozen heap (`gc.freeze`): the model and the data out of the cyclic collector's sight during
the run, nothing left frozen after it; and a heap its caller froze (the dashboard, this test session: tests/conftest.py)
left frozen, not thawed at the run's end."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace

from tests.engine.conftest import tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, RunFinished
from tuitune.engine.train.loop import Trainer


def _run(run_dir: Path) -> list[int]:
    """A tiny run; the frozen object count at each epoch's end."""
    seen: list[int] = []

    def emit(event: object) -> None:
        if isinstance(event, EpochEnded):
            seen.append(gc.get_freeze_count())

    assert isinstance(Trainer(tiny_profile(), run_dir, emit, Control()).run(), RunFinished)
    return seen


def test_a_run_alone_freezes_its_heap_and_leaves_nothing_frozen(tmp_path: Path) -> None:
    """As in `tuitune train`, where nothing else froze the heap."""
    gc.unfreeze()  # this session's own freeze off for the test (put back below)
    try:
        seen = _run(tmp_path / "run")
        assert len(seen) == 2 and all(n > 0 for n in seen)  # frozen during the run
        assert gc.get_freeze_count() == 0  # and nothing left frozen after it
    finally:
        gc.collect()
        gc.freeze()


def test_a_run_leaves_a_heap_its_caller_froze_frozen(tmp_path: Path) -> None:
    gc.collect()
    gc.freeze()  # the caller's (here: already the session's)
    before = gc.get_freeze_count()
    assert before > 0
    seen = _run(tmp_path / "run")
    after = gc.get_freeze_count()
    # neither thawed (0) nor grown by the run's model and data; a few frozen objects may be freed by refcounting
    assert len(seen) == 2 and all(0.99 * before < n <= before for n in [*seen, after]), (before, seen, after)


def test_the_dashboard_freezes_the_heap_once_and_only_if_nobody_has() -> None:
    from tuitune.ui.dashboard import DashboardScreen

    board = SimpleNamespace(_gc_frozen=False)
    DashboardScreen._freeze_heap(board)  # type: ignore[arg-type]
    assert board._gc_frozen is False and gc.get_freeze_count() > 0  # the session's freeze: not the board's to undo
    gc.unfreeze()
    try:
        DashboardScreen._freeze_heap(board)  # type: ignore[arg-type]
        assert board._gc_frozen is True and gc.get_freeze_count() > 0  # its own, undone on unmount
    finally:
        gc.collect()
        gc.freeze()
