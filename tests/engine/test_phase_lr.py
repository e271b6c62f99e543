"""strategy.phase_lr = "find" with `phase_lr_rule = "head"` (each phase's answer becomes the head's LR) and no
`phase_lr_budget` limit: an LR-finder sweep at the start of every phase, from a snapshot restored after, its answer
applied with the discriminative ratios kept; a person may answer in a live run, never forever. The default rule
(`new_groups`) and the sweeps' budget: tests/engine/test_phase_lr_rule.py."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import TINY_MODEL, of_type, tiny_profile
from tuitune.engine.commands import ApplyLR, Control, SaveCheckpoint, UnfreezeNext
from tuitune.engine.events import CommandApplied, EpochEnded, LayersChanged, LRFound, PhaseChanged, RunStarted
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer

DECAY = 0.5


def phase_lr_profile(model: dict | None = None, **train):
    return tiny_profile(
        model=model or {},
        strategy={
            "kind": "progressive",
            "trigger": "epochs",
            "every_epochs": 1,
            "lr_decay": DECAY,
            "phase_lr": "find",
            "phase_lr_steps": 20,
            "phase_lr_rule": "head",
            "phase_lr_budget": 0.0,
        },
        train={"epochs": 3, **train},
    )


def _state(trainer: Trainer) -> dict:
    return {
        "model": {k: v.clone() for k, v in trainer.parts.model.state_dict().items()},
        "rng": torch.get_rng_state(),
        "gen": trainer.parts.train_loader.generator.get_state(),
        "optimizer": {
            id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
            for p, s in trainer.st.optimizer.state.items()
        },
    }


def _expected_lrs(trainer: Trainer, head_lr: float) -> dict[str, float]:
    names = [g.name for g in trainer.parts.groups]
    return {
        g["layer_group"]: head_lr * DECAY ** (len(names) - 1 - names.index(g["layer_group"]))
        for g in trainer.st.optimizer.param_groups
    }


def test_a_sweep_at_every_phase_from_a_restored_snapshot_and_its_suggestion_applied(tmp_path) -> None:
    events: list = []
    before: dict = {}
    checks: list = []
    rngs: list = []  # the global RNG at each sweep's start: training moved it in between (dropout draws from it)
    trainer: Trainer

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, (RunStarted, PhaseChanged)):  # the sweep starts right after these
            before.update(_state(trainer))
            rngs.append(before["rng"])
        elif isinstance(event, LRFound):  # the sweep ended: everything as it was
            after = _state(trainer)
            checks.append(
                all(torch.equal(before["model"][k], v) for k, v in after["model"].items())
                and torch.equal(before["rng"], after["rng"])
                and torch.equal(before["gen"], after["gen"])
                and before["optimizer"].keys() == after["optimizer"].keys()
                and all(
                    torch.equal(before["optimizer"][p][k], v)
                    for p, s in after["optimizer"].items()
                    for k, v in s.items()
                )
            )
        elif isinstance(event, CommandApplied) and event.command == "ApplyLR":
            lrs = {g["layer_group"]: g["lr"] for g in trainer.st.optimizer.param_groups}
            checks.append(lrs == pytest.approx(_expected_lrs(trainer, event.value)))

    dropout = {"kwargs": {**TINY_MODEL["kwargs"], "drop_rate": 0.5}}  # so the sweep's steps draw from the RNG
    trainer = Trainer(phase_lr_profile(dropout), tmp_path, emit, Control())
    final = trainer.run()
    assert len(rngs) == 3 and not torch.equal(rngs[0], rngs[1])
    found, applied = of_type(events, LRFound), [e for e in of_type(events, CommandApplied) if e.command == "ApplyLR"]
    assert final.status == "finished" and [e.phase for e in of_type(events, PhaseChanged)] == [1, 2]
    assert [f.phase for f in found] == [0, 1, 2] and all(f.wait_s == 0 and len(f.lrs) > 3 for f in found)
    assert [a.value for a in applied] == [f.suggestion for f in found]
    assert all(f.suggestion != pytest.approx(1e-2) for f in found)  # the finder's, not the profile's LR
    assert checks == [True] * 6  # 3 sweeps restored everything; 3 times every group's LR = suggestion x ratio
    assert [(tmp_path / f"lr_find_phase{i}.csv").exists() for i in (1, 2, 3)] == [True] * 3
    # the order a person reads: phase change, the sweep's curve, the LR chosen, then training goes on
    kinds = [type(e).__name__ for e in events if isinstance(e, (PhaseChanged, LRFound, CommandApplied, EpochEnded))]
    assert kinds[:6] == ["LRFound", "CommandApplied", "EpochEnded", "PhaseChanged", "LRFound", "CommandApplied"]


def test_a_person_answers_and_other_commands_wait_their_turn(tmp_path) -> None:
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, LRFound) and event.phase == 0:
            assert event.wait_s == 5.0
            control.put(UnfreezeNext())  # pressed while the curve was on screen: applied after the answer
            control.put(ApplyLR(lr=0.002))
        elif isinstance(event, LRFound) and event.phase == 1:
            control.put(SaveCheckpoint())
            control.put(ApplyLR(lr=0.0042))

    profile = tiny_profile(
        strategy={
            "kind": "progressive",
            "trigger": "manual",
            "phase_lr": "find",
            "phase_lr_steps": 20,
            "phase_lr_wait_s": 5.0,
            "lr_decay": DECAY,
            "phase_lr_rule": "head",
            "phase_lr_budget": 0.0,
        },
        train={"epochs": 1, "log_every": 1},
    )
    trainer = Trainer(profile, tmp_path, emit, control, interactive=True)
    trainer.controller.phase_lr.answer_grace_s = 0.0
    trainer.run()
    applied = [(e.command, e.global_step, e.value) for e in of_type(events, CommandApplied)]
    # the unfreeze is confirmed once its phase's LR is set; the save pressed meanwhile comes after
    assert applied == [
        ("ApplyLR", 0, 0.002),
        ("ApplyLR", 1, 0.0042),
        ("UnfreezeNext", 1, None),
        ("SaveCheckpoint", 1, None),
    ]
    assert all("chosen in the dashboard" in e.detail for e in of_type(events, CommandApplied)[:2])
    assert trainer.st.head_base_lr() == pytest.approx(0.0042)


def test_no_answer_applies_the_suggestion_after_the_timeout(tmp_path) -> None:
    events: list = []
    profile = tiny_profile(
        strategy={"kind": "head_only", "phase_lr": "find", "phase_lr_steps": 20, "phase_lr_wait_s": 0.05},
        train={"epochs": 1},
    )
    trainer = Trainer(profile, tmp_path, events.append, Control(), interactive=True)
    trainer.controller.phase_lr.answer_grace_s = 0.0
    trainer.run()
    (found,), (applied,) = of_type(events, LRFound), of_type(events, CommandApplied)
    assert found.wait_s == 0.05 and applied.value == found.suggestion and "no answer came" in applied.detail
    assert trainer.st.head_base_lr() == pytest.approx(found.suggestion)


def test_a_stop_during_the_wait_does_not_hang(tmp_path) -> None:
    control = Control()

    def emit(event) -> None:
        if isinstance(event, LRFound):
            control.request_stop()  # quit while the curve waits for an answer

    profile = tiny_profile(
        strategy={"kind": "head_only", "phase_lr": "find", "phase_lr_steps": 20, "phase_lr_wait_s": 3600.0},
        train={"epochs": 1},
    )
    final = Trainer(profile, tmp_path, emit, control, interactive=True).run()
    assert final.status == "interrupted"


def test_resume_keeps_the_chosen_lrs_and_continues_identically(tmp_path) -> None:
    """3 epochs straight == 2 epochs, interrupt, resume to 3: the LRs found at each phase survive the checkpoint
    (no sweep is redone on resume) and the metrics match."""
    profile = phase_lr_profile()
    straight: list = []
    Trainer(profile, tmp_path / "a", straight.append, Control()).run()

    control, halves = Control(), []

    def stop_after_two(event) -> None:
        halves.append(event)
        if isinstance(event, EpochEnded) and event.epoch == 2:
            control.request_stop()

    run_training(profile, tmp_path / "b", stop_after_two, control, interactive=False)
    resumed: list = []
    run_training(profile, tmp_path / "b", resumed.append, Control(), interactive=False, resume=tmp_path / "b")
    assert len(of_type(halves, LRFound)) == 3 and of_type(resumed, LRFound) == []
    a = [(e.epoch, e.val_loss, e.val_score) for e in of_type(straight, EpochEnded)]
    b = [(e.epoch, e.val_loss, e.val_score) for e in of_type(halves + resumed, EpochEnded)]
    assert [x[0] for x in b] == [1, 2, 3]
    for (ea, la, sa), (eb, lb, sb) in zip(a, b):
        assert ea == eb and la == pytest.approx(lb, abs=1e-6) and sa == pytest.approx(sb, abs=1e-6)
    # the first rows after the resume: every group's LR is the last sweep's answer times its ratio
    rows = of_type(resumed, LayersChanged)[0].layers
    suggestion = of_type(halves, LRFound)[-1].suggestion
    assert suggestion == of_type(straight, LRFound)[-1].suggestion
    assert [r.lr for r in rows if r.trainable] == pytest.approx(
        [suggestion * DECAY ** (len(rows) - 1 - i) for i, r in enumerate(rows) if r.trainable]
    )


def test_a_sweep_with_no_valley_keeps_the_lr_and_asks_nobody(tmp_path, monkeypatch) -> None:
    """At a phase start on a training set the model already fits, the loss (0.001) "diverges" on the first noisy
    batch: the sweep's lowest LR is no answer (applied, it froze a real SMS run at 1e-7). The LR stays, and a live
    dashboard is not asked to accept anything."""
    from tuitune.engine.train import lr_sweep

    lrs = tuple(1e-7 * 1.2**i for i in range(5))
    smoothed = (0.0013, 0.0025, 0.0030, 0.0031, 0.082)
    steep, valley = lr_sweep.suggest(lrs, smoothed)
    short = lr_sweep.LRCurve(lrs, smoothed, smoothed, steep, valley, "valley", True)
    monkeypatch.setattr(lr_sweep, "sweep_run", lambda *a, **k: short)
    events: list = []
    profile = tiny_profile(
        strategy={"kind": "head_only", "phase_lr": "find", "phase_lr_wait_s": 30.0}, train={"epochs": 1}
    )
    trainer = Trainer(profile, tmp_path, events.append, Control(), interactive=True)
    lr = trainer.st.head_base_lr()
    trainer.run()
    (found,), (applied,) = of_type(events, LRFound), of_type(events, CommandApplied)
    assert not found.found and found.wait_s == 0.0 and found.suggestion == lr
    assert applied.value == lr and "kept: the sweep stopped after 5 steps with no valley" in applied.detail
    assert trainer.st.head_base_lr() == pytest.approx(lr)
    assert "no suggestion: the sweep stopped after 5 steps" in found.no_suggestion_text()
