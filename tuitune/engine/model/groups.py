"""What both model builders (timm in `backbone`, transformers in `hf`) share: the layer-group and backbone types,
the model error, and the partition check every grouping must pass. Kept apart so neither builder imports the other's
module for them (they used to import each other)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuitune.errors import UserError

__all__ = ["Backbone", "LayerGroup", "ModelError", "check_partition", "unique_groups"]


class ModelError(UserError):
    """A model that cannot be built or loaded: a wrong name, a missing cache, weights of another architecture."""


@dataclass(frozen=True)
class LayerGroup:
    """A unit of freezing: strategies and checkpoints refer to groups by name, parameters by their full name."""

    name: str
    param_names: tuple[str, ...]
    params: int
    # What "this group trains" turns on: None = all of `param_names`; under LoRA its adapters (the head: all).
    train_names: tuple[str, ...] | None = None
    adapter_params: int | None = None  # LoRA parameters in the group (None: no adapters in this model)

    @property
    def trained(self) -> tuple[str, ...]:
        return self.param_names if self.train_names is None else self.train_names


@dataclass
class Backbone:
    """Everything a run needs from the model: `model(x) -> logits` for a tensor (images) or a dict of tensors
    (text), its groups (input to head), and how to feed it (data_config for images, tokenizer for text)."""

    model: nn.Module
    groups: tuple[LayerGroup, ...]
    task: str
    data_config: dict
    tokenizer: Any  # a transformers tokenizer (text), else None
    description: str
    # The classifier tensors of a `model.weights` file (its pretraining head), kept aside when the head is
    # re-created: the source-retention check and "self" distillation score the old task with them.
    source_head: dict[str, torch.Tensor] | None = None
    # peft's LoraModel around `model` (adapters injected in place) when the strategy uses LoRA; export merges it.
    lora: Any = None


def unique_groups(named: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    seen: Counter[str] = Counter()
    out = []
    for name, names in named:
        seen[name] += 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", names))
    return out


def check_partition(model: nn.Module, groups: tuple[LayerGroup, ...]) -> None:
    """Every parameter in exactly one group: a strategy must never silently skip (or double) a tensor."""
    all_names = [n for n, _ in model.named_parameters()]
    assigned = Counter(n for g in groups for n in g.param_names)
    missing = [n for n in all_names if n not in assigned]
    doubled = [n for n, c in assigned.items() if c > 1]
    unknown = set(assigned) - set(all_names)
    if missing or doubled or unknown:
        example = (missing or doubled or sorted(unknown))[0]
        raise ModelError(
            f"model.name: cannot split {type(model).__name__} into layer groups: {len(missing)} "
            f"unassigned, {len(doubled)} duplicated, {len(unknown)} unknown parameters "
            f"(e.g. {example})"
        )
    if not groups or groups[-1].name != "head" or len({g.name for g in groups}) != len(groups):
        raise ModelError(f"model.name: bad layer groups for {type(model).__name__}: {[g.name for g in groups]}")
