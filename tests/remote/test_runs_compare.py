"""Runs compared, plain side: the profile keys that differ, the best metrics, `tuitune compare --json / --text`
(without torch), and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.remote.stored_runs import profile, two_runs, write_run
from tuitune.runs.compare import best_cells, best_row, flatten, format_compare, load_run, load_runs, profile_diff

ROOT = Path(__file__).resolve().parents[2]


def test_profile_diff_keeps_only_keys_that_differ() -> None:
    a = flatten({"train": {"lr": 1e-3, "epochs": 4}, "data": {"size": [32, 32]}, "strategy": {"kind": "full"}})
    b = flatten(
        {
            "train": {"lr": 1e-2, "epochs": 4},
            "data": {"size": [32, 32]},
            "strategy": {"kind": "full"},
            "model": {"drop": 0.1},
        }
    )
    c = flatten({"train": {"lr": 1e-3, "epochs": 4}, "data": {"size": [64, 64]}, "strategy": {"kind": "full"}})
    assert a == {"train.lr": 1e-3, "train.epochs": 4, "data.size": [32, 32], "strategy.kind": "full"}
    assert profile_diff([a, b]) == [("model.drop", ["-", 0.1]), ("train.lr", [1e-3, 1e-2])]
    assert profile_diff([a, b, c]) == [
        ("data.size", [[32, 32], [32, 32], [64, 64]]),
        ("model.drop", ["-", 0.1, "-"]),
        ("train.lr", [1e-3, 1e-2, 1e-3]),
    ]
    assert profile_diff([a, dict(a)]) == []


def test_best_metrics_follow_each_run_and_its_direction(tmp_path: Path) -> None:
    a, b = load_runs(list(two_runs(tmp_path)))
    assert best_row(a) == {
        "name": "lr-1e-3",
        "status": "finished",
        "metric": "acc",
        "best_val_score": 0.66,
        "best_epoch": 4,
        "best_val_macro_f1": None,
        "best_f1_epoch": None,
        "lowest_val_loss": 0.74,
        "lowest_loss_epoch": 4,
        "final_val_score": 0.66,
        "epochs": 4,
        "wall_s": 8.5,
    }
    row = best_row(b)  # stopped early after its best epoch: the best is not the last
    assert (row["status"], row["best_val_score"], row["best_epoch"], row["final_val_score"]) == (
        "stopped",
        0.84,
        3,
        0.82,
    )
    assert (row["lowest_val_loss"], row["lowest_loss_epoch"]) == (0.52, 3)
    rmse = load_run(write_run(tmp_path / "reg", profile(1e-3), [0.5, 0.3, 0.4], [2.0, 1.1, 1.4], metric="rmse"))
    assert (best_row(rmse)["best_val_score"], best_row(rmse)["best_epoch"]) == (1.1, 2)  # lower is better
    assert best_cells(rmse)[2] == "1.1000 @ 2" and best_cells(a)[2] == "66.00% @ 4"  # the one score format


def test_macro_f1_gets_its_column_when_a_run_counted_it(tmp_path: Path) -> None:
    """SMS-like: accuracy peaks at epoch 3 while macro-F1 (the fair score on imbalanced classes) peaks at 2."""
    a, _ = two_runs(tmp_path)
    spam = load_run(
        write_run(tmp_path / "spam", profile(3e-4), [0.5, 0.4, 0.35], [0.88, 0.95, 0.96], f1=[0.47, 0.91, 0.90])
    )
    row = best_row(spam)
    assert (row["best_val_score"], row["best_epoch"], row["best_val_macro_f1"], row["best_f1_epoch"]) == (
        0.96,
        3,
        0.91,
        2,
    )
    lines = format_compare([load_run(a), spam]).splitlines()
    assert lines[1].split()[:6] == ["run", "status", "best", "score", "best", "macro-F1"]
    assert lines[2].split()[2:7] == ["66.00%", "@", "4", "-", "0.7400"]  # no F1 counted: a dash
    assert lines[3].split()[2:8] == ["96.00%", "@", "3", "91.00%", "@", "2"]
    assert "macro-F1" not in format_compare(load_runs(list(two_runs(tmp_path / "plain"))))


def test_a_dead_run_compares_from_its_events(tmp_path: Path) -> None:
    a, _ = two_runs(tmp_path)
    dead = load_run(write_run(tmp_path / "dead", profile(3e-3), [0.9, 0.7], [0.5, 0.6], status="dead"))
    assert not (tmp_path / "dead" / "summary.json").exists()
    assert (dead.status, best_row(dead)["best_val_score"], best_row(dead)["wall_s"]) == ("dead", 0.6, 4.0)
    text = format_compare([load_run(a), dead])
    assert "train.lr  0.001    0.003" in text and "0.7000 / 60.00%" in text
    assert text.splitlines()[-1].split() == ["4", "0.7400", "/", "66.00%", "-"]  # the dead run ended at 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tuitune", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_compare_json_and_text_without_torch(tmp_path: Path) -> None:
    a, b = two_runs(tmp_path)
    result = _cli("compare", str(a), str(b), "--json")
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "tuitune.runs.compare" in imported and not {"torch", "timm", "transformers", "textual"} & imported
    data = json.loads(result.stdout)
    assert data["differ"] == {
        "strategy.kind": {"lr-1e-3": "progressive", "lr-1e-2": "full"},
        "train.lr": {"lr-1e-3": 0.001, "lr-1e-2": 0.01},
        "train.warmup_epochs": {"lr-1e-3": "-", "lr-1e-2": 1},
    }
    assert [r["best_val_score"] for r in data["runs"]] == [0.66, 0.84]
    assert data["runs"][1]["curve"][2] == {"epoch": 3, "val_loss": 0.52, "val_score": 0.84, "val_macro_f1": None}
    text = _cli("compare", str(a), str(b), "--text")
    assert text.returncode == 0 and "profile keys that differ" in text.stdout
    assert "strategy.kind        progressive  full" in text.stdout


def test_compare_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    a, _ = two_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    for args, says in (
        ((str(a),), "two or more run directories"),
        ((str(a), str(tmp_path / "empty")), f"{tmp_path / 'empty'}: compare: no events.jsonl"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "tuitune", "compare", *args, "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert result.returncode == 2 and says in result.stderr and len(result.stderr.splitlines()) == 1
