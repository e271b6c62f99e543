"""Knowledge distillation: loss = (1 - a) task + a T^2 KL(softmax(teacher / T) || softmax(student / T)).

Teachers (the `[distill]` section):
- a tuitune run directory: its best checkpoint, trained on these classes (a big model teaching a small one);
- a timm model name with `teacher_weights` (a file trained on these classes);
- `"self"`: a frozen copy of the starting model, against forgetting (Learning without Forgetting, Li & Hoiem
  2016). Its label set is the pretraining one, so the student cannot be compared with it logit for logit: when the
  weights file had a head (the *source* head), both models' features go through that frozen head and the
  student's old-task outputs are distilled toward the teacher's; without one, the pre-logit features themselves
  are matched (mean squared error).
The teacher runs in eval mode, without gradients.

Several ranks: every rank takes the "self" snapshot, from rank 0's weights (broadcast, so identical whatever each
rank loaded), and DDP wraps the model together with its pre-logits (`PreLogitsStudent`): the student's one forward
pass is DDP's, so the gradients of both losses are all-reduced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from tuitune.engine.model.heads import classifier, linear_head, pre_logits, splittable
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts


def kl_distill(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton's soft-target loss, scaled by T^2 so its gradients keep their size as T changes."""
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, -1),
            F.log_softmax(teacher.float() / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


class PreLogitsStudent(nn.Module):
    """The model answering (logits, pre-logits) from one pass: what DDP wraps when the loss reads the pre-logits,
    so that pass goes through DDP's forward (whose hooks all-reduce the gradients) rather than around it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pre = pre_logits(self.model, x)
        return classifier(self.model)(pre), pre


class Distiller:
    def __init__(
        self, teacher: nn.Module, t: float, *, source_head: nn.Module | None = None, features: bool = False
    ) -> None:
        self.teacher, self.t, self.source_head, self.features = teacher, t, source_head, features

    @property
    def on_pre_logits(self) -> bool:
        return self.source_head is not None or self.features

    def student_forward(self, model: nn.Module, x: Any) -> tuple[torch.Tensor, Any]:
        """One forward pass that yields the logits and, for "self", the pre-logits the old task is scored on."""
        if not self.on_pre_logits:
            return model(x), None
        if isinstance(getattr(model, "module", None), PreLogitsStudent):  # DDP around the model and its pre-logits
            return model(x)
        pre = pre_logits(model, x)
        return classifier(model)(pre), pre

    def loss(self, x: Any, out: torch.Tensor, aux: Any) -> torch.Tensor:
        if not self.on_pre_logits:
            with torch.no_grad():
                teacher_out = self.teacher(x)
            return kl_distill(out, teacher_out, self.t)
        with torch.no_grad():
            teacher_pre = pre_logits(self.teacher, x)
        if self.source_head is None:  # `features`: the pre-logit features themselves
            return F.mse_loss(aux.float(), teacher_pre.float())
        with torch.no_grad():
            t_logits = self.source_head(teacher_pre)
        return kl_distill(self.source_head(aux), t_logits, self.t)


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def build_distiller(profile: RunProfile, parts: RunParts) -> Distiller | None:
    cfg = profile.distill
    if not cfg.teacher:
        return None
    if not splittable(parts.model):
        raise UserError("distill.teacher: distillation needs a timm model with forward_features/forward_head")
    if cfg.teacher == "self":
        teacher = _frozen(copy.deepcopy(parts.model), parts.device)
        if parts.dist.active:  # the same snapshot on every rank; DDP to wrap the model with its pre-logits
            parts.dist.broadcast_module(teacher)
            parts.ddp_target = PreLogitsStudent(parts.model)
        head = parts.backbone.source_head
        if head:
            return Distiller(teacher, cfg.temperature, source_head=linear_head(head, parts.device))
        return Distiller(teacher, cfg.temperature, features=True)
    return Distiller(_frozen(_load_teacher(profile, parts), parts.device), cfg.temperature)


def _load_teacher(profile: RunProfile, parts: RunParts) -> nn.Module:
    """A run directory (its best checkpoint) or a timm name with a weights file, for these classes."""
    cfg, classes = profile.distill, parts.bundle.classes
    if Path(cfg.teacher).is_dir():
        from tuitune.engine.rebuild import rebuild_model

        _, backbone, teacher_classes = rebuild_model(Path(cfg.teacher), "best")
        if tuple(teacher_classes) != tuple(classes):
            raise UserError(
                f"{cfg.teacher}: distill.teacher: the teacher run's classes ({', '.join(teacher_classes)})"
                f" are not this run's ({', '.join(classes)})"
            )
        return backbone.model
    if not cfg.teacher_weights:
        raise UserError(
            f"distill.teacher_weights: a timm teacher ({cfg.teacher!r}) needs its weights file, trained "
            f"on these {len(classes)} classes (or name a tuitune run directory as the teacher)"
        )
    from tuitune.config import ModelConfig
    from tuitune.engine.model.backbone import build_backbone

    mc = ModelConfig(
        source="timm",
        name=cfg.teacher,
        pretrained=False,
        weights=cfg.teacher_weights,
        keep_head=True,
        img_size=profile.model.img_size,
    )
    return build_backbone(mc, len(classes), task="image").model
