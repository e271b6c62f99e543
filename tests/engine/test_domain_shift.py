"""The domain-shift measure and AdaBN: ~0 where the data matches what the layers expect, large where it does not;
re-estimating BatchNorm statistics on the target data brings it down, in a run too."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import AdaptBatchNorm, Control
from tuitune.engine.events import (
    CommandApplied,
    DomainShiftMeasured,
    EpochEnded,
    FeatureCacheChanged,
    MetricsUpdated,
    SetupProgressed,
)
from tuitune.engine.model.groups import LayerGroup
from tuitune.engine.train.domain_shift import adapt_batchnorm, measure
from tuitune.engine.train.loop import Trainer

CPU = torch.device("cpu")


def _batches(seed: int, scale: float = 1.0, offset: float = 0.0, n: int = 4) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 3, 8, 8, generator=g) * scale + offset, torch.zeros(32, dtype=torch.long)) for _ in range(n)
    ]


def _bn_model() -> tuple[nn.Module, tuple[LayerGroup, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    groups = (
        LayerGroup("body", ("0.weight", "0.bias", "1.weight", "1.bias"), 120),
        LayerGroup("head", ("5.weight", "5.bias"), 10),
    )
    return model, groups


def test_a_batchnorm_models_shift_is_about_zero_on_its_own_statistics_and_large_on_shifted_data() -> None:
    model, groups = _bn_model()
    layers, read = adapt_batchnorm(model, _batches(1, n=8), CPU, contextlib.nullcontext, 8)  # "pretraining"
    assert (layers, read) == (1, 8)
    ref, same = measure(model, groups, _batches(2), CPU, contextlib.nullcontext)
    _, shifted = measure(model, groups, _batches(2, scale=3.0, offset=2.0), CPU, contextlib.nullcontext)
    assert ref == "bn" and same[1] is None and shifted[1] is None  # the head has no BatchNorm
    assert same[0] < 0.02 and shifted[0] > 1.0  # measured: 0.0016 and 3.96


def test_adabn_re_estimates_the_running_statistics_and_lowers_the_shift() -> None:
    """Statistics it had from "pretraining" (10 batches of other data) are forgotten: after AdaBN they are the
    target's alone (the mean of its 6 batches' statistics), not a blend with the old ones."""
    model, groups = _bn_model()
    adapt_batchnorm(model, _batches(1, n=10), CPU, contextlib.nullcontext, 10)  # "pretraining"
    target = _batches(3, scale=6.0, offset=-4.0, n=6)
    before = measure(model, groups, target, CPU, contextlib.nullcontext)[1][0]
    running = model[1].running_mean.clone()
    adapt_batchnorm(model, target, CPU, contextlib.nullcontext, 6)
    with torch.no_grad():
        convs = [model[0](x) for x, _ in target]
    mean = torch.stack([c.mean((0, 2, 3)) for c in convs]).mean(0)
    var = torch.stack([c.transpose(0, 1).flatten(1).var(1) for c in convs]).mean(0)  # unbiased, as BN keeps it
    assert not torch.equal(running, model[1].running_mean)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, rtol=1e-4)
    assert int(model[1].num_batches_tracked) == 6
    assert model[1].momentum == 0.1 and not model.training
    after = measure(model, groups, target, CPU, contextlib.nullcontext)[1][0]
    assert before > 1.0 and after < 0.02


def test_without_batchnorm_the_shift_compares_group_outputs_on_source_and_target_data() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    groups = (LayerGroup("body", ("0.weight", "0.bias"), 112), LayerGroup("head", ("4.weight", "4.bias"), 10))
    source = _batches(4)
    ref, same = measure(model, groups, _batches(5), CPU, contextlib.nullcontext, source_loader=source)
    _, shifted = measure(model, groups, _batches(5, 3.0, 2.0), CPU, contextlib.nullcontext, source_loader=source)
    assert ref == "source" and all(v < 0.05 for v in same) and all(v > 1.0 for v in shifted)
    assert measure(model, groups, _batches(5), CPU, contextlib.nullcontext) is None  # no BN, no source: nothing


def test_a_run_measures_the_shift_at_start_and_every_epoch_and_applies_adabn_at_a_step_boundary(tmp_path) -> None:
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            control.put(AdaptBatchNorm(batches=3))

    profile = tiny_profile(train={"epochs": 2, "lr": 1e-4, "domain_shift": True}, strategy={"kind": "head_only"})
    trainer = Trainer(profile, tmp_path, emit, control)
    trainer.run()
    shifts = of_type(events, DomainShiftMeasured)
    assert [s.reason for s in shifts] == ["start", "AdaptBatchNorm", "epoch", "epoch"]
    start, adapted = shifts[0], shifts[1]
    assert start.reference == "bn" and start.groups[-1] == "head" and start.shifts[-1] is None
    assert adapted.global_step == 2
    body = [i for i, v in enumerate(start.shifts) if v is not None]
    assert sum(adapted.shifts[i] for i in body) < 0.5 * sum(start.shifts[i] for i in body)
    applied = next(e for e in of_type(events, CommandApplied) if e.command == "AdaptBatchNorm")
    assert applied.global_step == 2 and "BatchNorm layers re-estimated on 3 target batches" in applied.detail


def test_adabn_in_a_run_rebuilds_the_feature_cache_built_on_the_old_statistics(tmp_path) -> None:
    """Head-only training on cached features: AdaBN at step 2 changes what the frozen body outputs, so the cache
    built at the start is dropped and rebuilt; the run then trains exactly as the same run without a cache."""

    def run(folder: str, cache: bool) -> list:
        events: list = []
        control = Control()

        def emit(event) -> None:
            events.append(event)
            if isinstance(event, MetricsUpdated) and event.global_step == 2:
                control.put(AdaptBatchNorm(batches=3))

        profile = tiny_profile(
            train={"epochs": 2, "lr": 0.05, "log_every": 1, "feature_cache": cache, "domain_shift": False},
            strategy={"kind": "head_only"},
        )
        Trainer(profile, tmp_path / folder, emit, control).run()
        return events

    cached, plain = run("cached", True), run("plain", False)
    assert [(c.active, c.global_step) for c in of_type(cached, FeatureCacheChanged)] == [(True, 0)]
    builds = [i for i, e in enumerate(cached) if isinstance(e, SetupProgressed) and e.task == "cache" and e.finished]
    step2 = next(i for i, e in enumerate(cached) if isinstance(e, MetricsUpdated) and e.global_step == 2)
    before = [i for i in builds if i < step2]
    assert before and len(builds) == 2 * len(before)  # built at the start, built again after AdaBN
    losses = [[m.train_loss for m in of_type(ev, MetricsUpdated)] for ev in (cached, plain)]
    assert len(losses[0]) == len(losses[1]) > 4 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    val = [[e.val_loss for e in of_type(ev, EpochEnded)] for ev in (cached, plain)]
    assert val[0] == pytest.approx(val[1], abs=1e-5)
