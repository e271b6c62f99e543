"""The confusion matrix and the worst errors a validation reports: exact counts, real pixels, one run end to end."""

from __future__ import annotations

import json

import torch

from tests.engine.conftest import tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.record.runlog import read_events
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.val_views import THUMB, WORST, ValViews

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _read(views: ValViews, classes: tuple[str, ...]) -> dict:
    return views.read(torch.cat(views.tensors()).tolist(), classes)


def test_confusion_counts_are_exact_on_a_known_case() -> None:
    views = ValViews(3, torch.device("cpu"), None, thumbs=False)
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 0, 2, 0])
    views.add(None, torch.nn.functional.one_hot(pred, 3).float(), y)
    views.add(None, torch.nn.functional.one_hot(torch.tensor([2]), 3).float(), torch.tensor([1]))
    assert _read(views, ("a", "b", "c")) == {"confusion": [[1, 1, 0], [0, 1, 1], [2, 0, 1]], "misclassified": []}


def _normalised(rgb_top: tuple[float, ...], rgb_bottom: tuple[float, ...], size: int = 32) -> torch.Tensor:
    """One image, top half one colour and bottom half another, normalised as the loader would."""
    img = torch.zeros(3, size, size)
    img[:, : size // 2] = torch.tensor(rgb_top).reshape(3, 1, 1)
    img[:, size // 2 :] = torch.tensor(rgb_bottom).reshape(3, 1, 1)
    return (img - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)


def test_the_worst_errors_keep_their_real_pixels_labels_and_order() -> None:
    views = ValViews(2, torch.device("cpu"), {"mean": MEAN, "std": STD}, thumbs=True)
    x = torch.stack(
        [
            _normalised((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
            _normalised((0.0, 1.0, 0.0), (1, 1, 1)),
            _normalised((0.2, 0.2, 0.2), (0.2, 0.2, 0.2)),
        ]
    )
    y = torch.tensor([0, 1, 1])
    out = torch.tensor([[-1.0, 1.0], [5.0, -5.0], [-3.0, 3.0]])  # 0 and 1 wrong (1 worse), 2 right
    views.add(x, out, y)
    seen = _read(views, ("cat", "dog"))
    assert seen["confusion"] == [[0, 1], [1, 1]]
    worst = seen["misclassified"]
    assert [(w["true"], w["pred"]) for w in worst] == [("dog", "cat"), ("cat", "dog")]
    assert worst[0]["loss"] > worst[1]["loss"] > 0
    pixels = [bytes.fromhex(w["rgb"]) for w in worst]
    assert all(len(p) == THUMB * THUMB * 3 and w["size"] == THUMB for p, w in zip(pixels, worst))
    first, second = pixels[1], pixels[0]  # the red/blue image, then the green/white one
    assert tuple(first[:3]) == (255, 0, 0) and tuple(first[-3:]) == (0, 0, 255)
    assert tuple(second[:3]) == (0, 255, 0) and tuple(second[-3:]) == (255, 255, 255)


def test_more_errors_than_kept_keeps_the_highest_losses_across_batches() -> None:
    views = ValViews(2, torch.device("cpu"), {"mean": MEAN, "std": STD}, thumbs=True)
    margins = torch.arange(1, 2 * WORST + 1, dtype=torch.float32)  # the wrong class wins by this margin
    for chunk in margins.split(5):
        x = torch.zeros(len(chunk), 3, 8, 8)
        views.add(x, torch.stack([torch.zeros_like(chunk), chunk], 1), torch.zeros(len(chunk), dtype=torch.long))
    losses = [w["loss"] for w in _read(views, ("a", "b"))["misclassified"]]
    expected = torch.nn.functional.softplus(margins.flip(0)[:WORST])
    assert torch.allclose(torch.tensor(losses), expected, atol=1e-3)


def test_a_run_reports_its_confusion_and_worst_errors_in_the_event_and_summary(tmp_path) -> None:
    profile = tiny_profile(train={"epochs": 1})
    final = run_training(profile, tmp_path, lambda e: None, Control(), interactive=False)
    conf = final.confusion
    assert conf is not None and len(conf) == 3 and sum(map(sum, conf)) == 24  # 96 x 0.25 val examples
    for i, acc in enumerate(final.per_class_acc.values()):
        assert abs(acc - conf[i][i] / max(sum(conf[i]), 1)) < 1e-9
    errors = sum(map(sum, conf)) - sum(conf[i][i] for i in range(3))
    assert len(final.misclassified) == min(WORST, errors)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["confusion"] == [list(r) for r in conf]
    assert summary["misclassified"] == [dict(m) for m in final.misclassified]
    replayed = read_events(tmp_path)[-1]
    assert replayed.confusion == conf and replayed.misclassified == final.misclassified


def test_a_head_only_run_on_cached_features_still_shows_the_worst_errors_as_images(tmp_path) -> None:
    """The cache holds features, not images: the run's end reads the val images once for the thumbnails."""
    cached = Trainer(
        tiny_profile(strategy={"kind": "head_only"}, train={"epochs": 1, "lr": 1e-4}),
        tmp_path / "a",
        lambda e: None,
        Control(),
    ).run()
    plain = Trainer(
        tiny_profile(strategy={"kind": "head_only"}, train={"epochs": 1, "lr": 1e-4, "feature_cache": False}),
        tmp_path / "b",
        lambda e: None,
        Control(),
    ).run()
    assert cached.confusion == plain.confusion and sum(map(sum, cached.confusion)) == 24
    assert cached.misclassified and [m["rgb"] for m in cached.misclassified] == [m["rgb"] for m in plain.misclassified]
