"""Steering one layer group at a time: `SetGroupTrainable` and `ScaleGroupLR` act at the next step boundary, are
confirmed by events, and a resumed run continues with exactly the trainable set and LRs it left."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import of_type, tiny_profile
from tuitune.cli import main
from tuitune.engine.commands import Control, ScaleGroupLR, SetGroupTrainable
from tuitune.engine.events import (
    CommandApplied,
    EpochEnded,
    LayersChanged,
    LayersMeasured,
    MetricsUpdated,
    PhaseChanged,
    RunStarted,
    event_from_dict,
)
from tuitune.engine.record import checkpoint
from tuitune.engine.record.runlog import read_events
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer

STEPS = 5  # tiny_profile: 72 training examples / batch 16


def _params(trainer: Trainer, group: str) -> list[torch.nn.Parameter]:
    named = dict(trainer.parts.model.named_parameters())
    return [named[n] for g in trainer.parts.groups if g.name == group for n in g.param_names]


def test_group_commands_change_requires_grad_and_lrs_at_the_next_step(tmp_path) -> None:
    events: list = []
    control = Control()
    seen: dict[int, dict] = {}
    trainer: Trainer | None = None

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, RunStarted):
            assert trainer is not None
            seen[0] = {"layer2_w": [p.detach().clone() for p in _params(trainer, "layer2")]}
        if isinstance(event, MetricsUpdated):
            assert trainer is not None
            seen[event.global_step] = {
                "layer2_grad": all(p.requires_grad for p in _params(trainer, "layer2")),
                "layer2_w": [p.detach().clone() for p in _params(trainer, "layer2")],
                "lrs": trainer.st.group_lrs(),
            }
            if event.global_step == 1:  # as the UI would, while step 1's metrics are on screen
                control.put(SetGroupTrainable("layer2", True))
                control.put(ScaleGroupLR("head", 1.5))
            if event.global_step == 3:
                control.put(SetGroupTrainable("layer2", False))
                control.put(ScaleGroupLR(None, 1 / 1.5))

    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "manual", "lr_decay": 0.5},
        train={"epochs": 1, "log_every": 1, "lr": 0.01},
    )
    trainer = Trainer(profile, tmp_path, emit, control, interactive=True)
    trainer.run()
    applied = of_type(events, CommandApplied)
    assert [(c.command, c.global_step) for c in applied] == [
        ("SetGroupTrainable", 1),
        ("ScaleGroupLR", 1),
        ("SetGroupTrainable", 3),
        ("ScaleGroupLR", 3),
    ]
    assert "layer2 trainable (new param group)" in applied[0].detail and "frozen" in applied[2].detail
    # step 1 trained the head alone; steps 2 and 3 trained layer2 too, at the head's LR x 0.5^3, the head at x1.5
    assert not seen[1]["layer2_grad"] and seen[2]["layer2_grad"] and seen[3]["layer2_grad"]
    assert not seen[4]["layer2_grad"]
    assert all(torch.equal(a, b) for a, b in zip(seen[0]["layer2_w"], seen[1]["layer2_w"]))  # frozen at step 1
    assert not torch.equal(seen[1]["layer2_w"][0], seen[2]["layer2_w"][0])
    assert all(torch.equal(a, b) for a, b in zip(seen[3]["layer2_w"], seen[5]["layer2_w"]))  # frozen: untouched
    assert seen[1]["lrs"] == {"head": 0.01}
    assert seen[2]["lrs"]["head"] == 0.01 * 1.5 and abs(seen[2]["lrs"]["layer2"] - 0.01 * 0.5**3) < 1e-12
    assert abs(seen[4]["lrs"]["head"] - 0.01) < 1e-12
    # the frozen group keeps its param groups and their AdamW state; it is skipped, not dropped
    opt = trainer.st.optimizer
    kept = [p for g in opt.param_groups if g["layer_group"] == "layer2" for p in g["params"]]
    assert kept and all("exp_avg" in opt.state[p] for p in kept)
    # the table is confirmed by LayersChanged after each command, and the phase index did not move
    rows = [e for e in events if isinstance(e, LayersChanged) and e.global_step == 1][-1].layers
    assert {r.name: r.trainable for r in rows}["layer2"] and not of_type(events, PhaseChanged)
    step2 = next(e for e in events if isinstance(e, MetricsUpdated) and e.global_step == 2)
    assert len(step2.lrs) == 2 and len(of_type(events, MetricsUpdated)[-1].lrs) == 1


def _steer(control: Control, stop_at: int | None):
    """Unfreeze layer2 out of turn and raise its LR, give layer4 and layer3 (still frozen) a factor for when their
    phase comes (layer3's comes after the interrupt), lower all; then (optionally) interrupt at `stop_at`."""

    def emit(event, sink: list) -> None:
        sink.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            control.put(SetGroupTrainable("layer2", True))
            control.put(ScaleGroupLR("layer2", 1.5))
            control.put(ScaleGroupLR("layer4", 1.5))
            control.put(ScaleGroupLR("layer3", 0.25))
        if isinstance(event, MetricsUpdated) and event.global_step == 4:
            control.put(ScaleGroupLR(None, 1 / 1.5))
            control.put(SetGroupTrainable("head", False))
        if stop_at is not None and isinstance(event, MetricsUpdated) and event.global_step == stop_at:
            control.request_stop()

    return emit


def test_resume_reproduces_the_steered_trainable_set_and_lrs(tmp_path) -> None:
    """A steered run interrupted mid-epoch 2 and resumed with `tuitune train --resume` ends with the same weights,
    trainable set and per-group LRs as the same run unbroken; the phase change after epoch 1 adds layer4 with
    the factor it was given while frozen, the one after epoch 2 (after the resume) adds layer3 with the factor it
    was given before the interrupt, and keeps layer2 as steered."""
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1},
        train={"epochs": 3, "schedule": "cosine", "warmup_steps": 2, "unfreeze_warmup_steps": 2, "log_every": 1},
    )
    straight: list = []
    control = Control()
    emit = _steer(control, None)
    run_training(profile, tmp_path / "a", lambda e: emit(e, straight), control, interactive=False)

    control, first = Control(), []
    emit = _steer(control, STEPS + 2)
    run_training(profile, tmp_path / "b", lambda e: emit(e, first), control, interactive=False)
    saved = checkpoint.load_state(tmp_path / "b" / "checkpoints" / "last.state.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["phase"]) == (1, 2, 1)
    assert saved["trainable"] == ["layer2", "layer4"] and saved["phase_groups"] == ["layer4", "head"]
    assert saved["group_scale"] == {"layer2": 1.5, "layer4": 1.5, "layer3": 0.25}
    assert main(["train", "--resume", str(tmp_path / "b"), "--headless"]) == 0
    resumed = read_events(tmp_path / "b")
    start = [e for e in resumed if isinstance(e, RunStarted)][-1]

    def row(r):
        return r.name, r.trainable, r.lr, r.bn

    def rows_left(events):  # the last full rows, with the LRs of the metric reads after them (`LayersMeasured`)
        rows: list = []
        for e in events:
            if isinstance(e, LayersChanged):
                rows = [row(r) for r in e.layers]
            elif isinstance(e, LayersMeasured):
                rows = [(n, t, lr, bn) for (n, t, _, bn), lr in zip(rows, e.lrs)]
        return rows

    assert [row(r) for r in start.layers] == rows_left(first)  # the rows as the run left them
    a_rows = [e for e in straight if isinstance(e, LayersChanged)][-1].layers
    b_rows = [e for e in resumed if isinstance(e, LayersChanged)][-1].layers
    assert [(r.name, r.trainable, r.lr) for r in a_rows] == [(r.name, r.trainable, r.lr) for r in b_rows]
    assert [r.name for r in a_rows if r.trainable] == ["layer2", "layer3", "layer4"]  # head frozen by hand
    lr = {r.name: r.lr for r in b_rows}
    assert lr["layer3"] == pytest.approx(lr["layer4"] * 0.25 / 1.5)  # lr_decay 1: only their own factors differ
    a_val = [(e.epoch, e.val_loss) for e in straight if isinstance(e, EpochEnded)]
    b_val = [(e.epoch, e.val_loss) for e in resumed if isinstance(e, EpochEnded)]
    assert [x[0] for x in b_val] == [1, 2, 3]
    assert all(abs(x[1] - y[1]) <= 1e-6 for x, y in zip(a_val, b_val))
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # the commands are in events.jsonl, so `replay` shows them: applied, then the rows they changed
    lines = [json.loads(x) for x in (tmp_path / "b" / "events.jsonl").read_text().splitlines()]
    assert [x["command"] for x in lines if x["type"] == "CommandApplied"][:6] == [
        "SetGroupTrainable",
        "ScaleGroupLR",
        "ScaleGroupLR",
        "ScaleGroupLR",
        "ScaleGroupLR",
        "SetGroupTrainable",
    ]
    assert event_from_dict(dict(lines[0])).__class__ is RunStarted


def test_a_group_unfrozen_again_by_hand_warms_up_again(tmp_path) -> None:
    """`unfreeze_warmup_steps = 2`: layer2, unfrozen by hand, starts at half its LR; frozen, then unfrozen again
    steps later (its optimizer state kept), it starts its warm-up again instead of jumping to its full LR."""
    control = Control()
    plan = {
        1: SetGroupTrainable("layer2", True),
        3: SetGroupTrainable("layer2", False),
        4: SetGroupTrainable("layer2", True),
    }

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step in plan:
            control.put(plan[event.global_step])

    events: list = []
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "manual", "lr_decay": 0.5},
        train={"epochs": 1, "log_every": 1, "lr": 0.01, "unfreeze_warmup_steps": 2},
    )
    Trainer(profile, tmp_path, emit, control, interactive=True).run()

    full = 0.01 * 0.5**3  # layer2 is three groups below the head
    assert [(c.command, c.global_step) for c in of_type(events, CommandApplied)] == [
        ("SetGroupTrainable", 1),
        ("SetGroupTrainable", 3),
        ("SetGroupTrainable", 4),
    ]
    lrs = {e.global_step: e.lrs for e in of_type(events, MetricsUpdated)}  # the LRs each step trained at
    assert lrs[1] == (0.01,) and lrs[4] == (0.01,)  # the head alone
    assert lrs[2] == pytest.approx((full / 2, 0.01))  # joined after step 1: the first step of its warm-up
    assert lrs[3] == pytest.approx((full, 0.01))
    assert lrs[5] == pytest.approx((full / 2, 0.01))  # joined again after step 4: it warms up again
