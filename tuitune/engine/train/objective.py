"""What a step minimises and how a run is scored: the task loss (with Mixup), penalties, distillation, the EMA,
and the source task (how much of pretraining the backbone still knows).

The loop asks five things of it: `forward` (the model's output, and the pre-logits when distillation needs them),
`loss`, `after_step`, `evaluate` and `epoch_extras`. Everything stays on the device; `evaluate` reads the host once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from tuitune.engine.data.augment import build_mixup
from tuitune.engine.data.batches import to_device
from tuitune.engine.data.kinds import target_kind
from tuitune.engine.model.heads import linear_head, pre_logits
from tuitune.engine.train.distill import Distiller, build_distiller
from tuitune.engine.train.losses import build_loss
from tuitune.engine.train.regularize import Penalty, build_ema
from tuitune.engine.train.scoring import Scorer, average_precision, class_report
from tuitune.engine.train.val_views import ValViews

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts


def train_labels(dataset: Any) -> torch.Tensor | None:
    """The train split's labels without loading its images (for class weights): from the stored label tensor or
    the file list."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    labels = getattr(dataset, "labels", None)
    if labels is None and hasattr(dataset, "samples"):
        labels = torch.tensor([label for _, label in dataset.samples])
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    return labels[indices] if indices is not None else labels


