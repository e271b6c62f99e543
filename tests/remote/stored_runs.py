"""Two (or more) stored run directories written the way a run writes them: the real event classes through the
real `RunRecorder` (events.jsonl, profile.toml, summary.json), small and deterministic, for the comparison tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuitune.engine.events import EpochEnded, LayerInfo, RunFinished, RunStarted
from tuitune.engine.record.runlog import RunRecorder

LAYERS = (LayerInfo("body", 2_000, False), LayerInfo("head", 130, True))


def profile(lr: float, kind: str = "progressive", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    table = {
        "name": "tiny",
        "model": {"source": "timm", "name": "resnet18", "pretrained": True},
        "data": {"kind": "synthetic", "batch_size": 16},
        "train": {"epochs": 4, "lr": lr, "seed": 0},
        "strategy": {"kind": kind, "lr_decay": 0.5},
    }
    for key, value in (extra or {}).items():
        section, name = key.split(".")
        table.setdefault(section, {})[name] = value
    return table


def write_run(
    run_dir: Path,
    table: dict[str, Any],
    losses: list[float],
    scores: list[float],
    status: str = "finished",
    metric: str = "acc",
    stamp: float = 1_700_000_000.0,
    f1: list[float] | None = None,
) -> Path:
    """A finished run of len(losses) epochs (or, with status "dead", one with no RunFinished and no summary);
    `f1`: each epoch's val macro-F1, carried in the epoch's extras as a run writes it."""
    rec = RunRecorder(run_dir)
    higher = metric != "rmse"
    rec(
        RunStarted(
            run_name=run_dir.name,
            run_dir=str(run_dir),
            device="cpu",
            layers=LAYERS,
            phases=(("head",), ("head", "body")),
            phase=0,
            epochs=len(losses),
            steps_per_epoch=4,
            train_size=64,
            val_size=16,
            classes=("a", "b", "c"),
            profile=table,
            metric=metric,
            higher_is_better=higher,
        )
    )
    best_i = 0
    for i, (loss, score) in enumerate(zip(losses, scores)):
        better = (score > scores[best_i]) if higher else (score < scores[best_i])
        if i == 0 or better:
            best_i = i
        rec(
            EpochEnded(
                epoch=i + 1,
                global_step=4 * (i + 1),
                phase=0 if i < 2 else 1,
                train_loss=loss * 0.9,
                train_score=score,
                val_loss=loss,
                val_score=score,
                elapsed_s=2.0 * (i + 1),
                epoch_s=2.0,
                samples_per_s=32.0,
                is_best=best_i == i,
                extra={"val_macro_f1": f1[i]} if f1 else {},
            )
        )
    if status == "dead":
        rec.close()
    else:
        rec(
            RunFinished(
                status=status,
                reason="done",
                epochs=len(losses),
                global_step=4 * len(losses),
                best={"metric": f"val_{metric}", "value": scores[best_i], "epoch": best_i + 1},
                final={"val_loss": losses[-1], "val_score": scores[-1]},
                test=None,
                phases=(),
                per_class_acc={},
                samples_per_s=32.0,
                wall_s=2.0 * len(losses) + 0.5,
                checkpoints={},
            )
        )
    for name in os.listdir(run_dir):  # fixed times: the list's order (by start) does not depend on the clock
        os.utime(run_dir / name, (stamp, stamp))
    return run_dir


def two_runs(folder: Path) -> tuple[Path, Path]:
    """A slow run at lr 1e-3 and a faster one at lr 1e-2 that also differs in strategy and a key the other lacks."""
    a = write_run(
        folder / "lr-1e-3", profile(1e-3), [1.05, 0.92, 0.81, 0.74], [0.41, 0.55, 0.63, 0.66], stamp=1_700_000_000.0
    )
    b = write_run(
        folder / "lr-1e-2",
        profile(1e-2, "full", {"train.warmup_epochs": 1}),
        [0.88, 0.61, 0.52, 0.57],
        [0.58, 0.77, 0.84, 0.82],
        status="stopped_early",
        stamp=1_700_000_100.0,
    )
    return a, b
