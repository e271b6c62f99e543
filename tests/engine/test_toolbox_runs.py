"""The toolbox inside real (tiny) runs: each technique switched on changes what the run does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.engine.conftest import TINY_MODEL, of_type, tiny_profile
from tuitune.engine.commands import ApplyLR, Control, FindLR
from tuitune.engine.events import (
    CommandApplied,
    EpochEnded,
    LayersChanged,
    LRFound,
    MetricsUpdated,
    PhaseChanged,
    RunStarted,
)
from tuitune.engine.train.loop import Trainer


def _run(tmp_path, control: Control | None = None, **sections):
    events: list = []
    trainer = Trainer(tiny_profile(**sections), tmp_path, events.append, control or Control(), interactive=True)
    final = trainer.run()
    return trainer, events, final


def _weights_l1(trainer: Trainer) -> float:
    return sum(p.abs().sum().item() for p in trainer.parts.model.parameters() if p.ndim > 1)


def test_l1_lowers_the_weights_l1_norm(tmp_path) -> None:
    plain, _, _ = _run(tmp_path / "a", train={"epochs": 2, "weight_decay": 0.0})
    l1, _, _ = _run(tmp_path / "b", train={"epochs": 2, "weight_decay": 0.0}, regularization={"l1": 1e-3})
    assert _weights_l1(l1) < 0.9 * _weights_l1(plain)


def test_l2_sp_pulls_the_backbone_toward_its_start(tmp_path) -> None:
    def drift(events) -> float:
        layers = of_type(events, LayersChanged)[-1].layers
        return sum(layer.drift for layer in layers if layer.name != "head")

    _, plain, _ = _run(tmp_path / "a", train={"epochs": 2, "weight_decay": 0.0})
    _, sp, _ = _run(tmp_path / "b", train={"epochs": 2, "weight_decay": 0.0}, regularization={"l2_sp": 1.0})
    assert drift(sp) < 0.8 * drift(plain)


@pytest.mark.parametrize(
    "name, cls, extra",
    [
        ("sgd", torch.optim.SGD, {"nesterov": True}),
        ("momentum", torch.optim.SGD, {"nesterov": False}),
        ("adagrad", torch.optim.Adagrad, {}),
        ("rmsprop", torch.optim.RMSprop, {}),
        ("adam", torch.optim.Adam, {}),
        ("adamw", torch.optim.AdamW, {}),
    ],
)
def test_optimizer_class_and_group_lrs(tmp_path, name: str, cls: type, extra: dict) -> None:
    profile = tiny_profile(
        train={"optimizer": name, "lr": 0.01, "schedule": "constant"}, strategy={"kind": "full", "lr_decay": 0.5}
    )
    trainer = Trainer(profile, tmp_path, lambda e: None, Control())
    opt = trainer.st.optimizer
    assert isinstance(opt, cls)
    assert all(opt.param_groups[0][k] == v for k, v in extra.items())
    lrs = trainer.st.group_lrs()
    assert lrs["head"] == pytest.approx(0.01) and lrs["layer4"] == pytest.approx(0.005)
    assert lrs["stem"] == pytest.approx(0.01 * 0.5**5)


def test_lp_ft_drops_every_lr_when_all_groups_join(tmp_path) -> None:
    trainer, events, _ = _run(
        tmp_path,
        train={"epochs": 2, "lr": 0.01, "schedule": "constant"},
        strategy={"kind": "lp_ft", "trigger": "epochs", "every_epochs": 1, "ft_lr_scale": 0.1},
    )
    change = of_type(events, PhaseChanged)[0]
    assert change.phase == 1 and len(change.trainable) == 6
    lrs = trainer.st.group_lrs()
    assert lrs["head"] == pytest.approx(0.001) and lrs["stem"] == pytest.approx(0.001)


def test_ema_model_is_evaluated(tmp_path) -> None:
    """The ema_* scores are the EMA weights' own: equal to an evaluation of the EMA model after the last epoch,
    and not the live model's (a slow EMA, 0.98, lags well behind the live weights in 10 steps)."""
    trainer, events, _ = _run(tmp_path, train={"epochs": 2, "ema_decay": 0.98})
    last = of_type(events, EpochEnded)[-1]
    extra = last.extra
    assert 0.0 <= extra["ema_val_score"] <= 1.0 and extra["ema_val_loss"] > 0
    live, ema = trainer.parts.model.fc.weight, trainer.obj.ema.module.fc.weight
    assert not torch.allclose(live, ema)
    again = trainer.obj.evaluate(trainer.obj.ema.module, trainer.parts.val_loader, trainer.parts)
    assert extra["ema_val_loss"] == pytest.approx(again["loss"], abs=1e-6)
    assert extra["ema_val_score"] == pytest.approx(again["score"], abs=1e-9)
    assert abs(extra["ema_val_loss"] - last.val_loss) > 1e-3  # not the live model's score


