"""The loop: events, commands at step boundaries, early stopping, checkpoints, learning, the run directory."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control, Pause, Resume, SaveCheckpoint, StopEarly, UnfreezeNext
from tuitune.engine.events import (
    CheckpointSaved,
    CommandApplied,
    EpochEnded,
    LayersChanged,
    MetricsUpdated,
    PhaseChanged,
    RunFinished,
    RunStarted,
)
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer


def test_events_and_learning_on_an_easy_task(tmp_path, events_sink) -> None:
    events, emit = events_sink
    profile = tiny_profile(train={"epochs": 4, "lr": 0.01})
    final = Trainer(profile, tmp_path, emit, Control()).run()
    assert isinstance(events[0], RunStarted)
    assert [layer.name for layer in events[0].layers] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    epochs = of_type(events, EpochEnded)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1].val_score >= 0.9 and epochs[-1].val_score > epochs[0].val_score - 1e-9
    assert epochs[-1].train_loss < epochs[0].train_loss
    metrics = of_type(events, MetricsUpdated)
    steps_per_epoch = events[0].steps_per_epoch
    assert len(metrics) == 4 * (steps_per_epoch // 2)  # every log_every=2 steps
    assert all(len(m.lrs) == 6 and m.samples_per_s > 0 for m in metrics)
    assert isinstance(events[-1], RunFinished) and final is events[-1]
    assert final.status == "finished" and final.best["metric"] == "val_score"
    layers = of_type(events, LayersChanged)[-1].layers
    assert all(layer.grad_norm is not None and layer.grad_norm > 0 for layer in layers)
    assert all(layer.drift is not None and layer.drift > 0 for layer in layers)


def test_command_applies_at_the_next_step_boundary(tmp_path) -> None:
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 1:
            control.put(UnfreezeNext())  # as the UI would, while step 1's metrics are on screen

    profile = tiny_profile(strategy={"kind": "progressive", "trigger": "manual"}, train={"epochs": 1, "log_every": 1})
    trainer = Trainer(profile, tmp_path, emit, control, interactive=True)
    trainer.run()
    change = of_type(events, PhaseChanged)[0]
    applied = of_type(events, CommandApplied)[0]
    assert (change.global_step, change.reason, change.unfrozen) == (1, "manual", ("layer4",))
    assert (applied.command, applied.global_step) == ("UnfreezeNext", 1)
    step2 = next(e for e in events if isinstance(e, MetricsUpdated) and e.global_step == 2)
    assert len(step2.lrs) == 2  # head and layer4 trained in step 2


def test_unfreeze_mid_epoch_puts_the_new_groups_batchnorm_in_train_mode(tmp_path) -> None:
    """A group unfrozen by `u` in mid-epoch trains its BatchNorm layers (batch statistics, running stats updated)
    from the next step on, not from the next epoch."""
    from torch.nn.modules.batchnorm import _BatchNorm

    events: list = []
    control = Control()
    modes: dict[int, list[bool]] = {}

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated):
            modes[event.global_step] = [
                m.training for m in trainer.parts.model.layer4.modules() if isinstance(m, _BatchNorm)
            ]
            if event.global_step == 1:
                control.put(UnfreezeNext())

    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "manual", "freeze_bn": True}, train={"epochs": 1, "log_every": 1}
    )
    trainer = Trainer(profile, tmp_path, emit, control, interactive=True)
    bn4 = trainer.parts.model.layer4[0].bn1
    before = bn4.running_mean.clone()
    trainer.run()
    assert of_type(events, PhaseChanged)[0].unfrozen == ("layer4",)
    assert modes[1] and not any(modes[1])  # frozen: eval mode
    assert all(modes[2])  # unfrozen at the end of step 1: train mode in step 2
    assert not torch.equal(bn4.running_mean, before)


def test_stop_pause_resume_and_save(tmp_path) -> None:
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            for command in (Pause(), SaveCheckpoint(), Resume(), StopEarly()):
                control.put(command)

    final = Trainer(tiny_profile(train={"epochs": 3}), tmp_path, emit, control).run()
    assert [c.command for c in of_type(events, CommandApplied)] == ["Pause", "SaveCheckpoint", "Resume", "StopEarly"]
    assert final.status == "stopped_early" and "stopped by the user" in final.reason
    assert final.global_step == 2
    kinds = [c.kind for c in of_type(events, CheckpointSaved)]
    assert kinds == ["manual", "best", "last"]  # the stopped epoch is validated: its weights are the best so far
    assert (tmp_path / "checkpoints" / "manual.safetensors").exists()


def test_stop_in_mid_epoch_validates_so_the_summary_has_final_val_metrics(tmp_path) -> None:
    """`s` in epoch 2: the epoch ends where it is (its steps so far), is validated and recorded, so the summary's
    final metrics are those of the weights the run stopped with, not of epoch 1."""
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == events[0].steps_per_epoch + 2:
            control.put(StopEarly())

    final = run_training(tiny_profile(train={"epochs": 4}), tmp_path, emit, control, interactive=False)
    steps = events[0].steps_per_epoch
    stop = next(i for i, e in enumerate(events) if isinstance(e, CommandApplied) and e.command == "StopEarly")
    after = of_type(events[stop:], EpochEnded)
    assert len(after) == 1 and after[0].epoch == 2 and after[0].global_step == steps + 2
    assert final.status == "stopped_early" and final.epochs == 2 and final.global_step == steps + 2
    assert final.final["epoch"] == 2 and final.final["val_score"] == after[0].val_score
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["epoch"] == 2 and summary["final"]["val_loss"] == after[0].val_loss


def test_stop_flag_interrupts_within_a_step(tmp_path) -> None:
    control = Control()

    def emit(event) -> None:
        if isinstance(event, MetricsUpdated):
            control.request_stop()

    final = Trainer(tiny_profile(train={"epochs": 50, "log_every": 1}), tmp_path, emit, control).run()
    assert final.status == "interrupted" and final.global_step == 1


def test_early_stopping_fires(tmp_path, events_sink) -> None:
    _, emit = events_sink
    # lr so small nothing improves by min_delta: stops after patience epochs
    profile = tiny_profile(
        train={"epochs": 20, "lr": 1e-9},
        early_stopping={"enabled": True, "metric": "val_loss", "patience": 2, "min_delta": 0.5},
    )
    final = Trainer(profile, tmp_path, emit, Control()).run()
    assert final.status == "stopped_early" and final.reason.startswith("early stopping: val_loss")
    assert final.epochs == 3  # epoch 1 sets the best, 2 and 3 fail to improve


def test_checkpoint_round_trip(tmp_path) -> None:
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1}, train={"epochs": 2}
    )
    first = Trainer(profile, tmp_path, lambda e: None, Control())
    first.run()
    second = Trainer(profile, tmp_path / "other", lambda e: None, Control(), resume=tmp_path)
    for (name, a), (_, b) in zip(first.parts.model.state_dict().items(), second.parts.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert second.st.phase == first.st.phase == 1
    assert second.st.epoch == 2 and second.st.global_step == first.st.global_step
    params = dict(second.parts.model.named_parameters())
    assert params["layer4.0.conv1.weight"].requires_grad and not params["layer3.0.conv1.weight"].requires_grad
    by_name_a = {g["layer_group"]: g["lr"] for g in first.st.optimizer.param_groups}
    by_name_b = {g["layer_group"]: g["lr"] for g in second.st.optimizer.param_groups}
    assert by_name_a == by_name_b
    pa, pb = dict(first.parts.model.named_parameters()), params
    for name in ("fc.weight", "layer4.0.conv1.weight"):
        sa, sb = first.st.optimizer.state[pa[name]], second.st.optimizer.state[pb[name]]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_resume_continues_identically(tmp_path) -> None:
    """2 epochs + interrupt + resume to 4 == 4 straight epochs, with an unfreeze at epoch 2 in both."""
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 2}, train={"epochs": 4}
    )
    straight: list = []
    Trainer(profile, tmp_path / "a", straight.append, Control()).run()

    control = Control()
    halves: list = []

    def stop_after_two(event) -> None:
        halves.append(event)
        if isinstance(event, EpochEnded) and event.epoch == 2:
            control.request_stop()

    run_training(profile, tmp_path / "b", stop_after_two, control, interactive=False)
    run_training(profile, tmp_path / "b", halves.append, Control(), interactive=False, resume=tmp_path / "b")
    a = [(e.epoch, e.val_loss, e.val_score) for e in of_type(straight, EpochEnded)]
    b = [(e.epoch, e.val_loss, e.val_score) for e in of_type(halves, EpochEnded)]
    assert [x[0] for x in b] == [1, 2, 3, 4]
    for (ea, la, aa), (eb, lb, ab) in zip(a, b):
        assert ea == eb and la == pytest.approx(lb, abs=1e-6) and aa == pytest.approx(ab, abs=1e-6)


def test_headless_run_writes_the_run_directory(tmp_path) -> None:
    final = run_training(
        tiny_profile(train={"epochs": 2}, data={"test_fraction": 0.2}),
        tmp_path,
        lambda e: None,
        Control(),
        interactive=False,
    )
    assert isinstance(final, RunFinished)
    for name in (
        "profile.toml",
        "events.jsonl",
        "metrics.csv",
        "summary.json",
        "checkpoints/best.safetensors",
        "checkpoints/best.state.pt",
        "checkpoints/last.safetensors",
        "checkpoints/last.state.pt",
    ):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["stop_reason"]
    assert set(summary["best"]) == {"metric", "value", "epoch"}
    assert summary["test"]["score"] >= 0 and summary["phases"][0]["groups"]
    assert summary["samples_per_s"] > 0 and summary["wall_s"] > 0 and summary["profile"]["name"] == "tiny"
    types = [json.loads(line)["type"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert types[0] == "RunStarted" and types[-1] == "RunFinished"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == ["1", "2"]


def test_bad_input_becomes_a_failed_event(tmp_path) -> None:
    profile = tiny_profile(model={"name": "resnet_does_not_exist"})
    final = run_training(profile, tmp_path, lambda e: None, Control(), interactive=False)
    assert final.bad_input and "resnet_does_not_exist" in final.message and "\n" not in final.message
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_run_ends_its_loader_workers_with_it(tmp_path) -> None:
    """Persistent DataLoader workers end when the run does. Left to the collector they outlived it, and the next
    run's start (a dashboard's next run, a test process) waited 20 s on them: they ignore SIGTERM."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    profile = tiny_profile(data={"num_workers": 1}, train={"epochs": 1})
    events: list = []
    run_training(profile, tmp_path, events.append, Control(), interactive=False)
    assert set(multiprocessing.active_children()) <= before
    assert events[0].loader_workers == 1  # the step bar's hint says "now 1", whatever the system sample counts
