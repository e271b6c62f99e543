"""BatchNorm the fastai way (`strategy.train_bn`: the norm layers of frozen groups keep training) and AdaBN at the
run's start or at every unfreeze (`strategy.adabn`), on the tiny resnet18 (BatchNorm in every group)."""

from __future__ import annotations

import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import CommandApplied, FeatureCacheChanged, PhaseChanged
from tuitune.engine.train.loop import Trainer


def _bn_of(trainer: Trainer, group: str) -> list[tuple[str, torch.nn.Module]]:
    names = set(next(g for g in trainer.parts.groups if g.name == group).param_names)
    return [
        (n, m)
        for n, m in trainer.parts.model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d) and f"{n}.weight" in names
    ]


def test_train_bn_trains_the_norm_layers_of_frozen_groups_and_nothing_else_there(tmp_path) -> None:
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "manual", "train_bn": True, "lr_decay": 0.5},
        train={"epochs": 1, "lr": 0.01},
    )
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    params = dict(trainer.parts.model.named_parameters())
    stem = _bn_of(trainer, "stem")
    bn_names = {f"{n}.{p}" for n, _ in stem for p in ("weight", "bias")}
    stem_group = next(g for g in trainer.parts.groups if g.name == "stem")
    assert stem and all(params[n].requires_grad for n in bn_names)
    assert not any(params[n].requires_grad for n in stem_group.param_names if n not in bn_names)  # conv: frozen
    assert all(m.training for _, m in stem)  # train mode: batch statistics
    # in the optimizer, once, at the stem's discriminative LR (5 groups below the head: 0.01 * 0.5**5)
    in_opt = [n for g in trainer.st.optimizer.param_groups for n in g["param_names"]]
    assert len(in_opt) == len(set(in_opt)) and bn_names <= set(in_opt)
    stem_lrs = {g["lr"] for g in trainer.st.optimizer.param_groups if g["layer_group"] == "stem"}
    assert stem_lrs == {0.01 * 0.5**5}
    conv = stem_group.param_names[0]
    before = {n: t.detach().clone() for n, t in trainer.parts.model.state_dict().items()}
    trainer.run()
    after = trainer.parts.model.state_dict()
    assert torch.equal(after[conv], before[conv])  # the frozen conv did not move
    bn = stem[0][0]
    for key in (f"{bn}.weight", f"{bn}.running_mean"):  # its BatchNorm did: affine weights and statistics
        assert not torch.equal(after[key], before[key]), key
    # unfreezing a group whose norm layers already train adds the rest of it, and nothing twice
    trainer.control.put(UnfreezeNext())
    trainer.controller.between_steps()
    in_opt = [n for g in trainer.st.optimizer.param_groups for n in g["param_names"]]
    layer4 = next(g for g in trainer.parts.groups if g.name == "layer4")
    assert len(in_opt) == len(set(in_opt)) and set(layer4.param_names) <= set(in_opt)


def test_default_keeps_frozen_norm_layers_frozen_and_the_feature_cache_on(tmp_path) -> None:
    """Today's default, against which train_bn is measured: frozen BatchNorm in eval, affine weights frozen, the
    frozen part cached; with train_bn the cache says why it is not used."""
    events: list = []
    profile = tiny_profile(strategy={"kind": "head_only"}, train={"epochs": 1})
    Trainer(profile, tmp_path / "a", events.append, Control()).run()
    assert of_type(events, FeatureCacheChanged)[0].active
    events.clear()
    profile = tiny_profile(strategy={"kind": "head_only", "train_bn": True}, train={"epochs": 1})
    Trainer(profile, tmp_path / "b", events.append, Control()).run()
    said = of_type(events, FeatureCacheChanged)[0]
    assert not said.active and said.detail.startswith("not used: the lowest layers (stem) train"), said.detail


def test_train_bn_resumes_into_the_same_param_groups(tmp_path) -> None:
    """In phase 2 the optimizer holds layer4's norm-only groups from the start and its other weights since the
    unfreeze; a resumed trainer rebuilds exactly those groups, with their LRs, and loads their state by name."""
    profile = tiny_profile(strategy={"kind": "progressive", "trigger": "manual", "train_bn": True, "lr_decay": 0.5})
    first = Trainer(profile, tmp_path / "a", lambda e: None, Control())
    first.controller.next_phase("manual")
    first.checkpoints.save("last")
    second = Trainer(profile, tmp_path / "b", lambda e: None, Control(), resume=tmp_path / "a")

    def groups(trainer: Trainer) -> list:
        return sorted((g["layer_group"], g["lr"], tuple(g["param_names"])) for g in trainer.st.optimizer.param_groups)

    assert groups(first) == groups(second) and second.st.trainable == ("layer4", "head")
    mask = {n: p.requires_grad for n, p in first.parts.model.named_parameters()}
    assert mask == {n: p.requires_grad for n, p in second.parts.model.named_parameters()}


def _stats(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.parts.model.state_dict().items() if "running_mean" in k}


def test_adabn_start_re_estimates_the_statistics_before_the_first_step(tmp_path) -> None:
    """head_only: every BatchNorm is frozen in eval, so without AdaBN its statistics never move (see
    test_strategy); with `adabn = "start"` they are re-estimated once, before training, and then stay."""
    seen: dict[str, dict] = {}
    trainer: Trainer | None = None

    def emit(event) -> None:
        if isinstance(event, CommandApplied) and event.command == "AdaptBatchNorm":
            seen[event.detail] = _stats(trainer) | {"step": event.global_step}  # type: ignore[arg-type]

    profile = tiny_profile(strategy={"kind": "head_only", "adabn": "start", "adabn_batches": 3}, train={"epochs": 2})
    trainer = Trainer(profile, tmp_path, emit, Control())
    initial = _stats(trainer)
    trainer.run()
    ((detail, at),) = seen.items()
    assert at.pop("step") == 0 and detail.startswith("strategy.adabn = 'start' (start): running statistics of")
    final = _stats(trainer)
    assert all(not torch.equal(at[k], initial[k]) for k in initial)  # re-estimated on the target data
    assert all(torch.equal(final[k], at[k]) for k in initial)  # and frozen after


def test_adabn_phase_re_estimates_at_every_unfreeze(tmp_path) -> None:
    events: list = []
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "adabn": "phase", "adabn_batches": 2},
        train={"epochs": 3},
    )
    Trainer(profile, tmp_path, events.append, Control()).run()
    adapted = [e for e in of_type(events, CommandApplied) if e.command == "AdaptBatchNorm"]
    phases = of_type(events, PhaseChanged)
    assert [e.detail.split(":")[0] for e in adapted] == [
        "strategy.adabn = 'phase' (start)",
        "strategy.adabn = 'phase' (phase)",
        "strategy.adabn = 'phase' (phase)",
    ]
    assert [e.global_step for e in adapted[1:]] == [p.global_step for p in phases]