def test_mixup_run_and_schedules(tmp_path) -> None:
    _, events, final = _run(
        tmp_path,
        augment={"mixup": 0.4, "cutmix": 1.0},
        train={"epochs": 2, "schedule": "onecycle", "warmup_steps": 4, "log_every": 1},
    )
    assert final.status == "finished"
    lrs = [m.lrs[-1] for m in of_type(events, MetricsUpdated)]
    assert max(lrs) > lrs[0] and lrs[-1] < max(lrs)  # one cycle: up, then down


def test_regression_reports_rmse(tmp_path) -> None:
    _, events, final = _run(tmp_path, loss={"kind": "mse"}, train={"epochs": 3, "checkpoint_metric": "val_score"})
    started = of_type(events, RunStarted)[0]
    assert (started.metric, started.higher_is_better, started.classes) == ("rmse", False, ("value",))
    epochs = of_type(events, EpochEnded)
    assert epochs[-1].val_score < epochs[0].val_score  # RMSE falls
    assert "val_mae" in epochs[-1].extra
    assert final.best["value"] == min(e.val_score for e in epochs)


def test_multilabel_reports_f1_and_map(tmp_path) -> None:
    _, events, _ = _run(tmp_path, loss={"kind": "bce"}, train={"epochs": 3})
    assert of_type(events, RunStarted)[0].metric == "f1"
    last = of_type(events, EpochEnded)[-1]
    assert 0.5 < last.val_score <= 1.0 and 0.5 < last.extra["val_map"] <= 1.0


def test_focal_and_class_weights_run(tmp_path) -> None:
    _, _, final = _run(tmp_path, loss={"kind": "focal", "balance_classes": True, "label_smoothing": 0.1})
    assert final.status == "finished" and final.final["val_score"] > 0.5


def _source_weights(tmp_path):
    """A tiny resnet 'pretrained' with a 2-class head (digits 0/1), saved with its head."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=2, **TINY_MODEL["kwargs"])
    path = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_source_retention_and_self_distillation(tmp_path) -> None:
    path, source = _source_weights(tmp_path)
    sections = dict(
        model={"weights": str(path)},
        data={"kind": "digits", "classes": [2, 3], "source_classes": [0, 1], "batch_size": 32},
        train={"epochs": 1, "max_steps_per_epoch": 3},
    )
    trainer, events, _ = _run(tmp_path / "a", distill={"teacher": "self", "alpha": 0.5}, **sections)
    assert torch.equal(trainer.parts.backbone.source_head["fc.weight"], source.fc.weight)
    assert not torch.equal(trainer.parts.model.fc.weight[:2], source.fc.weight)  # head re-created
    assert 0.0 <= of_type(events, EpochEnded)[-1].extra["source_acc"] <= 1.0
    extra = of_type(events, MetricsUpdated)[-1].extra
    assert extra["distill_loss"] >= 0 and extra["task_loss"] > 0


def test_find_lr_then_apply(tmp_path) -> None:
    control = Control()
    events: list = []

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            control.put(FindLR(steps=12))
        if isinstance(event, LRFound):
            control.put(ApplyLR(lr=0.02))

    profile = tiny_profile(train={"epochs": 1, "lr": 0.01, "schedule": "constant"}, strategy={"lr_decay": 0.5})
    trainer = Trainer(profile, tmp_path, emit, control)
    before = {n: p.detach().clone() for n, p in trainer.parts.model.named_parameters()}
    trainer.run()
    found = of_type(events, LRFound)[0]
    assert len(found.lrs) >= 2 and found.suggestion > 0 and found.current_lr == pytest.approx(0.01)
    applied = [c.command for c in of_type(events, CommandApplied)]
    assert applied == ["FindLR", "ApplyLR"]
    lrs = trainer.st.group_lrs()
    assert lrs["head"] == pytest.approx(0.02) and lrs["layer4"] == pytest.approx(0.01)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.parts.model.named_parameters())


def test_compression_and_export_at_run_end(tmp_path) -> None:
    from tuitune.engine.tools.after_run import export_and_compress

    events: list = []
    final = Trainer(
        tiny_profile(compress={"sparsity": 0.5, "quantize": True}, train={"epochs": 1}),
        tmp_path,
        events.append,
        Control(),
        after_run=export_and_compress,
    ).run()
    assert final.export_dir and (tmp_path / "export" / "model.safetensors").exists()
    steps = [s["step"] for s in final.compression["steps"]]
    assert steps[0] == "original" and any("pruned" in s for s in steps)
