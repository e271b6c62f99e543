"""Task losses. Cross-entropy (label smoothing, class weights, soft Mixup targets) and BCE come from timm's
`create_classification_loss`; only the softmax focal loss is written here, because neither timm nor torch has a
multi-class one (timm's and torchvision's focal losses are sigmoid/binary)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import LossConfig


class FocalLoss(nn.Module):
    """FL = -alpha (1 - p_t)^gamma log p_t (Lin et al. 2017), softmax form, optional per-class weights.

    gamma = 0 and alpha = 1 give plain cross-entropy. Dense (Mixup) targets are accepted: p_t and log p_t are then
    the target-weighted sums, as timm's PolyCrossEntropy does for its focal-like term."""

    def __init__(
        self, gamma: float = 2.0, alpha: float = 0.25, weight: torch.Tensor | None = None, smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.gamma, self.alpha, self.smoothing = gamma, alpha, smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if target.shape != logits.shape:
            k = logits.shape[-1]
            target = F.one_hot(target.long(), k).float()
            if self.smoothing:
                target = target * (1.0 - self.smoothing) + self.smoothing / k
        target = target.float()
        if self.weight is not None:
            target = target * self.weight
        log_pt = (target * log_probs).sum(-1)
        pt = (target * log_probs.exp()).sum(-1)
        return (-self.alpha * (1.0 - pt).clamp(min=0).pow(self.gamma) * log_pt).mean()


def balanced_weights(labels: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, N / (K n_c), so each class contributes equally on average."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).float()
    return counts.sum() / (num_classes * counts.clamp(min=1))


def class_weight_tensor(cfg: LossConfig, num_classes: int, train_labels: torch.Tensor | None) -> torch.Tensor | None:
    if cfg.class_weights:
        if len(cfg.class_weights) != num_classes:
            raise UserError(f"loss.class_weights: {len(cfg.class_weights)} weights for {num_classes} classes")
        return torch.tensor([float(w) for w in cfg.class_weights])
    if cfg.balance_classes and train_labels is not None:
        return balanced_weights(train_labels, num_classes)
    return None


def build_loss(
    cfg: LossConfig, num_classes: int, train_labels: torch.Tensor | None = None, *, soft_targets: bool = False
) -> nn.Module:
    """The training criterion. `soft_targets` when Mixup/CutMix produce dense targets (they apply the smoothing
    themselves, so timm ignores `smoothing` then)."""
    from timm.loss import create_classification_loss

    weight = class_weight_tensor(cfg, num_classes, train_labels)
    if cfg.kind == "focal":
        return FocalLoss(cfg.focal_gamma, cfg.focal_alpha, weight, 0.0 if soft_targets else cfg.label_smoothing)
    if cfg.kind == "mse":
        return RegressionLoss()
    if cfg.kind == "bce":
        return create_classification_loss("bce", multi_label=True, smoothing=cfg.label_smoothing, class_weight=weight)
    if weight is not None:  # timm's CE takes no class weight: torch's does, with smoothing
        if soft_targets:
            return _WeightedSoftCE(weight)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    return create_classification_loss("ce", smoothing=cfg.label_smoothing, soft_targets=soft_targets)


class _WeightedSoftCE(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target * self.weight * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class RegressionLoss(nn.Module):
    """MSE on a single output per example (the head is sized 1 for regression)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred.float().reshape(target.shape), target.float())