class Objective:
    def __init__(self, profile: RunProfile, parts: RunParts) -> None:
        self.profile, self.device = profile, parts.device
        self.scorer = Scorer(target_kind(profile.loss.kind))
        k = len(parts.bundle.classes)
        labels = train_labels(parts.bundle.train) if profile.loss.balance_classes else None
        self.mixup = (
            build_mixup(profile.augment, k, profile.loss.label_smoothing) if parts.backbone.task == "image" else None
        )
        self.train_loss = build_loss(profile.loss, k, labels, soft_targets=self.mixup is not None).to(self.device)
        self.eval_loss = build_loss(profile.loss, k, labels).to(self.device)
        self.penalty = Penalty(profile.regularization, parts.model, parts.groups)
        self.ema = build_ema(parts.model, profile.train.ema_decay)
        self.distiller: Distiller | None = build_distiller(profile, parts)
        self.k = k
        self.dist = parts.dist  # several ranks: evaluation shards are summed over ranks
        self._source_tensors = parts.backbone.source_head  # the weights file's own pretraining head
        self._source_head: nn.Module | None = None  # built on first use (`source_accuracy`)
        # running task / distillation loss sums for the metric window, on the device
        self.window = torch.zeros(3, device=self.device)

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/CutMix the batch when asked (timm's `Mixup` needs an even batch: an odd last batch gets the same
        smoothed one-hot targets instead)."""
        if self.mixup is None:
            return x, y
        if x.shape[0] % 2 == 0:
            return self.mixup(x, y)
        eps = self.profile.loss.label_smoothing
        return x, F.one_hot(y, self.k).float() * (1 - eps) + eps / self.k

    def forward(self, model: nn.Module, x: Any) -> tuple[torch.Tensor, Any]:
        """The model's output, and what distillation needs from this forward pass (pre-logits, or None)."""
        if self.distiller is not None:  # needs the model's own forward_features / forward_head
            return self.distiller.student_forward(getattr(model, "_orig_mod", model), x)
        return model(x), None

    def loss(self, out: torch.Tensor, y: torch.Tensor, x: Any, aux: Any) -> torch.Tensor:
        task = self.train_loss(out.float(), y)
        total = task
        if self.distiller is not None:
            distill = self.distiller.loss(x, out, aux)
            a = self.profile.distill.alpha
            total = (1 - a) * task + a * distill
            self.window += torch.stack([task.detach(), distill.detach(), torch.ones((), device=self.device)])
        if self.penalty.active:
            total = total + self.penalty()
        return total

    def after_step(self, model: nn.Module, global_step: int) -> None:
        if self.ema is not None:
            self.ema.update(model, step=global_step)

    def window_tensors(self) -> list[torch.Tensor]:
        return [self.window]

    def window_extra(self, values: list[float]) -> dict[str, float]:
        """Mean task and distillation losses since the last read (empty when not distilling)."""
        task, distill, n = values
        self.window.zero_()
        return {"task_loss": task / n, "distill_loss": distill / n} if n else {}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: Any, parts: RunParts, *, thumbs: bool = True, sharded: bool = False
    ) -> dict[str, Any]:
        """Loss, score and its extras over a loader; for class targets the confusion matrix (counted on the device)
        with macro-F1 (`extra`), per-class accuracy and precision / recall / F1 (`report`) read off it, and (image
        inputs, `thumbs`) the worst errors as thumbnails (`ValViews`); one host sync. Leaves the model in eval mode:
        the loop puts it back with `strategy.train_mode` (frozen BatchNorm stays in eval). `sharded`: the loader
        holds this rank's shard (see `shards.EvalShard`); the sums and the confusion matrix are added over ranks,
        so the metrics are the whole set's, exactly (the thumbnails stay this rank's)."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        sums = torch.zeros(self.scorer.width, device=self.device)
        views = (
            ValViews(self.k, self.device, parts.backbone.data_config, thumbs and parts.backbone.task == "image")
            if self.scorer.kind == "class"
            else None
        )
        outs, truths, n = [], [], 0
        for x, y in loader:
            x, y = to_device(x, self.device), y.to(self.device, non_blocking=True)
            with parts.autocast():
                out = model(x).float()
            loss_sum += self.eval_loss(out, y) * y.shape[0]
            sums += self.scorer.batch_sums(out, y)
            n += y.shape[0]
            if views is not None:
                views.add(x, out, y)
            elif self.scorer.kind == "multi":
                outs.append(out)
                truths.append(y)
        extra = views.tensors() if views is not None else []
        head = torch.cat([loss_sum.reshape(1), sums, torch.full((1,), n, device=self.device)])
        if sharded:
            head = self.dist.sum(head.double())
            extra = [self.dist.sum(extra[0]), *extra[1:]] if extra else extra
            outs, truths = (
                ([self.dist.gather_rows(torch.cat(outs))], [self.dist.gather_rows(torch.cat(truths))])
                if outs
                else (outs, truths)
            )
        width = self.scorer.width
        values = torch.cat([head.double(), *(e.double() for e in extra)]).tolist()  # the host sync
        loss, score_sums, n = values[0], values[1 : 1 + width], int(values[1 + width])
        result = {
            "loss": loss / max(n, 1),
            "score": self.scorer.score(score_sums, n),
            "extra": self.scorer.extras(score_sums, n),
            "per_class": {},
            "report": {},
        }
        if views is not None:
            result.update(views.read(values[2 + width :], parts.bundle.classes))  # past loss, sums, count
            macro_f1, result["report"] = class_report(result["confusion"], parts.bundle.classes)
            result["extra"]["macro_f1"] = macro_f1
            result["per_class"] = {c: r["recall"] for c, r in result["report"].items()}  # per-class accuracy
        elif outs:
            result["extra"]["map"] = average_precision(torch.cat(outs).cpu(), torch.cat(truths).cpu())
        return result

    def epoch_extras(self, val: dict[str, Any], parts: RunParts) -> dict[str, float]:
        """val_* extras of the score (MAE, mAP), the EMA model's val metrics, and the source task's accuracy.
        Leaves the model in eval mode, as `evaluate` does."""
        out = {f"val_{k}": v for k, v in val.get("extra", {}).items()}
        if self.ema is not None:
            ema = self.evaluate(self.ema.module, parts.val_loader, parts, sharded=parts.dist.active)
            out.update(ema_val_loss=ema["loss"], ema_val_score=ema["score"])
        if parts.source_loader is not None:
            out["source_acc"] = self.source_accuracy(parts.model, parts.source_loader, parts)
        return out

    def epoch_events(self, epoch: int, global_step: int) -> list[Any]:
        """A classifier tells nothing about a validation beyond `EpochEnded`."""
        return []

    def generate_now(self, parts: RunParts, epoch: int, global_step: int) -> tuple[str, Any]:
        return "nothing to generate: a classifier (model.task = classify) writes no text", None

    def last_samples(self) -> tuple[dict[str, Any], ...]:
        return ()

    @torch.no_grad()
    def source_accuracy(self, model: nn.Module, loader: Any, parts: RunParts) -> float:
        """Accuracy on the pretraining task's val set, scored by the weights file's own (frozen) head on the
        backbone's current features: it falls as the backbone forgets what pretraining taught it."""
        if self._source_head is None:
            self._source_head = linear_head(self._source_tensors or {}, self.device)
        model.eval()
        hits = total = torch.zeros((), device=self.device)
        for x, y in loader:
            x, y = to_device(x, self.device), y.to(self.device, non_blocking=True)
            with parts.autocast():
                logits = self._source_head(pre_logits(model, x).float())
            hits = hits + (logits.argmax(-1) == y).sum()
            total = total + y.shape[0]
        hits, total = self.dist.sum(torch.stack([hits, total]).float())  # the shards of the source set
        return (hits / total.clamp(min=1)).item()
