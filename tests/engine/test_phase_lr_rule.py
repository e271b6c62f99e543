"""An LR finder that serves phases: the `new_groups` rule (the head's LR kept, the new groups' LR set by a sweep of
them alone, capped by the groups above), sweeps within a share of their phase and on the feature cache, and a
cosine cycle per phase (`train.restart = "phase"`)."""

from __future__ import annotations

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tuitune.config import ProfileError, TrainConfig
from tuitune.engine.commands import Control
from tuitune.engine.events import CommandApplied, LRFound, MetricsUpdated, PhaseChanged
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.lr_sweep import _group_ratios, sweep_run
from tuitune.engine.train.phase_lr import new_groups_lrs, sweep_steps
from tuitune.engine.train.schedule import LRSchedule


def test_sweep_steps_stay_a_share_of_the_phase_unless_a_step_costs_nothing() -> None:
    assert sweep_steps(100, 500, 0.1, cheap=False) == 50
    assert sweep_steps(100, 50, 0.1, cheap=False) == 0  # 5 steps read nothing: no sweep
    assert sweep_steps(100, 50, 0.1, cheap=True) == 100  # a head on cached features
    assert sweep_steps(30, 50, 0.0, cheap=False) == 30  # budget 0: no limit


def test_new_groups_keep_the_discriminative_order_under_the_groups_above() -> None:
    two = ["layer3", "layer4"]
    assert new_groups_lrs(3e-3, 1e-3, 0.5, two, 3e-4) == pytest.approx({"layer4": 1e-3, "layer3": 5e-4})
    assert new_groups_lrs(2e-4, 1e-3, 0.5, two, 3e-4) == pytest.approx({"layer4": 2e-4, "layer3": 1e-4})
    # no answer: the profile's LR for them, not the head's (a head on cached features wants far more)
    assert new_groups_lrs(None, 2e-2, 1.0, ["layer4"], 3e-4) == pytest.approx({"layer4": 3e-4})
    assert new_groups_lrs(None, 1e-4, 1.0, ["layer4"], 3e-4) == pytest.approx({"layer4": 1e-4})  # capped


def _rule_profile(epochs: int = 3, **strategy):
    return tiny_profile(
        strategy={
            "kind": "progressive",
            "trigger": "epochs",
            "every_epochs": 1,
            "lr_decay": 0.5,
            "phase_lr": "find",
            "phase_lr_steps": 20,
            **strategy,
        },
        train={"epochs": epochs, "lr": 0.01},
    )


def test_later_phases_keep_the_heads_lr_and_set_the_new_groups(tmp_path) -> None:
    events: list = []
    trainer: Trainer | None = None
    lrs: list = []

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, CommandApplied) and event.command == "ApplyLR":
            lrs.append(trainer.st.base_lrs())  # type: ignore[union-attr]

    trainer = Trainer(_rule_profile(phase_lr_budget=0.0), tmp_path, emit, Control())
    trainer.run()
    found = of_type(events, LRFound)
    assert [f.phase for f in found] == [0, 1, 2]
    head = found[0].suggestion
    assert lrs[0]["head"] == pytest.approx(head)  # the first phase: the head's LR is the answer
    for phase, (f, after) in enumerate(zip(found[1:], lrs[1:]), start=1):
        new = ["layer4", "layer3"][phase - 1]
        above = min(v for g, v in lrs[phase - 1].items() if g in trainer.parts.phases[phase - 1])
        assert after["head"] == pytest.approx(head)  # kept
        own = 0.01 * 0.5 ** (phase)  # the profile's LR for the new group: train.lr with lr_decay
        assert after[new] == pytest.approx(min(f.suggestion if f.found else own, above))
        assert f.current_lr == pytest.approx(head * 0.5**phase)  # the sweep read the new group's LR (lr_decay's)
    applied = [e.detail for e in of_type(events, CommandApplied) if e.command == "ApplyLR"]
    assert applied[1].startswith("phase 2: layer4 LR") and "the groups already training keep their LRs" in applied[1]


