"""Phases that keep their best: `strategy.restore_best_phase` hands on the ending phase's best weights, and the
`RollBackPhase` command (the dashboard's `r`, `tuitune ctl RUN rollback`) undoes a phase; both exactly across
`--resume`."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import BadCommand, Control, RollBackPhase, command_from_json
from tuitune.engine.events import CommandApplied, EpochEnded, PhaseChanged, RunFinished
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer
from tuitune.fmt import phase_change_text


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.parts.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_phase_hands_on_the_phases_best_epoch(tmp_path, restore: bool) -> None:
    """LR 1e-9: the head moves a little and the val accuracy stays, so the phase's first epoch stays its best and
    its second epoch's weights (slightly moved) are not it. With restore_best_phase the next phase starts from the
    first's; without, from the second's."""
    seen: dict = {}
    trainer: Trainer | None = None

    def emit(event) -> None:
        if isinstance(event, EpochEnded) and event.phase == 0:
            seen[event.epoch] = _weights(trainer)  # type: ignore[arg-type]
        if isinstance(event, PhaseChanged):
            seen["change"] = (event, _weights(trainer))  # type: ignore[arg-type]

    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 2, "restore_best_phase": restore},
        train={"epochs": 3, "lr": 1e-9},
    )
    trainer = Trainer(profile, tmp_path, emit, Control())
    trainer.run()
    change, at_change = seen["change"]
    assert not _same(seen[1], seen[2])
    if restore:
        assert change.restored_epoch == 1 and _same(at_change, seen[1])
        assert "weights of epoch 1 restored" in phase_change_text(change)
    else:
        assert change.restored_epoch is None and _same(at_change, seen[2])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("phase-*")) == [
        "phase-1.safetensors",
        "phase-2.safetensors",
    ]


def _rollback_profile(epochs: int = 3):
    return tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1},
        train={"epochs": epochs, "lr": 0.01, "log_every": 1},
    )


def test_rollback_restores_the_phase_befores_best_and_freezes_what_this_phase_unfroze(tmp_path) -> None:
    seen: dict = {}
    control = Control()
    trainer: Trainer | None = None

    def emit(event) -> None:
        if isinstance(event, EpochEnded):
            seen[event.epoch] = _weights(trainer)  # type: ignore[arg-type]
        if isinstance(event, PhaseChanged) and event.reason == "epochs" and event.phase == 2 and event.epoch == 2:
            control.put(RollBackPhase())  # in epoch 3: phase 3 (layer3, layer4, head) made things worse
        if isinstance(event, CommandApplied) and event.command == "RollBackPhase":
            seen["rolled"] = (event, _weights(trainer))  # type: ignore[arg-type]
            params = dict(trainer.parts.model.named_parameters())  # type: ignore[union-attr]
            layer3 = [p for n, p in params.items() if n.startswith("layer3.")]
            seen["layer3"] = [(p.requires_grad, p in trainer.st.optimizer.state) for p in layer3]  # type: ignore[union-attr]
        seen.setdefault("events", []).append(event)

    trainer = Trainer(_rollback_profile(4), tmp_path, emit, control)
    final = trainer.run()
    applied, weights = seen["rolled"]
    back = next(e for e in of_type(seen["events"], PhaseChanged) if e.reason == "rollback")
    assert (back.phase, back.refrozen, back.restored_epoch) == (1, ("layer3",), 2)  # phase 2 was epoch 2 alone
    assert _same(weights, seen[2]) and not _same(weights, seen[1])
    assert seen["layer3"] and set(seen["layer3"]) == {(False, False)}  # frozen, its optimizer state dropped
    assert applied.detail == "phase 3 rolled back: the weights of epoch 2 (phase 2's best); froze layer3"
    # the run went on in phase 2, and the epochs trigger unfroze layer3 again one epoch after the rollback
    changes = [(e.phase, e.reason, e.epoch) for e in of_type(seen["events"], PhaseChanged)]
    assert changes == [(1, "epochs", 1), (2, "epochs", 2), (1, "rollback", 2), (2, "epochs", 3)]
    assert [p.get("rolled_back", False) for p in final.phases][:3] == [False, False, True]


def test_a_rollback_in_the_first_phase_changes_nothing_and_its_json_has_no_keys(tmp_path) -> None:
    control = Control()
    trainer = Trainer(_rollback_profile(), tmp_path, lambda e: None, control)
    trainer.st.epoch = 0
    events: list = []
    trainer.emit = trainer.controller.emit = events.append  # type: ignore[method-assign]
    control.put(RollBackPhase())
    trainer.controller.between_steps()
    assert of_type(events, CommandApplied)[0].detail == "already in the first phase: nothing to roll back"
    assert command_from_json('{"type":"RollBackPhase"}') == RollBackPhase()
    with pytest.raises(BadCommand, match="RollBackPhase: unknown key 'phase'"):
        command_from_json('{"type":"RollBackPhase","phase":1}')


def _run(folder, stop_at: int | None, resume: bool = False) -> list:
    """3 epochs, a rollback at step 2 of epoch 2 (global step 7: back to the head alone); interrupted after epoch
    `stop_at`."""
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if getattr(event, "global_step", None) == 7 and type(event).__name__ == "MetricsUpdated":
            control.put(RollBackPhase())
        if stop_at is not None and isinstance(event, EpochEnded) and event.epoch == stop_at:
            control.request_stop()

    run_training(_rollback_profile(), folder, emit, control, interactive=False, resume=folder if resume else None)
    return events


@pytest.fixture
def unbroken(tmp_path) -> list:
    return _run(tmp_path / "unbroken", None)


def test_rollback_is_exact_across_resume(tmp_path, unbroken: list) -> None:
    """The unbroken run against the same interrupted after epoch 1 and resumed: the rollback then reads the phase
    file and the watches the first half left."""
    first = _run(tmp_path / "b", 1)
    assert of_type(first, RunFinished)[0].status == "interrupted"
    resumed = _run(tmp_path / "b", None, resume=True)
    assert [c.reason for c in of_type(unbroken, PhaseChanged)].count("rollback") == 1
    assert [c.reason for c in of_type(first + resumed, PhaseChanged)].count("rollback") == 1
    a = [(e.epoch, e.phase, e.val_loss) for e in of_type(unbroken, EpochEnded)]
    b = [(e.epoch, e.phase, e.val_loss) for e in of_type(first + resumed, EpochEnded)]
    assert [x[:2] for x in a] == [x[:2] for x in b] == [(1, 0), (2, 0), (3, 1)]
    assert all(abs(x[2] - y[2]) <= 1e-6 for x, y in zip(a, b))
