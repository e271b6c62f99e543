"""Macro-F1 for imbalanced classification: exact values on known confusions, counted on the device at validation,
and usable wherever a metric is chosen (best checkpoint, early stopping, plateau trigger)."""

from __future__ import annotations

import json

import pytest

from tuitune.config import ProfileError
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded
from tuitune.engine.record.runlog import RunRecorder
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.scoring import class_report
from tuitune.engine.train.watch import MetricWatch

from .conftest import of_type, tiny_profile


def test_always_the_majority_class_scores_high_accuracy_but_macro_f1_near_half() -> None:
    """The SMS spam val split: 437 ham, 63 spam; a model answering "ham" for everything."""
    macro, report = class_report([[437, 0], [63, 0]], ("ham", "spam"))
    assert pytest.approx(0.874) == 437 / 500
    assert report["ham"] == {
        "precision": pytest.approx(437 / 500),
        "recall": 1.0,
        "f1": pytest.approx(2 * 437 / (437 + 500)),
        "support": 437,
    }
    assert report["spam"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 63}
    assert macro == pytest.approx((2 * 437 / 937) / 2) and round(macro, 2) == 0.47


def test_known_three_class_confusion_matches_hand_computed_values() -> None:
    # rows: true a, b, c; columns: predicted a, b, c
    confusion = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    macro, report = class_report(confusion, ("a", "b", "c"))
    # a: tp 5, predicted 7, support 6; b: tp 3, predicted 4, support 6; c: tp 4, predicted 5, support 4
    expected = {"a": (5 / 7, 5 / 6, 10 / 13), "b": (3 / 4, 3 / 6, 6 / 10), "c": (4 / 5, 1.0, 8 / 9)}
    for name, (p, r, f1) in expected.items():
        assert (report[name]["precision"], report[name]["recall"], report[name]["f1"]) == (
            pytest.approx(p),
            pytest.approx(r),
            pytest.approx(f1),
        )
    assert macro == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3)
    # scikit-learn's rule: a class neither present nor predicted is left out of the mean
    macro4, report4 = class_report([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 4, 0], [0, 0, 0, 0]], "abcd")
    assert macro4 == pytest.approx(macro) and report4["d"]["support"] == 0


def test_f1_watch_prefers_higher_values_whatever_the_task_score() -> None:
    watch = MetricWatch("val_macro_f1", score_higher=False)  # even beside a lower-is-better task score
    assert watch.update(0.4, 1) and watch.update(0.6, 2) and not watch.update(0.5, 3)
    assert watch.best == 0.6 and watch.best_epoch == 2


def test_a_run_reports_macro_f1_and_chooses_its_best_checkpoint_by_it(tmp_path) -> None:
    profile = tiny_profile(
        train={"epochs": 3, "checkpoint_metric": "val_macro_f1"},
        early_stopping={"enabled": True, "metric": "val_macro_f1", "patience": 5},
        strategy={"kind": "progressive", "trigger": "plateau", "plateau_metric": "val_macro_f1", "plateau_patience": 1},
    )
    events: list = []
    recorder = RunRecorder(tmp_path)
    trainer = Trainer(profile, tmp_path, lambda e: (events.append(e), recorder(e)), Control())
    final = trainer.run()
    recorder.close()
    epochs = of_type(events, EpochEnded)
    f1s = [e.extra["val_macro_f1"] for e in epochs]
    assert all(0.0 <= v <= 1.0 for v in f1s)
    assert final.best["metric"] == "val_macro_f1" and final.best["value"] == pytest.approx(max(f1s))
    assert final.best["epoch"] == f1s.index(max(f1s)) + 1
    report = final.per_class_report
    assert set(report) == set(trainer.parts.bundle.classes)
    assert sum(r["support"] for r in report.values()) == len(trainer.parts.bundle.val)
    # the summary's per-class F1 are the last epoch's, and their mean is its macro-F1
    assert sum(r["f1"] for r in report.values()) / len(report) == pytest.approx(f1s[-1])
    assert {c: r["recall"] for c, r in report.items()} == final.per_class_acc
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["per_class"] == json.loads(json.dumps(report))
    assert summary["final"]["val_macro_f1"] == pytest.approx(f1s[-1])


def test_macro_f1_is_refused_for_regression_in_one_line() -> None:
    with pytest.raises(ProfileError, match=r"tiny.toml: train.checkpoint_metric: val_macro_f1 needs a classification"):
        tiny_profile(train={"checkpoint_metric": "val_macro_f1"}, loss={"kind": "mse"})
