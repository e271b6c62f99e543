"""Strategies: which groups train, with which optimizer param groups and LRs, and how frozen BatchNorm behaves."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.config import StrategyConfig
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import PhaseChanged
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.strategy import STRATEGIES, phase_due, plan_phases
from tuitune.errors import UserError

NAMES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_plan_phases_for_each_kind() -> None:
    def phases(**cfg):
        return plan_phases(NAMES, StrategyConfig(**cfg)).phases

    assert phases(kind="full") == (tuple(NAMES),)
    assert phases(kind="head_only") == (("head",),)
    assert phases(kind="groups", groups=("layer4", "head")) == (("layer4", "head"),)
    assert phases(kind="progressive", groups_per_phase=2) == (
        ("head",),
        ("layer3", "layer4", "head"),
        ("layer1", "layer2", "layer3", "layer4", "head"),
        tuple(NAMES),
    )
    with pytest.raises(UserError, match="strategy.groups: unknown layer group 'layer9'"):
        plan_phases(NAMES, StrategyConfig(kind="groups", groups=("layer9",)))


def test_strategy_table_gives_every_phase_an_lr_scale() -> None:
    """The table is the config's list of strategies; LP-FT's LR drop is data (its second phase's scale), not a
    special case in the trainer; the others keep the LR."""
    assert set(STRATEGIES) == set(next(f for f in fields(StrategyConfig) if f.name == "kind").metadata["choices"])
    for kind in STRATEGIES:
        plan = plan_phases(NAMES, StrategyConfig(kind=kind, groups=("head",), ft_lr_scale=0.25))
        assert len(plan.lr_scales) == len(plan.phases) and plan.phases[-1][-1] == "head"
        assert plan.lr_scales == ((1.0, 0.25) if kind == "lp_ft" else (1.0,) * len(plan.phases))
    assert plan_phases(NAMES, StrategyConfig(kind="lp_ft")).phases == (("head",), tuple(NAMES))
    with pytest.raises(UserError, match="strategy.kind: unknown strategy 'nope'"):
        plan_phases(NAMES, StrategyConfig(kind="nope"))


@pytest.mark.parametrize(
    "cfg, where, due",
    [
        ({"trigger": "epochs", "every_epochs": 2}, {"epoch": 1}, ""),
        ({"trigger": "epochs", "every_epochs": 2}, {"epoch": 2}, "epochs"),
        ({"trigger": "epochs", "every_epochs": 2}, {"epoch": 4, "phase_start_epoch": 3}, ""),  # counted from the phase
        ({"trigger": "epochs", "every_epochs": 1}, {"epoch": 2, "phase": 2}, ""),  # already in the last phase
        ({"trigger": "epochs", "every_epochs": 1}, {"epoch": 5}, ""),  # the run is over
        ({"trigger": "plateau", "plateau_patience": 2}, {"epoch": 3, "stale_epochs": 1}, ""),
        ({"trigger": "plateau", "plateau_patience": 2}, {"epoch": 3, "stale_epochs": 2}, "plateau"),
        ({"trigger": "manual", "fallback": "epochs", "every_epochs": 1}, {"epoch": 1, "interactive": True}, ""),
        ({"trigger": "manual", "fallback": "epochs", "every_epochs": 1}, {"epoch": 1}, "epochs"),  # no person: fallback
        ({"trigger": "manual", "fallback": "plateau"}, {"epoch": 1, "stale_epochs": 9}, "plateau"),
        ({"trigger": "manual", "fallback": "none"}, {"epoch": 4, "stale_epochs": 9}, ""),
    ],
)
def test_phase_due(cfg: dict, where: dict, due: str) -> None:
    where = {
        "interactive": False,
        "phase": 0,
        "num_phases": 3,
        "total_epochs": 5,
        "phase_start_epoch": 0,
        "stale_epochs": 0,
        **where,
    }
    assert phase_due(StrategyConfig(kind="progressive", **cfg), **where) == due


def _trainer(tmp_path, **strategy) -> Trainer:
    profile = tiny_profile(strategy=strategy, train={"lr": 0.01})
    return Trainer(profile, tmp_path, lambda e: None, Control(), interactive=True)


def _trainable(trainer: Trainer) -> dict[str, bool]:
    params = dict(trainer.parts.model.named_parameters())
    return {g.name: all(params[n].requires_grad for n in g.param_names) for g in trainer.parts.groups}


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("full", {"stem", "layer1", "layer2", "layer3", "layer4", "head"}),
        ("head_only", {"head"}),
    ],
)
def test_masks_and_param_groups(tmp_path, kind: str, expected: set[str]) -> None:
    trainer = _trainer(tmp_path, kind=kind, lr_decay=0.5)
    assert {n for n, on in _trainable(trainer).items() if on} == expected
    assert {n for n, on in _trainable(trainer).items() if not on} == set(NAMES) - expected
    layer_groups = {g["layer_group"] for g in trainer.st.optimizer.param_groups}
    assert layer_groups == expected
    for g in trainer.st.optimizer.param_groups:  # discriminative LR: head 0.01, each group deeper x0.5
        depth = NAMES[::-1].index(g["layer_group"])
        assert g["lr"] == pytest.approx(0.01 * 0.5**depth)
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else 0.01)


def test_groups_strategy(tmp_path) -> None:
    trainer = _trainer(tmp_path, kind="groups", groups=["layer4", "head"])
    assert {n for n, on in _trainable(trainer).items() if on} == {"layer4", "head"}


def test_unfreeze_adds_param_groups_and_keeps_state(tmp_path) -> None:
    trainer = _trainer(tmp_path, kind="progressive", groups_per_phase=1, trigger="manual", lr_decay=0.5)
    assert {n for n, on in _trainable(trainer).items() if on} == {"head"}
    assert len(trainer.st.optimizer.param_groups) == 2  # head weights (decay) + head bias (no decay)
    trainer.controller.between_steps()  # nothing queued: no change
    # one real step so the optimizer has state for the head
    x = torch.randn(4, 3, 32, 32)
    trainer.parts.model(x).sum().backward()
    trainer.st.optimizer.step()
    head_param = trainer.st.optimizer.param_groups[0]["params"][0]
    state_before = {k: v.clone() for k, v in trainer.st.optimizer.state[head_param].items()}
    trainer.control.put(UnfreezeNext())
    trainer.controller.between_steps()
    assert {n for n, on in _trainable(trainer).items() if on} == {"layer4", "head"}
    groups = trainer.st.optimizer.param_groups
    assert [g["layer_group"] for g in groups] == ["head", "head", "layer4", "layer4"]
    assert groups[2]["lr"] == pytest.approx(0.005)  # one step deeper: x0.5
    assert groups[0]["lr"] == pytest.approx(0.01)
    for k, v in state_before.items():  # the head's Adam moments survived the unfreeze
        assert torch.equal(trainer.st.optimizer.state[head_param][k], v)


def test_frozen_batchnorm_stays_in_eval_and_keeps_stats(tmp_path) -> None:
    profile = tiny_profile(strategy={"kind": "head_only"}, train={"epochs": 1})
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    bns = {n: m for n, m in trainer.parts.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    trainer.run()
    for name, m in bns.items():
        assert torch.equal(m.running_mean, before[name][0]), name
        assert torch.equal(m.running_var, before[name][1]), name
    from tuitune.engine.train.strategy import set_train_mode

    set_train_mode(trainer.parts.model, freeze_bn=True)
    assert trainer.parts.model.training
    assert all(not m.training for m in bns.values())


def test_trainable_batchnorm_updates_stats(tmp_path) -> None:
    profile = tiny_profile(strategy={"kind": "full"}, train={"epochs": 1})
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    bn = next(m for m in trainer.parts.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    trainer.run()
    assert not torch.equal(bn.running_mean, before)


def test_progressive_epochs_trigger(tmp_path, events_sink) -> None:
    events, emit = events_sink
    profile = tiny_profile(
        strategy={"kind": "progressive", "groups_per_phase": 3, "trigger": "epochs", "every_epochs": 1},
        train={"epochs": 3},
    )
    Trainer(profile, tmp_path, emit, Control()).run()
    changes = of_type(events, PhaseChanged)
    assert [(c.phase, c.epoch, c.reason) for c in changes] == [(1, 1, "epochs"), (2, 2, "epochs")]
    assert changes[0].unfrozen == ("layer2", "layer3", "layer4")


# ------------------------------------------------------------------------------- the plateau question, headless


def _plateau_profile(**strategy_keys):
    from tests.engine.conftest import tiny_profile

    # lr so small that val_loss never improves by min_delta: the plateau watch fires after `plateau_patience`
    return tiny_profile(
        train={"epochs": 4, "lr": 1e-9},
        strategy={
            "kind": "progressive",
            "trigger": "plateau",
            "plateau_patience": 1,
            "plateau_min_delta": 0.5,
            **strategy_keys,
        },
    )


def test_plateau_wait_holds_the_run_at_the_question_until_it_is_answered(tmp_path) -> None:
    """With `plateau_wait`, an interactive run stops at the epoch boundary where it asks: an answer queued as the
    question arrives (y: UnfreezeNext, then Resume) is applied before any further step."""
    from tests.engine.conftest import of_type
    from tuitune.engine.commands import Control, Resume, UnfreezeNext
    from tuitune.engine.events import CommandApplied, MetricsUpdated, PhaseChanged, UnfreezeSuggested
    from tuitune.engine.train.loop import Trainer

    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, UnfreezeSuggested) and len(of_type(events, UnfreezeSuggested)) == 1:
            control.put(UnfreezeNext())
            control.put(Resume())

    Trainer(_plateau_profile(plateau_wait=True), tmp_path, emit, control, interactive=True).run()
    asked = of_type(events, UnfreezeSuggested)[0]
    assert asked.waiting
    i = events.index(asked)
    change = of_type(events[i:], PhaseChanged)[0]
    steps_between = of_type(events[i : events.index(change)], MetricsUpdated)
    assert not steps_between and change.epoch == asked.epoch  # no step was trained while it waited
    assert [c.command for c in of_type(events[i:], CommandApplied)][:2] == ["UnfreezeNext", "Resume"]


def test_a_no_to_a_waiting_plateau_question_asks_again_later(tmp_path) -> None:
    """n (Resume alone) keeps the phase; after another `plateau_patience` flat epochs the run pauses and asks
    again, so a person who said no still gets the next chance."""
    from tests.engine.conftest import of_type
    from tuitune.engine.commands import Control, Resume
    from tuitune.engine.events import PhaseChanged, UnfreezeSuggested
    from tuitune.engine.train.loop import Trainer

    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, UnfreezeSuggested):
            control.put(Resume())

    profile = _plateau_profile(plateau_wait=True)
    Trainer(apply_overrides_to(profile, "train.epochs=5"), tmp_path, emit, control, interactive=True).run()
    assert [(e.epoch, e.epochs) for e in of_type(events, UnfreezeSuggested)] == [(2, 1), (3, 1), (4, 1)]
    assert not of_type(events, PhaseChanged)


def apply_overrides_to(profile, *overrides: str):
    from tuitune.config import apply_overrides, profile_from_dict, profile_to_dict

    return profile_from_dict(apply_overrides(profile_to_dict(profile), list(overrides)), file="tiny.toml")


def test_headless_runs_use_the_fallback_for_a_plateau_question(tmp_path) -> None:
    """Nobody answers a headless run: `trigger = "plateau"` with `fallback = "epochs"` moves on every
    `every_epochs` (the demo's headless behaviour); the default fallback keeps acting on the plateau itself."""
    from tests.engine.conftest import of_type
    from tuitune.engine.commands import Control
    from tuitune.engine.events import PhaseChanged, UnfreezeSuggested
    from tuitune.engine.train.loop import Trainer

    events: list = []
    profile = _plateau_profile(fallback="epochs", every_epochs=2, plateau_wait=True)
    Trainer(profile, tmp_path / "a", events.append, Control(), interactive=False).run()
    assert [(e.epoch, e.reason) for e in of_type(events, PhaseChanged)] == [(2, "epochs")]
    assert not of_type(events, UnfreezeSuggested)
    events.clear()
    Trainer(_plateau_profile(), tmp_path / "b", events.append, Control(), interactive=False).run()
    assert [e.reason for e in of_type(events, PhaseChanged)] == ["plateau"]
