"""The fine-tuning toolbox, unit by unit: each technique acts as its definition says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuitune.config import AugmentConfig, LossConfig, RegularizationConfig, TrainConfig
from tuitune.engine.data.augment import augment_train, build_mixup
from tuitune.engine.train.losses import FocalLoss, balanced_weights, build_loss
from tuitune.engine.train.regularize import Penalty, build_ema
from tuitune.engine.train.schedule import LRSchedule

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
TARGET = torch.tensor([0, 2, 1])


def test_focal_at_gamma_zero_alpha_one_is_cross_entropy() -> None:
    assert FocalLoss(gamma=0.0, alpha=1.0)(LOGITS, TARGET) == pytest.approx(F.cross_entropy(LOGITS, TARGET).item())


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.5, 0.4, 0.3]])
    y = torch.tensor([0])
    ratio_focal = FocalLoss(2.0, 1.0)(easy, y) / FocalLoss(2.0, 1.0)(hard, y)
    ratio_ce = F.cross_entropy(easy, y) / F.cross_entropy(hard, y)
    assert ratio_focal < ratio_ce / 10


def test_label_smoothing_changes_the_target() -> None:
    plain = build_loss(LossConfig(), 3)(LOGITS, TARGET)
    smooth = build_loss(LossConfig(label_smoothing=0.2), 3)(LOGITS, TARGET)
    manual = -(((1 - 0.2) * F.one_hot(TARGET, 3) + 0.2 / 3) * F.log_softmax(LOGITS, -1)).sum(-1).mean()
    assert smooth.item() == pytest.approx(manual.item(), rel=1e-5) and smooth.item() != pytest.approx(plain.item())


def test_class_weights_explicit_and_balanced() -> None:
    w = balanced_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    loss = build_loss(LossConfig(class_weights=(1.0, 5.0, 1.0)), 3)
    assert loss(LOGITS, TARGET).item() == pytest.approx(
        F.cross_entropy(LOGITS, TARGET, weight=torch.tensor([1.0, 5.0, 1.0])).item()
    )


def _schedule(**train) -> tuple[LRSchedule, list[float]]:
    cfg = TrainConfig(**{"epochs": 4, **train})
    sched = LRSchedule(cfg, steps_per_epoch=10)
    factors = []
    for step in range(40):
        factors.append(sched.factor(step))
        if step % 10 == 9:
            sched.epoch_end(val_loss=1.0)
    return sched, factors


def test_schedule_shapes() -> None:
    _, constant = _schedule(schedule="constant", warmup_steps=5)
    assert constant[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and constant[-1] == 1.0
    _, cosine = _schedule(schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert cosine[0] == pytest.approx(1.0) and cosine[20] == pytest.approx(0.5, abs=0.05) and cosine[-1] < 0.01
    _, step = _schedule(schedule="step", decay_epochs=2, decay_rate=0.1)
    assert step[19] == pytest.approx(1.0) and step[20] == pytest.approx(0.1)
    _, onecycle = _schedule(schedule="onecycle", warmup_steps=10)
    peak = max(range(40), key=lambda i: onecycle[i])
    assert 8 <= peak <= 11 and onecycle[0] < 0.1 and onecycle[-1] < 0.01
    _, plateau = _schedule(schedule="plateau", lr_patience=1, decay_rate=0.5)  # val loss never improves
    assert plateau[0] == 1.0 and plateau[-1] == pytest.approx(0.5)


def test_newly_unfrozen_group_warms_up_on_its_own() -> None:
    sched = LRSchedule(TrainConfig(schedule="constant", unfreeze_warmup_steps=4), steps_per_epoch=10)
    old, new = {"base_lr": 1.0, "joined_step": 0}, {"base_lr": 0.5, "joined_step": 20}
    assert [sched.group_factor(new, s) for s in (20, 21, 23, 24)] == [0.25, 0.5, 1.0, 1.0]
    assert sched.group_factor(old, 21) == 1.0


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))


class _Group:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.param_names = names


def test_l2_sp_penalises_distance_to_the_start_not_to_zero() -> None:
    model = _linear()
    groups = (_Group(("0.weight", "0.bias")), _Group(("1.weight", "1.bias")))
    penalty = Penalty(RegularizationConfig(l2_sp=2.0), model, groups)
    assert float(penalty()) == 0.0  # at the pretrained weights: nothing to pull
    with torch.no_grad():
        model[0].weight.add_(0.1)
        model[1].weight.add_(5.0)  # the head is not anchored
    assert float(penalty()) == pytest.approx(0.5 * 2.0 * (0.1**2) * 32, rel=1e-4)


def test_l1_penalty_is_the_weights_l1_norm() -> None:
    model = _linear()
    groups = (_Group(("0.weight", "0.bias")), _Group(("1.weight", "1.bias")))
    penalty = Penalty(RegularizationConfig(l1=0.01), model, groups)
    expected = 0.01 * (model[0].weight.abs().sum() + model[1].weight.abs().sum())
    assert float(penalty()) == pytest.approx(float(expected))


def test_ema_follows_the_decay() -> None:
    model = _linear()
    ema = build_ema(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0), atol=1e-6)
    assert not torch.allclose(ema.module[0].weight, model[0].weight)


def test_mixup_changes_the_targets() -> None:
    torch.manual_seed(0)
    mixup = build_mixup(AugmentConfig(mixup=0.4), num_classes=3, label_smoothing=0.0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    mixed_x, soft = mixup(x.clone(), y)
    assert soft.shape == (4, 3) and not torch.equal(soft, F.one_hot(y, 3).float())
    assert torch.allclose(soft.sum(-1), torch.ones(4)) and not torch.equal(mixed_x, x)
    assert build_mixup(AugmentConfig(), 3, 0.0) is None


def test_train_augmentation_is_random_and_eval_is_not() -> None:
    from tuitune.config import DataConfig
    from tuitune.engine.data.kinds import build_datasets

    data_config = {
        "input_size": (3, 32, 32),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    bundle = build_datasets(DataConfig(kind="digits", classes=(0, 1)), task="image", data_config=data_config)
    aug = augment_train(bundle, data_config, AugmentConfig(train_transform="timm", scale_min=0.5, hflip=0.0))
    torch.manual_seed(0)
    a, b = aug.train[0][0], aug.train[0][0]
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    assert torch.equal(aug.val[0][0], bundle.val[0][0]) and len(aug.train) == len(bundle.train)
    assert aug.train[0][1] == bundle.train[0][1]
