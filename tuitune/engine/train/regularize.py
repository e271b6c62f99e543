"""Penalties added to the task loss, and the EMA of the weights: the forgetting guards of fine-tuning.

All of it stays on the device (no host sync): the penalties are tensors added to the loss, the EMA update is
timm's `ModelEmaV3` (foreach lerp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from tuitune.config import RegularizationConfig
    from tuitune.engine.model.groups import LayerGroup


class Penalty:
    """lambda_1 * sum|w| over trainable weights, plus alpha/2 * sum ||w - w0||^2 over trainable *backbone*
    weights (L2-SP, Li et al. 2018: decay toward the pretrained weights, not toward zero; the new head has no
    pretrained value and keeps plain weight decay). Norm and bias parameters are left out of both, as they are
    from weight decay."""

    def __init__(self, cfg: RegularizationConfig, model: nn.Module, groups: Sequence[LayerGroup]) -> None:
        self.l1, self.l2_sp = cfg.l1, cfg.l2_sp
        head = set(groups[-1].param_names)
        named = [(n, p) for n, p in model.named_parameters() if p.ndim > 1]
        self._l1_params = [p for _, p in named]
        self._sp = [(p, p.detach().clone()) for n, p in named if n not in head] if self.l2_sp else []

    @property
    def active(self) -> bool:
        return bool(self.l1 or self.l2_sp)

    def anchors(self) -> list[torch.Tensor]:
        """The pretrained weights L2-SP pulls toward: copies held for the whole run (the memory plan counts them)."""
        return [p0 for _, p0 in self._sp]

    def __call__(self) -> torch.Tensor | float:
        total: torch.Tensor | float = 0.0
        if self.l1:
            live = [p for p in self._l1_params if p.requires_grad]
            if live:
                total = total + self.l1 * torch.stack([p.abs().sum() for p in live]).sum()
        if self.l2_sp:
            live = [(p, p0) for p, p0 in self._sp if p.requires_grad]
            if live:
                diffs = torch._foreach_sub([p for p, _ in live], [p0 for _, p0 in live])
                total = total + 0.5 * self.l2_sp * torch.stack(torch._foreach_norm(diffs)).pow(2).sum()
        return total


def build_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """timm's ModelEmaV3: a frozen copy of the model whose weights follow ema = d*ema + (1-d)*w each step."""
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)
