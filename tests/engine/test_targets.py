"""Regression and multi-label targets: data encoding and the scores that replace accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from tuitune.config import DataConfig
from tuitune.engine.data.kinds import build_datasets, class_names, target_kind
from tuitune.engine.train.scoring import Scorer, average_precision
from tuitune.errors import DataError

IMAGES = {
    "input_size": (3, 16, 16),
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}


def test_target_kind_follows_the_loss() -> None:
    assert [target_kind(k) for k in ("cross_entropy", "focal", "mse", "bce")] == ["class", "class", "value", "multi"]


def test_synthetic_regression_and_multilabel() -> None:
    cfg = DataConfig(kind="synthetic", num_samples=40, num_classes=4)
    reg = build_datasets(cfg, task="image", data_config=IMAGES, target="value")
    assert reg.classes == ("value",) and reg.train[0][1].dtype == torch.float32 and reg.train[0][1].ndim == 0
    multi = build_datasets(cfg, task="image", data_config=IMAGES, target="multi")
    y = torch.stack([multi.train[i][1] for i in range(len(multi.train))])
    assert y.shape[1] == 4 and set(y.sum(1).tolist()) == {1.0, 2.0}


def test_digits_refuse_regression() -> None:
    with pytest.raises(DataError, match="loss.kind: digits data has one class per example"):
        class_names(DataConfig(kind="digits"), "value")


def test_text_regression_and_multilabel_files(tmp_path) -> None:
    from tuitune.engine.data.textfiles import encode_targets, read_text_file, target_classes

    csv = tmp_path / "r.csv"
    csv.write_text("text,label\na,1.5\nb,2\nc,x\n")
    rows = read_text_file(csv, "path", "text", "label")
    with pytest.raises(DataError, match=r"r.csv: row 4: label 'x' is not a number"):
        encode_targets(rows, "value", ("value",), csv)
    assert encode_targets(rows[:2], "value", ("value",), csv).tolist() == [1.5, 2.0]
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"text": "a", "label": ["cat", "dog"]}\n{"text": "b", "label": "dog|fox"}\n')
    rows = read_text_file(jl, "path", "text", "label")
    classes = target_classes(rows, "multi")
    assert classes == ("cat", "dog", "fox")
    assert encode_targets(rows, "multi", classes, jl).tolist() == [[1, 1, 0], [0, 1, 1]]


def test_scores() -> None:
    acc = Scorer("class")
    sums = acc.batch_sums(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert acc.score(sums.tolist(), 3) == pytest.approx(2 / 3) and acc.higher_is_better
    rmse = Scorer("value")
    sums = rmse.batch_sums(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    assert rmse.score(sums.tolist(), 2) == pytest.approx(math.sqrt(2.5)) and not rmse.higher_is_better
    assert rmse.extras(sums.tolist(), 2) == {"mae": pytest.approx(1.5)}
    f1 = Scorer("multi")
    sums = f1.batch_sums(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert sums.tolist() == [2.0, 1.0, 0.0] and f1.score(sums.tolist(), 2) == pytest.approx(0.8)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert average_precision(scores, truth) == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
