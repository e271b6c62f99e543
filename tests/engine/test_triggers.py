"""What moves a run to its next phase, in real (tiny) runs: the plateau trigger (headless it unfreezes, in the
dashboard it asks once per phase), the headless fallback of a manual trigger, and a new group's own LR warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import CommandApplied, MetricsUpdated, PhaseChanged, UnfreezeSuggested
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer

STEPS = 5  # tiny_profile: 72 training examples / batch 16

# min_delta larger than any change: the first epoch of a phase sets the watch's best, every later one is stale
PLATEAU = {
    "kind": "progressive",
    "groups_per_phase": 1,
    "trigger": "plateau",
    "plateau_metric": "val_loss",
    "plateau_patience": 1,
    "plateau_min_delta": 10.0,
}


def _run(
    tmp_path: Path, *, interactive: bool, emit=None, control: Control | None = None, epochs: int = 5, **strategy
) -> list:
    events: list = []

    def sink(event) -> None:
        events.append(event)
        if emit is not None:
            emit(event)

    profile = tiny_profile(strategy=strategy, train={"epochs": epochs})
    Trainer(profile, tmp_path, sink, control or Control(), interactive=interactive).run()
    return events


def test_plateau_trigger_headless_unfreezes_after_patience(tmp_path: Path) -> None:
    events = _run(tmp_path, interactive=False, **PLATEAU)
    changes = [(c.phase, c.epoch, c.reason, c.unfrozen) for c in of_type(events, PhaseChanged)]
    # epoch 1 sets the best, epoch 2 is stale -> phase 2; the watch restarts with the phase: epoch 4 -> phase 3
    assert changes == [(1, 2, "plateau", ("layer4",)), (2, 4, "plateau", ("layer3",))]
    assert not of_type(events, UnfreezeSuggested)


def test_plateau_trigger_in_the_dashboard_asks_once_per_phase_and_waits(tmp_path: Path) -> None:
    events = _run(tmp_path, interactive=True, **PLATEAU)
    assert not of_type(events, PhaseChanged)  # the person decides
    asked = [(s.epoch, s.epochs, s.metric, s.next_groups) for s in of_type(events, UnfreezeSuggested)]
    assert asked == [(2, 1, "val_loss", ("layer4",))]  # still stale at epochs 3-5, asked once


def test_plateau_suggestion_answered_with_unfreeze(tmp_path: Path) -> None:
    control = Control()

    def answer(event) -> None:  # what `y` on the dashboard's question does
        if isinstance(event, UnfreezeSuggested) and event.epoch == 2:
            control.put(UnfreezeNext())

    events = _run(tmp_path, interactive=True, emit=answer, control=control, **PLATEAU)
    change = of_type(events, PhaseChanged)[0]
    assert (change.phase, change.reason, change.global_step) == (1, "manual", 2 * STEPS + 1)
    assert [c.command for c in of_type(events, CommandApplied)] == ["UnfreezeNext"]
    # the new phase is watched afresh: epoch 3 sets its best, epoch 4 is stale -> asked again, for layer3
    assert [(s.epoch, s.next_groups) for s in of_type(events, UnfreezeSuggested)] == [
        (2, ("layer4",)),
        (4, ("layer3",)),
    ]


@pytest.mark.parametrize(
    "fallback, expected",
    [
        ("epochs", [(1, 1, "epochs"), (2, 2, "epochs")]),
        ("plateau", [(1, 2, "plateau")]),
        ("none", []),
    ],
)
def test_manual_trigger_falls_back_when_headless(tmp_path: Path, fallback: str, expected: list) -> None:
    strategy = {**PLATEAU, "trigger": "manual", "fallback": fallback, "every_epochs": 1}
    headless = _run(tmp_path, interactive=False, epochs=3, **strategy)
    assert [(c.phase, c.epoch, c.reason) for c in of_type(headless, PhaseChanged)] == expected


def test_manual_trigger_in_the_dashboard_waits_for_the_key(tmp_path: Path) -> None:
    strategy = {**PLATEAU, "trigger": "manual", "fallback": "epochs", "every_epochs": 1}
    dashboard = _run(tmp_path, interactive=True, epochs=3, **strategy)
    assert not of_type(dashboard, PhaseChanged) and not of_type(dashboard, UnfreezeSuggested)  # waits for `u`


WARMUP = dict(
    strategy={"kind": "progressive", "groups_per_phase": 1, "trigger": "epochs", "every_epochs": 1, "lr_decay": 0.5},
    train={"epochs": 2, "lr": 0.01, "schedule": "constant", "unfreeze_warmup_steps": 4, "log_every": 1},
)


def _group_lrs(events: list) -> dict[int, tuple[float, ...]]:
    """The (layer4, head) LRs each step trained with, by global step, after the unfreeze."""
    return {m.global_step: m.lrs for m in of_type(events, MetricsUpdated) if len(m.lrs) == 2}


def test_a_newly_unfrozen_group_warms_up_on_its_own_in_a_run(tmp_path: Path) -> None:
    events: list = []
    Trainer(tiny_profile(**WARMUP), tmp_path, events.append, Control()).run()
    assert of_type(events, PhaseChanged)[0].global_step == STEPS
    lrs = _group_lrs(events)
    assert sorted(lrs) == list(range(STEPS + 1, 2 * STEPS + 1))
    assert [lrs[g][0] for g in sorted(lrs)] == pytest.approx([0.005 * k / 4 for k in (1, 2, 3, 4, 4)])
    assert all(lrs[g][1] == pytest.approx(0.01) for g in lrs)  # the head keeps its LR
    assert all(m.lrs == pytest.approx((0.01,)) for m in of_type(events, MetricsUpdated) if m.global_step <= STEPS)


def test_the_warm_up_goes_on_across_a_resume(tmp_path: Path) -> None:
    profile = tiny_profile(**WARMUP)
    control, first = Control(), []

    def stop(event) -> None:
        first.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == STEPS + 2:  # halfway through the warm-up
            control.request_stop()

    run_training(profile, tmp_path, stop, control, interactive=False)
    resumed: list = []
    run_training(profile, tmp_path, resumed.append, Control(), interactive=False, resume=tmp_path)
    lrs = _group_lrs(resumed)
    assert sorted(lrs) == list(range(STEPS + 3, 2 * STEPS + 1))
    assert [lrs[g][0] for g in sorted(lrs)] == pytest.approx([0.005 * k / 4 for k in (3, 4, 4)])
