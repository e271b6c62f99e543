"""Surgical fine-tuning (Lee et al. 2023): Auto-RGN (`strategy.kind = "auto_rgn"`: each group's LR scaled by its
relative gradient norm, the largest keeping the base LR) and unfreezing the most shifted groups first
(`strategy.order = "shift"`)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.config import StrategyConfig
from tuitune.engine.commands import Control
from tuitune.engine.events import DomainShiftMeasured, MetricsUpdated, PhaseChanged, RunStarted
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.strategy import plan_phases, rgn_scales, shift_order

NAMES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_rgn_scales_give_the_largest_relative_gradient_the_full_lr() -> None:
    scales = rgn_scales({"a": 1.0, "b": 2.0, "c": 0.0}, {"a": 10.0, "b": 4.0, "c": 3.0})
    assert scales == pytest.approx({"a": 0.2, "b": 1.0, "c": 0.0})
    assert rgn_scales({"a": 0.0}, {"a": 1.0, "b": 2.0}) == {"a": 1.0, "b": 1.0}  # nothing to go by: unchanged
    assert rgn_scales({"a": 1.0, "b": math.nan}, {"a": 2.0, "b": 1.0}) == {"a": 1.0, "b": 0.0}


def test_auto_rgn_scales_each_groups_lr_by_its_relative_gradient_norm(tmp_path) -> None:
    """One real backward on the tiny resnet, then the trainer's rescale: every group's LR is the base LR times
    (|g|/|w|) / max(|g|/|w|), computed here from the parameters themselves."""
    profile = tiny_profile(strategy={"kind": "auto_rgn"}, train={"lr": 0.01})
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    x, y = next(iter(trainer.parts.train_loader))
    torch.nn.functional.cross_entropy(trainer.parts.model(x), y).backward()
    params = dict(trainer.parts.model.named_parameters())
    rgn = {}
    for g in trainer.parts.groups:
        grad = math.sqrt(sum(float(params[n].grad.pow(2).sum()) for n in g.param_names))
        weight = math.sqrt(sum(float(params[n].detach().pow(2).sum()) for n in g.param_names))
        rgn[g.name] = grad / weight
    trainer.st.rescale_by_rgn()
    trainer.st.apply_lr()
    lrs = trainer.st.group_lrs()
    top = max(rgn.values())
    assert lrs == pytest.approx({g: 0.01 * r / top for g, r in rgn.items()}, rel=1e-4)
    assert max(lrs.values()) == pytest.approx(0.01) and min(lrs.values()) < 0.005


def test_auto_rgn_rescales_at_each_epochs_first_step_and_a_resume_keeps_the_factors(tmp_path) -> None:
    """The LRs hold through an epoch and move at the next one's first step; a run stopped mid-epoch resumes with
    the epoch's factors (they ride in the optimizer's param groups), not measured again."""
    profile = tiny_profile(strategy={"kind": "auto_rgn"}, train={"epochs": 2, "lr": 0.01, "log_every": 1})
    control, first = Control(), []

    def stop(event) -> None:
        first.append(event)
        if isinstance(event, MetricsUpdated) and event.epoch == 2 and event.step == 2:
            control.request_stop()

    run_training(profile, tmp_path, stop, control, interactive=False)
    resumed: list = []
    run_training(profile, tmp_path, resumed.append, Control(), interactive=False, resume=tmp_path)
    by_epoch: dict[int, set] = {}
    for m in of_type(first + resumed, MetricsUpdated):
        by_epoch.setdefault(m.epoch, set()).add(tuple(round(v, 12) for v in m.lrs))
    assert [len(lrs) for lrs in by_epoch.values()] == [1, 1]  # one set of LRs an epoch, across the resume too
    assert by_epoch[1] != by_epoch[2] and any(m.epoch == 2 for m in of_type(resumed, MetricsUpdated))
    assert all(max(next(iter(lrs))) == pytest.approx(0.01) for lrs in by_epoch.values())


def test_shift_order_puts_the_most_shifted_groups_first() -> None:
    shift = {"stem": 3.0, "layer1": 0.5, "layer2": None, "layer3": 2.0, "layer4": 0.5, "head": None}
    assert shift_order(NAMES, shift) == ["stem", "layer3", "layer4", "layer1", "layer2"]  # ties: top down
    plan = plan_phases(NAMES, StrategyConfig(kind="progressive", groups_per_phase=2, order="shift"), shift)
    assert plan.phases == (
        ("head",),
        ("stem", "layer3", "head"),
        ("stem", "layer1", "layer3", "layer4", "head"),
        tuple(NAMES),
    )


def test_a_run_unfreezes_in_the_order_of_its_measured_shift(tmp_path) -> None:
    """Pretrained statistics that fit the data badly low down (the stem's BatchNorm expects a variance of 0.01, so
    it scales up what every layer after it sees): the most shifted groups unfreeze right after the head, by the
    same reading the run reports at its start, not in the top-down order."""
    import timm
    from safetensors.torch import save_model

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, channels=[8, 16, 32, 64], stem_width=8)
    model.bn1.running_var.fill_(0.01)
    save_model(model, str(tmp_path / "w.safetensors"))
    events: list = []
    profile = tiny_profile(
        model={"weights": str(tmp_path / "w.safetensors")},
        strategy={"kind": "progressive", "order": "shift", "trigger": "epochs", "every_epochs": 1},
        train={"epochs": 3, "domain_shift": True},
    )
    Trainer(profile, tmp_path / "run", events.append, Control()).run()
    started = of_type(events, RunStarted)[0]
    measured = next(e for e in of_type(events, DomainShiftMeasured) if e.reason == "start")  # the same weights
    shift = dict(zip(measured.groups, measured.shifts))
    ranked = sorted((g for g, v in shift.items() if v is not None), key=lambda g: -shift[g])
    assert ranked[:2] != ["layer4", "layer3"], shift  # not top down
    assert started.phases[1:3] == (
        tuple(g for g in measured.groups if g in {"head", ranked[0]}),
        tuple(g for g in measured.groups if g in {"head", *ranked[:2]}),
    )
    assert [c.unfrozen for c in of_type(events, PhaseChanged)] == [(ranked[0],), (ranked[1],)]


def test_without_batchnorm_or_source_data_the_order_stays_top_down_with_a_warning(tmp_path) -> None:
    vit = {"source": "timm", "name": "test_vit", "pretrained": False, "img_size": 32, "kwargs": {}}
    profile = tiny_profile(model=vit, strategy={"kind": "progressive", "order": "shift"}, train={"epochs": 1})
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    names = [g.name for g in trainer.parts.groups]
    assert trainer.parts.phases[1] == (names[-2], names[-1])
    assert any('strategy.order = "shift": no BatchNorm' in w for w in trainer.parts.warnings)
