"""The seam between a backbone and its classifier, for timm models: `forward_features` + `forward_head`.

The source-retention check and "self" distillation need it: the pretraining head scores the backbone's current
features. (The feature cache splits models more finely: `tuitune.engine.train.segments`.)
"""

from __future__ import annotations

import torch
from torch import nn

from tuitune.errors import UserError


def splittable(model: nn.Module) -> bool:
    """A timm model whose classifier sits at the end of `forward_head`."""
    return all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier"))


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's input: pooled (and, for some models, normalised) features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def classifier(model: nn.Module) -> nn.Module:
    return model.get_classifier()


def linear_head(tensors: dict[str, torch.Tensor], device: torch.device) -> nn.Linear:
    """A frozen linear classifier from a weights file's head tensors (`<name>.weight`, `<name>.bias`)."""
    weights = [k for k in tensors if k.endswith("weight") and tensors[k].ndim == 2]
    if len(weights) != 1:
        raise UserError(f"model.weights: the file's classifier is not one linear layer ({', '.join(tensors)})")
    w = tensors[weights[0]]
    head = nn.Linear(w.shape[1], w.shape[0], bias=weights[0][: -len("weight")] + "bias" in tensors)
    with torch.no_grad():
        head.weight.copy_(w)
        if head.bias is not None:
            head.bias.copy_(tensors[weights[0][: -len("weight")] + "bias"])
    head.requires_grad_(False)
    return head.to(device).eval()