def test_a_sweep_of_the_new_groups_moves_them_alone(tmp_path) -> None:
    """The groups already training hold LR 0 through the sweep, so its curve answers for the new ones."""
    trainer = Trainer(_rule_profile(), tmp_path, lambda e: None, Control())
    trainer.controller.next_phase("manual")
    ratios = _group_ratios(trainer.st.optimizer, lambda g: g["layer_group"] == "layer4")
    assert [r for g, r in zip(trainer.st.optimizer.param_groups, ratios) if g["layer_group"] == "head"] == [0, 0]
    assert [r for g, r in zip(trainer.st.optimizer.param_groups, ratios) if g["layer_group"] == "layer4"] == [1, 1]


def test_with_the_default_budget_a_short_phase_is_not_swept(tmp_path) -> None:
    """5 steps an epoch: a tenth of a phase is no sweep. The first phase's head still sweeps on its cached features
    (almost free); the later one takes the rule's fallback, said in the log."""
    events: list = []
    Trainer(_rule_profile(epochs=2), tmp_path, events.append, Control()).run()
    assert [f.phase for f in of_type(events, LRFound)] == [0]
    applied = [e for e in of_type(events, CommandApplied) if e.command == "ApplyLR"]
    assert len(applied) == 2 and "no sweep: 0.1 of the phase's 5 steps is under 10" in applied[1].detail
    head = applied[0].value  # the finder's, for the head on cached features; layer4 gets the profile's 0.01 * 0.5
    assert applied[1].value == pytest.approx(min(0.005, head)) and "the profile's LR for them" in applied[1].detail


def test_a_sweep_on_the_feature_cache_reads_the_curve_a_sweep_on_the_images_does(tmp_path) -> None:
    profile = tiny_profile(strategy={"kind": "head_only"}, train={"epochs": 1})
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    trainer.cache_keeper.refresh()
    assert trainer.cache.active
    stem_calls: list = []
    hook = trainer.parts.model.conv1.register_forward_hook(lambda *a: stem_calls.append(1))
    cached = sweep_run(profile, trainer.parts, trainer.st, trainer.obj, trainer.cache, steps=12)
    assert stem_calls == []  # only the head ran
    plain = sweep_run(profile, trainer.parts, trainer.st, trainer.obj, None, steps=12)
    hook.remove()
    assert len(stem_calls) == 12
    assert cached.lrs == plain.lrs and cached.losses == pytest.approx(plain.losses, abs=1e-5)


def test_a_cosine_cycle_per_phase() -> None:
    cfg = TrainConfig(epochs=4, schedule="cosine", restart="phase")
    schedule = LRSchedule(cfg, steps_per_epoch=10)
    schedule.restart(0, 10)
    assert [round(schedule.factor(s), 4) for s in (0, 5, 9)] == [1.0, 0.5, 0.0245]
    schedule.restart(10, 20)  # the next phase: the shape starts again
    assert [round(schedule.factor(s), 4) for s in (10, 20, 29)] == [1.0, 0.5, 0.0062]
    again = LRSchedule(cfg, steps_per_epoch=10)
    again.load_state_dict(schedule.state_dict())  # a resume comes back into the same cycle
    assert again.factor(25) == pytest.approx(schedule.factor(25))


@pytest.mark.parametrize("restart", ["phase", "run"])
def test_a_run_restarts_its_cosine_at_each_unfreeze_only_when_asked(tmp_path, restart: str) -> None:
    events: list = []
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1},
        train={"epochs": 2, "lr": 0.01, "schedule": "cosine", "restart": restart, "log_every": 1},
    )
    Trainer(profile, tmp_path, events.append, Control()).run()
    head = {m.global_step: m.lrs[-1] for m in of_type(events, MetricsUpdated)}
    assert [c.global_step for c in of_type(events, PhaseChanged)] == [5]
    if restart == "phase":  # a phase's first step has the full LR, which falls within the phase
        assert head[1] == head[6] == pytest.approx(0.01) and head[5] < 0.002 and head[10] < 0.002
    else:  # one shape over the run: falling all the way
        steps = sorted(head)
        assert [head[s] for s in steps] == sorted(head.values(), reverse=True) and head[6] < head[5]
    with pytest.raises(ProfileError, match="train.restart: 'phase' restarts a cosine or onecycle shape"):
        tiny_profile(train={"schedule": "constant", "restart": "phase"})
