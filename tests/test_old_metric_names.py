"""Old metric names (`val_acc`, `train_acc`: before `*_acc` became `*_score`) keep working wherever a metric's name
is read, through one function (`tuitune.config.metric_name`): profile keys and `--set`, a sweep's metric, and the
names in records (a summary's best metric, an old events.jsonl through `tuitune watch`, a study's metric)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuitune.config import ProfileError, apply_overrides, metric_name, profile_from_dict
from tuitune.sweep.space import parse_sweep

BASE = {
    "model": {"source": "timm", "name": "resnet18", "pretrained": False},
    "data": {"kind": "synthetic"},
}


def test_the_one_function() -> None:
    assert [metric_name(n) for n in ("val_acc", "train_acc", "ema_val_acc")] == [
        "val_score",
        "train_score",
        "ema_val_score",
    ]
    assert [metric_name(n) for n in ("val_score", "val_loss", "val_macro_f1", "acc")] == [
        "val_score",
        "val_loss",
        "val_macro_f1",
        "acc",
    ]
    assert metric_name(3) == 3  # not a name: left for the caller's check to refuse


def test_profile_keys_and_set_overrides_read_old_names() -> None:
    table = apply_overrides(
        {**BASE, "strategy": {"plateau_metric": "train_acc"}},
        ["train.checkpoint_metric=val_acc", "early_stopping.metric=val_acc"],
    )
    p = profile_from_dict(table, "p.toml")
    assert (p.train.checkpoint_metric, p.strategy.plateau_metric, p.early_stopping.metric) == (
        "val_score",
        "train_score",
        "val_score",
    )


@pytest.mark.parametrize(
    ("named", "metric", "direction"), [("val_acc", "val_score", "maximize"), ("train_acc", "train_score", "maximize")]
)
def test_a_sweeps_metric_reads_old_names(named: str, metric: str, direction: str) -> None:
    table = {**BASE, "sweep": {"metric": named, "train.lr": [0.001, 0.01]}}
    spec, _ = parse_sweep(table, "s.toml", None)
    assert (spec.metric, spec.direction) == (metric, direction)
    set_table = apply_overrides({**BASE, "sweep": {"train.lr": [0.001, 0.01]}}, [f"sweep.metric={named}"])
    assert parse_sweep(set_table, "s.toml", None)[0].metric == metric  # `tuitune sweep --set sweep.metric=...`
    with pytest.raises(ProfileError, match=r"^s.toml: sweep.metric: 'val_accuracy' is not one of val_score, val_loss"):
        parse_sweep({**BASE, "sweep": {"metric": "val_accuracy", "train.lr": [0.001, 0.01]}}, "s.toml", None)


def _run_dir(root: Path, score: str, best_metric: str, task_metric: str = "rmse") -> Path:
    """A finished run's record with its score under `score` (`val_acc` in records from before the rename)."""
    run = root / score
    run.mkdir()
    events = [
        {"type": "RunStarted", "metric": task_metric, "epochs": 2, "phases": [["head"]], "phase": 0},
        {"type": "EpochEnded", "epoch": 1, "phase": 0, "global_step": 4, "val_loss": 0.5, score: 0.31, "is_best": True},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    summary = {"status": "finished", "best": {"metric": best_metric, "value": 0.31, "epoch": 1}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_records_read_old_names_as_new_ones(tmp_path: Path) -> None:
    """A regression run recorded before the rename: its best line says RMSE (not "acc"), as one recorded after;
    `tuitune watch` hands its events out under today's names."""
    from tuitune.remote.watch import watch
    from tuitune.runs.status import run_info

    old, new = _run_dir(tmp_path, "val_acc", "val_acc"), _run_dir(tmp_path, "val_score", "val_score")
    assert run_info(old).best == run_info(new).best == "val rmse 0.3100 @ 1"
    (old / "summary.json").unlink()  # no summary: the best epoch's event
    assert run_info(old).best == "val rmse 0.3100 @ 1"
    seen: list[dict] = []
    watch(old, seen.append)
    assert seen[1]["val_score"] == 0.31 and "val_acc" not in seen[1]


def test_a_studys_old_metric_reads_as_its_new_name(tmp_path: Path) -> None:
    import optuna

    from tuitune.sweep.board import read_board
    from tuitune.sweep.study import STUDY_NAME, quiet_optuna, storage_for

    quiet_optuna()
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage_for(tmp_path), direction="maximize")
    study.set_user_attr("metric", "val_acc")  # a sweep's study from before the rename
    assert read_board(tmp_path)[1] == "val_score"
