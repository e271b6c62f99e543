"""Gradient accumulation, the EMA weights as the `best` checkpoint, and the BatchNorm mode of each layer group."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import of_type, tiny_profile
from tuitune.cli import main
from tuitune.config import ProfileError, profile_from_dict, profile_to_dict
from tuitune.engine.commands import Control, SetGroupTrainable
from tuitune.engine.events import EpochEnded, LayersChanged, MetricsUpdated, RunFinished, RunStarted
from tuitune.engine.record import checkpoint
from tuitune.engine.record.runlog import read_events
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer

# A ViT (LayerNorm only, no dropout): its gradient over 32 examples is the mean of four 8-example gradients.
VIT = {"source": "timm", "name": "test_vit", "pretrained": False, "img_size": 32, "kwargs": {}}


def _run(tmp_path, batch: int, accumulate: int) -> tuple[list, dict[str, torch.Tensor]]:
    profile = tiny_profile(
        model=VIT,
        data={"batch_size": batch},
        train={
            "epochs": 2,
            "optimizer": "sgd",
            "momentum": 0.9,
            "lr": 0.05,
            "log_every": 1,
            "schedule": "cosine",
            "warmup_steps": 2,
            "accumulate_steps": accumulate,
        },
    )
    events: list = []
    Trainer(profile, tmp_path, events.append, Control()).run()
    return events, load_file(str(tmp_path / "checkpoints" / "last.safetensors"))


def test_batch_8_accumulating_4_equals_batch_32(tmp_path) -> None:
    big, w_big = _run(tmp_path / "big", 32, 1)
    acc, w_acc = _run(tmp_path / "acc", 8, 4)
    # 72 training examples: 3 optimizer steps an epoch either way (32+32+8, or 4+4+1 batches of 8)
    assert big[0].steps_per_epoch == acc[0].steps_per_epoch == 3
    m_big, m_acc = of_type(big, MetricsUpdated), of_type(acc, MetricsUpdated)
    assert [m.global_step for m in m_big] == [m.global_step for m in m_acc] == [1, 2, 3, 4, 5, 6]
    assert [m.lrs for m in m_big] == [m.lrs for m in m_acc]  # the schedule counts optimizer steps
    for a, b in zip(m_big, m_acc):
        assert abs(a.train_loss - b.train_loss) < 1e-5
    for a, b in zip(of_type(big, EpochEnded), of_type(acc, EpochEnded)):
        assert abs(a.train_loss - b.train_loss) < 1e-5 and abs(a.val_loss - b.val_loss) < 1e-5
    diff = max((w_big[k] - w_acc[k]).abs().max().item() for k in w_big)
    assert diff < 1e-5, diff
    # without accumulation, batches of 8 make 9 steps an epoch and other weights: the test can tell them apart
    small, w_small = _run(tmp_path / "small", 8, 1)
    assert of_type(small, RunFinished)[0].global_step == 18 and of_type(acc, RunFinished)[0].global_step == 6
    assert max((w_big[k] - w_small[k]).abs().max().item() for k in w_big) > 100 * max(diff, 1e-7)


def test_ema_weights_as_the_best_checkpoint(tmp_path) -> None:
    profile = tiny_profile(train={"epochs": 3, "ema_decay": 0.9, "ema_for_best": True})
    events: list = []
    run_training(profile, tmp_path, events.append, Control(), interactive=False)
    final = of_type(events, RunFinished)[0]
    assert final.best["metric"] == "ema_val_score"
    ends = of_type(events, EpochEnded)
    best = max(ends, key=lambda e: (e.extra["ema_val_score"], -e.epoch))
    assert final.best["epoch"] == best.epoch and final.best["value"] == best.extra["ema_val_score"]
    weights, state = checkpoint.open_checkpoint(tmp_path / "checkpoints", "best")
    saved = load_file(str(weights))
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)  # the EMA weights, not the model's
    last = load_file(str(tmp_path / "checkpoints" / "last.safetensors"))
    assert any(not torch.equal(saved[k], last[k]) for k in saved if saved[k].is_floating_point())
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert all(torch.equal(exported[k], saved[k]) for k in exported if k in saved)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"ema_for_best": True}, "p.toml: train.ema_for_best: needs an EMA of the weights"),
        (
            {"ema_for_best": True, "ema_decay": 0.9, "checkpoint_metric": "train_loss"},
            "p.toml: train.ema_for_best: the EMA model is scored on the val set",
        ),
        ({"accumulate_steps": 0}, "p.toml: train.accumulate_steps"),
    ],
)
def test_bad_accumulation_and_ema_keys_are_one_line(train, message) -> None:
    table = profile_to_dict(tiny_profile())
    table["train"].update(train)
    with pytest.raises(ProfileError) as err:
        profile_from_dict(table, file="p.toml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bn_mode_per_group_follows_the_trainable_set(tmp_path) -> None:
    control, events = Control(), []

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            control.put(SetGroupTrainable("layer1", True))

    profile = tiny_profile(strategy={"kind": "progressive", "trigger": "manual"}, train={"epochs": 1})
    Trainer(profile, tmp_path, emit, control, interactive=True).run()
    start = {r.name: r.bn for r in of_type(events, RunStarted)[0].layers}
    assert start == {
        "stem": "eval",
        "layer1": "eval",
        "layer2": "eval",
        "layer3": "eval",
        "layer4": "eval",
        "head": None,
    }
    after = {r.name: r.bn for r in of_type(events, LayersChanged)[-1].layers}
    assert after["layer1"] == "train" and after["layer2"] == "eval" and after["head"] is None


def test_accumulating_run_resumed_mid_epoch_equals_an_unbroken_one(tmp_path) -> None:
    """Positions are optimizer steps: 5 batches an epoch, 2 per step -> 3 steps; interrupted after step 2 of
    epoch 2 and resumed, the run replays the epoch's first 4 batches and ends as the unbroken one."""
    profile = tiny_profile(train={"epochs": 3, "accumulate_steps": 2, "schedule": "cosine", "warmup_steps": 2})
    straight: list = []
    run_training(profile, tmp_path / "a", straight.append, Control(), interactive=False)
    control, first = Control(), []

    def interrupt(event) -> None:
        first.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 5:
            control.request_stop()

    run_training(profile, tmp_path / "b", interrupt, control, interactive=False)
    saved = checkpoint.load_state(tmp_path / "b" / "checkpoints" / "last.state.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 5)
    assert main(["train", "--resume", str(tmp_path / "b"), "--headless"]) == 0
    a = [(e.epoch, e.train_loss, e.val_loss) for e in straight if isinstance(e, EpochEnded)]
    b = [(e.epoch, e.train_loss, e.val_loss) for e in read_events(tmp_path / "b") if isinstance(e, EpochEnded)]
    assert [x[0] for x in b] == [1, 2, 3] and of_type(straight, RunStarted)[0].steps_per_epoch == 3
    assert all(abs(x[1] - y[1]) < 1e-6 and abs(x[2] - y[2]) < 1e-6 for x, y in zip(a, b))
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
