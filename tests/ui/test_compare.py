"""Runs compared on screen: select runs in the list (space) and compare them (enter); the comparison's snapshots
from two stored run directories (real events through the real recorder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, SelectionList

from tests.remote.stored_runs import two_runs
from tuitune.runs.compare import load_runs
from tuitune.ui.compare import CompareApp, CompareScreen, CurvesPlot, RunListScreen


async def test_select_two_runs_and_compare_them(tmp_path: Path) -> None:
    two_runs(tmp_path)
    app = CompareApp(folder=tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, RunListScreen)
        await pilot.press("space", "enter")  # one run is not a comparison: a warning, the list stays
        await pilot.pause()
        assert isinstance(app.screen, RunListScreen)
        assert [n.message for n in app._notifications] == ["select two or more runs first (space)"]
        await pilot.press("down", "space", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert [r.name for r in screen.runs] == ["lr-1e-3", "lr-1e-2"]  # the list's order
        best = screen.query_one("#compare-best", DataTable)
        assert [str(best.get_row_at(i)[0]) for i in range(best.row_count)] == ["lr-1e-3", "lr-1e-2"]
        assert [str(c) for c in best.get_row_at(1)[1:4]] == ["stopped", "84.00% @ 3", "0.5200 @ 3"]
        diff = screen.query_one("#compare-diff", DataTable)
        assert [diff.get_row_at(i) for i in range(diff.row_count)] == [
            ["strategy.kind", "progressive", "full"],
            ["train.lr", "0.001", "0.01"],
            ["train.warmup_epochs", "-", "1"],
        ]
        score = screen.query_one("#plot-score", CurvesPlot)
        assert score.drawn == [
            ("lr-1e-3", [1, 2, 3, 4], [0.41, 0.55, 0.63, 0.66]),
            ("lr-1e-2", [1, 2, 3, 4], [0.58, 0.77, 0.84, 0.82]),
        ]
        assert [name for name, _, _ in screen.query_one("#plot-loss", CurvesPlot).drawn] == ["lr-1e-3", "lr-1e-2"]
        await pilot.press("escape")  # back to the list, the selection kept
        await pilot.pause()
        assert isinstance(app.screen, RunListScreen)
        assert len(app.screen.query_one(SelectionList).selected) == 2


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_compare_snapshot(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = CompareApp(runs=load_runs(list(two_runs(tmp_path))))
    assert snap_compare(app, terminal_size=size)


async def test_a_branch_is_drawn_from_its_parents_point(tmp_path: Path) -> None:
    """A branch compared with its parent: its curve starts at the parent's point at the branch epoch."""
    from dataclasses import replace

    two_runs(tmp_path)
    parent, other = load_runs([tmp_path / "lr-1e-3", tmp_path / "lr-1e-2"])
    child = replace(other, curve=other.curve[2:], parent=parent.path, branch_epoch=2, origin=parent.curve[1])
    app = CompareApp(runs=[parent, child])
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        score = app.screen.query_one("#plot-score", CurvesPlot)
        assert score.drawn[1] == ("lr-1e-2", [2, 3, 4], [0.55, 0.84, 0.82])
