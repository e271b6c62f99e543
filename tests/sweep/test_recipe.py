"""tuitune recipe: successive halving over candidate recipes within a budget of full fine-tuning runs, the winner
written as a profile, the sweep's leaderboard. Every trial is a real seconds-long run of the tiny resnet18; the
budget is counted on a fake clock (each training session costs one "second"), so which trials run is exact."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuitune.cli import main
from tuitune.config import load_profile
from tuitune.sweep.board import read_board, rows_from_trials
from tuitune.sweep.recipe import Budget, run_recipe, rungs

BASE = """name = "tiny"
[model]
source = "timm"
name = "resnet18"
pretrained = false
kwargs = { channels = [8, 16, 32, 64], stem_width = 8 }
img_size = 32
[data]
kind = "synthetic"
num_samples = 64
num_classes = 3
batch_size = 16
val_fraction = 0.25
[train]
epochs = EPOCHS
lr = 1e-9
log_every = 2
schedule = "constant"
"""


def write(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(BASE.replace("EPOCHS", str(epochs)), encoding="utf-8")
    return path


class FakeClock:
    """Each training session reads the clock twice: it costs one second."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return float(self.calls // 2)


def test_rungs_and_the_budgets_arithmetic() -> None:
    assert [rungs(e) for e in (1, 2, 4, 6, 12)] == [[1], [1, 2], [1, 4], [1, 2, 6], [1, 4, 12]]
    budget = Budget(3.0, epochs=4, per_epoch=10.0, spent=50.0)
    assert budget.total == 120.0 and budget.cost(2) == 20.0
    assert budget.fits(4, reserve=3) and not budget.fits(5, reserve=3)  # 50 + 70 s fits 120 s; 50 + 80 s does not


def test_the_better_recipe_wins_within_the_budget(tmp_path) -> None:
    """The profile's LR (1e-9) learns nothing; one candidate sets a working LR. Budget 1.5 full runs (2 epochs at
    1 s an epoch: 3 s): `full` and `good` reach the first rung; `frozen` does not fit with the winner's last
    epoch in reserve; `good` ranks first and alone trains on to the last epoch."""
    said: list[str] = []
    candidates = {
        "full": ('strategy.kind="full"',),
        "good": ('strategy.kind="full"', "train.lr=0.02"),
        "frozen": ('strategy.kind="head_only"',),
    }
    out = tmp_path / "search"
    result = run_recipe(
        str(write(tmp_path, epochs=2)), [], out, budget=1.5, candidates=candidates, say=said.append, clock=FakeClock()
    )
    assert result["recipe"] == "good" and result["spent_s"] == 3.0 <= result["budget_s"] == 3.0
    assert "frozen: not tried: the budget is spent (2 s of 3)" in said
    rows, metric, _ = read_board(out)
    assert metric == "val_score"
    assert {r.params["recipe"]: (r.status, r.epochs) for r in rows} == {"good": ("done", 2), "full": ("pruned", 1)}
    assert rows[0].params["recipe"] == "good" and rows[0].best == result["value"]
    written = load_profile(out / "recipe.toml")
    assert written.name == "tiny" and written.strategy.kind == "full" and written.train.lr == 0.02
    header = (out / "recipe.toml").read_text().splitlines()[:2]
    assert header[0].startswith("# recipe: good (val_score ") and "3 s of a 3 s budget" in header[0]
    assert "--set train.lr=0.02" in header[1]


def test_a_paused_trial_shows_paused_with_its_own_training_time() -> None:
    start = datetime(2026, 1, 1, 12, 0, 0)
    trial = SimpleNamespace(
        number=3,
        state=SimpleNamespace(name="RUNNING"),
        params={"recipe": "progressive"},
        value=None,
        intermediate_values={1: 0.5},
        user_attrs={"paused": True, "time_s": 12.5, "run_dir": "r"},
        datetime_start=start,
        datetime_complete=None,
    )
    (row,) = rows_from_trials([trial], "maximize", now=datetime(2026, 1, 1, 13, 0, 0))
    assert (row.status, row.time_s, row.best) == ("paused", 12.5, 0.5)


def test_the_command_line_writes_the_winner_and_refuses_unknown_candidates(tmp_path, capsys) -> None:
    path = write(tmp_path, epochs=1)
    out = tmp_path / "cli"
    assert main(["recipe", str(path), "--headless", "--out", str(out), "--candidates", "full"]) == 0
    printed = capsys.readouterr().out
    assert "one full fine-tuning run: ~" in printed and "recipe: full, val_score" in printed
    assert load_profile(out / "recipe.toml").strategy.kind == "full"
    assert main(["recipe", str(path), "--headless", "--out", str(out), "--candidates", "full"]) == 2
    assert "already holds a search" in capsys.readouterr().err
    assert main(["recipe", str(path), "--headless", "--candidates", "magic"]) == 2
    assert "recipe: --candidates: unknown 'magic'" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_a_budget_must_be_positive(tmp_path, capsys, budget: str) -> None:
    assert main(["recipe", str(write(tmp_path, 1)), "--headless", "--budget", budget]) == 2
    assert "recipe: --budget must be > 0" in capsys.readouterr().err
