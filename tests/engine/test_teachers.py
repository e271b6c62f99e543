"""Teachers and stochastic depth in real (tiny) runs: self-distillation keeps the source task, a teacher from a run
directory or a timm name is the model it names, and `drop_path_rate` reaches the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine.conftest import of_type, tiny_profile
from tuitune.config import load_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, MetricsUpdated
from tuitune.engine.session import run_training
from tuitune.engine.train.loop import Trainer
from tuitune.errors import UserError

DEMO = Path(__file__).resolve().parents[2] / "tuitune" / "profiles" / "demo.toml"


def _run(profile, run_dir: Path) -> tuple[Trainer, list]:
    events: list = []
    trainer = Trainer(profile, run_dir, events.append, Control())
    trainer.run()
    return trainer, events


def test_self_distillation_keeps_the_source_task_better_than_plain_fine_tuning(tmp_path: Path) -> None:
    """The README's claim, on the demo's real transfer task: the backbone pretrained on digits 0-4 is fine-tuned
    in full on 5-9 at a high LR, which makes it forget 0-4 (source accuracy ~0.99 at the start); with
    `distill.teacher = "self"` it forgets far less. AdamW is invariant to the loss scale, so the (1 - alpha) factor
    on the task loss alone cannot explain the gap: it is the teacher's pull."""
    overrides = ["train.lr=0.02", "train.epochs=2", "train.max_steps_per_epoch=6", 'strategy.kind="full"']
    source_acc = {}
    for teacher in ("", "self"):
        profile = load_profile(DEMO, [*overrides, f'distill.teacher="{teacher}"', "distill.alpha=0.5"])
        _, events = _run(profile, tmp_path / (teacher or "plain"))
        source_acc[teacher or "plain"] = [e.extra["source_acc"] for e in of_type(events, EpochEnded)]
    plain, kept = source_acc["plain"], source_acc["self"]
    print(f"\nsource (digits 0-4) accuracy per epoch: plain {plain}, self-distilled {kept}")
    assert plain[-1] < 0.9  # plain fine-tuning forgot
    assert kept[-1] >= plain[-1] + 0.15 and kept[-1] >= 0.8  # the teacher kept most of it
    assert all(k > p for k, p in zip(kept, plain))


def _teacher_run(tmp_path: Path) -> Path:
    """A finished tiny run whose `last` weights differ from its `best` ones (a teacher is the best)."""
    run_dir = tmp_path / "teacher"
    run_training(tiny_profile(train={"epochs": 1}), run_dir, lambda e: None, Control(), interactive=False)
    last = run_dir / "checkpoints" / "last.safetensors"
    save_file({k: v + 0.5 if v.is_floating_point() else v for k, v in load_file(str(last)).items()}, str(last))
    return run_dir


def test_teacher_from_a_run_directory_is_its_best_checkpoint(tmp_path: Path) -> None:
    run_dir = _teacher_run(tmp_path)
    student = tiny_profile(
        train={"epochs": 1, "seed": 1, "log_every": 1}, distill={"teacher": str(run_dir), "alpha": 0.5}
    )
    trainer, events = _run(student, tmp_path / "student")
    best = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    teacher = trainer.obj.distiller.teacher.state_dict()
    assert set(best) <= set(teacher) and all(torch.equal(best[k], teacher[k].cpu()) for k in best)
    last = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    assert not torch.equal(last["fc.weight"], teacher["fc.weight"].cpu())
    assert not teacher["fc.weight"].requires_grad and not trainer.obj.distiller.teacher.training
    extra = of_type(events, MetricsUpdated)[-1].extra
    assert extra["distill_loss"] > 0 and extra["task_loss"] > 0
    other = tiny_profile(data={"num_classes": 4}, distill={"teacher": str(run_dir)})
    with pytest.raises(UserError, match="distill.teacher: the teacher run's classes"):
        Trainer(other, tmp_path / "other", lambda e: None, Control())


def _agreement(model: torch.nn.Module, teacher: torch.nn.Module, loader) -> float:
    """How often the model's prediction on the val set is the teacher's (the model is put back in train mode)."""
    model.eval()
    same = total = 0
    with torch.no_grad():
        for x, _ in loader:
            same += int((model(x).argmax(-1) == teacher(x).argmax(-1)).sum())
            total += len(x)
    model.train()
    return same / total


def _agreement_at_the_end(profile, run_dir: Path, teacher: torch.nn.Module) -> float:
    """Agreement with the teacher after the last epoch (before the run's end reloads the best checkpoint)."""
    holder: dict = {}

    def emit(event) -> None:
        if isinstance(event, EpochEnded) and event.epoch == profile.train.epochs:
            holder["agreement"] = _agreement(holder["trainer"].parts.model, teacher, holder["trainer"].parts.val_loader)

    holder["trainer"] = Trainer(profile, run_dir, emit, Control())
    holder["trainer"].run()
    return holder["agreement"]


def test_teacher_from_a_timm_name_and_weights_file_is_the_one_distilled(tmp_path: Path) -> None:
    """A timm teacher (`test_resnet`) trained on the task, then saved with its classes rotated (it says 1 for 0,
    2 for 1, 0 for 2): a student trained on the distillation loss alone (alpha = 1) learns *that* teacher's
    answers, which a student trained on the labels does not."""
    import timm

    run_training(
        tiny_profile(model={"name": "test_resnet", "kwargs": {}}),
        tmp_path / "teacher-run",
        lambda e: None,
        Control(),
        interactive=False,
    )
    weights = load_file(str(tmp_path / "teacher-run" / "checkpoints" / "best.safetensors"))
    rotate = torch.tensor([1, 2, 0])
    weights["fc.weight"], weights["fc.bias"] = weights["fc.weight"][rotate], weights["fc.bias"][rotate]
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    teacher = timm.create_model("test_resnet", num_classes=3)
    teacher.load_state_dict(weights)
    teacher.eval()

    train = {"epochs": 3, "lr": 0.01}
    distill = {"teacher": "test_resnet", "teacher_weights": str(path), "alpha": 1.0}
    distilled = _agreement_at_the_end(tiny_profile(train=train, distill=distill), tmp_path / "distilled", teacher)
    plain = _agreement_at_the_end(tiny_profile(train=train), tmp_path / "plain", teacher)
    print(f"\nagreement with the rotated timm teacher: distilled {distilled:.3f}, trained on labels {plain:.3f}")
    assert distilled >= 0.8 and distilled >= plain + 0.3
    with pytest.raises(UserError, match="distill.teacher_weights"):
        Trainer(tiny_profile(distill={"teacher": "test_resnet"}), tmp_path / "x", lambda e: None, Control())


def _drop_paths(model: torch.nn.Module) -> list[float]:
    return [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]


def test_drop_path_rate_reaches_the_model_and_makes_training_stochastic(tmp_path: Path) -> None:
    plain = Trainer(tiny_profile(), tmp_path / "a", lambda e: None, Control())
    assert _drop_paths(plain.parts.model) == []
    trainer, events = _run(tiny_profile(regularization={"drop_path_rate": 0.3}, train={"epochs": 1}), tmp_path / "b")
    rates = _drop_paths(trainer.parts.model)
    assert rates and max(rates) == pytest.approx(0.3, abs=0.05) and min(rates) > 0  # timm's linear ramp by depth
    model, x = trainer.parts.model, torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))  # blocks dropped at random in training
    model.eval()
    assert torch.equal(model(x), model(x))
    assert of_type(events, EpochEnded)[-1].val_loss > 0
