"""Resume equality for what carries memory across epochs besides the weights and the optimizer: the
reduce-on-plateau schedule, the EMA of the weights, and the watches behind early stopping and the best checkpoint.

(Cosine + AdamW + dropout + an unfreeze: tests/engine/test_hardening.py. A new group's warm-up across a resume:
tests/engine/test_triggers.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, MetricsUpdated, PhaseChanged, RunFinished
from tuitune.engine.record import checkpoint
from tuitune.engine.session import run_training

STEPS = 5  # tiny_profile: 72 training examples / batch 16
STOP_EPOCH = 4

# Seeded: val loss improves up to epoch 3, then stalls (label smoothing keeps it off zero), so the plateau schedule
# halves the LR after epochs 4 and 5; val acc reaches 1.0 at epoch 3, so early stopping (patience 3) ends the run
# after epoch 6; the best checkpoint (val loss) moves at epochs 1-3 and 6. A resume at epoch 4 sits in the middle.
PROFILE = dict(
    train={
        "epochs": 8,
        "lr": 0.02,
        "schedule": "plateau",
        "lr_patience": 0,
        "decay_rate": 0.5,
        "ema_decay": 0.9,
        "checkpoint_metric": "val_loss",
        "log_every": 1,
    },
    loss={"label_smoothing": 0.3},
    early_stopping={"enabled": True, "metric": "val_score", "patience": 3, "min_delta": 0.0},
)


def _epochs(events: list) -> list[tuple]:
    return [
        (e.epoch, e.val_loss, e.val_score, e.train_loss, e.is_best, e.extra["ema_val_loss"], e.extra["ema_val_score"])
        for e in of_type(events, EpochEnded)
    ]


def _lrs(events: list) -> dict[int, tuple[float, ...]]:
    return {m.global_step: m.lrs for m in of_type(events, MetricsUpdated)}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The unbroken run, shared by both stop points."""
    run_dir, events = tmp_path_factory.mktemp("straight") / "a", []
    run_training(tiny_profile(**PROFILE), run_dir, events.append, Control(), interactive=False)
    return run_dir, events


@pytest.mark.parametrize("stop_at", ["epoch_end", "mid_epoch"])
def test_resume_keeps_the_plateau_schedule_the_ema_and_the_watches(
    tmp_path: Path, stop_at: str, straight_run: tuple[Path, list]
) -> None:
    profile = tiny_profile(**PROFILE)
    run_a, straight = straight_run
    end = of_type(straight, RunFinished)[0]
    lrs_a = _lrs(straight)
    # the run exercises what this test is about, on both sides of the resume
    assert end.status == "stopped_early" and end.epochs > STOP_EPOCH
    first_after = STOP_EPOCH * STEPS + 1
    assert lrs_a[first_after][0] < lrs_a[1][0]  # a decay at (or before) the stop point's epoch end ...
    assert lrs_a[end.global_step][0] < lrs_a[first_after][0]  # ... and one after it
    assert any(e.is_best for e in of_type(straight, EpochEnded) if e.epoch > STOP_EPOCH)

    control, first = Control(), []
    stop_step = STOP_EPOCH * STEPS + (0 if stop_at == "epoch_end" else 2)

    def interrupt(event) -> None:  # what Ctrl+C does: a stop request, taken at the next step boundary
        first.append(event)
        if stop_at == "epoch_end" and isinstance(event, EpochEnded) and event.epoch == STOP_EPOCH:
            control.request_stop()
        if stop_at == "mid_epoch" and isinstance(event, MetricsUpdated) and event.global_step == stop_step:
            control.request_stop()

    run_training(profile, tmp_path / "b", interrupt, control, interactive=False)
    saved = checkpoint.open_checkpoint(tmp_path / "b" / "checkpoints", "last")[1]
    assert saved["global_step"] == stop_step
    resumed: list = []
    run_training(profile, tmp_path / "b", resumed.append, Control(), interactive=False, resume=tmp_path / "b")

    halves = [*of_type(first, EpochEnded), *of_type(resumed, EpochEnded)]
    assert [e[0] for e in _epochs(halves)] == [e[0] for e in _epochs(straight)]
    for a, b in zip(_epochs(straight), _epochs(halves)):
        assert a[0] == b[0] and a[4] == b[4], (a, b)  # same epoch, same best-checkpoint decision
        assert a[1:4] == pytest.approx(b[1:4], abs=1e-6) and a[5:] == pytest.approx(b[5:], abs=1e-6), (a, b)
    lrs_b = _lrs(resumed)
    assert sorted(lrs_b) == [g for g in sorted(lrs_a) if g > stop_step]
    assert all(lrs_b[g] == pytest.approx(lrs_a[g], rel=1e-9) for g in lrs_b)
    again = of_type(resumed, RunFinished)[0]
    assert (again.status, again.reason, again.epochs, again.best) == (end.status, end.reason, end.epochs, end.best)
    for tag in ("best", "last"):
        wa = load_file(str(run_a / "checkpoints" / f"{tag}.safetensors"))
        wb = load_file(str(tmp_path / "b" / "checkpoints" / f"{tag}.safetensors"))
        assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa), tag
    ema_a = checkpoint.open_checkpoint(run_a / "checkpoints", "last")[1]["ema"]
    ema_b = checkpoint.open_checkpoint(tmp_path / "b" / "checkpoints", "last")[1]["ema"]
    assert all(torch.allclose(ema_a[k].float(), ema_b[k].float(), atol=1e-6) for k in ema_a)


def test_a_phase_due_at_the_last_epoch_is_made_on_resume_as_the_unbroken_run_made_it(tmp_path: Path) -> None:
    """Progressive, a phase every 2 epochs: a 2-epoch run skips the change due at its end (no epoch left to train
    it); resumed to 3 epochs it unfreezes at the resume's start, where an unbroken 3-epoch run does: after epoch 2,
    at step 2 x STEPS (not a whole epoch later, as before)."""
    sections = {"strategy": {"kind": "progressive", "every_epochs": 2}, "train": {"epochs": 2}}
    run_training(tiny_profile(**sections), tmp_path, lambda e: None, Control(), interactive=False)
    resumed: list = []
    profile = tiny_profile(**{**sections, "train": {"epochs": 3}})
    run_training(profile, tmp_path, resumed.append, Control(), interactive=False, resume=tmp_path)
    changes = [(e.phase, e.epoch, e.global_step, e.reason) for e in of_type(resumed, PhaseChanged)]
    assert changes == [(1, 2, 2 * STEPS, "epochs")]
