"""LoRA adapters through the `peft` library, injected into the model in place so tuitune keeps its own model,
layer groups, freezing and checkpoints.

Why in place (peft's `LoraModel` on the bare module, not `get_peft_model`): a `PeftModel` wraps the model and
renames every parameter (`base_model.model.…`); injected in place only the adapted layers change (`X.weight` becomes
`X.base_layer.weight`, beside `X.lora_A.default.weight` / `X.lora_B.default.weight`), and every run, resume and
export that applies the same profile builds the same names, so checkpoints load by name as always.

peft freezes the base when it injects; tuitune's `set_trainable` stays authoritative: each group's `train_names` say
what "this group trains" means under LoRA (its adapters; the head: everything), and the strategies switch groups.
Depthwise (grouped) convolutions are never adapted: a rank-r LoRA on a k x k depthwise conv holds more parameters
than the layer itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from torch import nn

from tuitune.engine.model.groups import Backbone, LayerGroup, check_partition
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import StrategyConfig

__all__ = ["DEFAULT_TARGETS", "adapter_state", "apply_lora", "merged", "uses_lora"]

# Module-name suffixes adapted by default; each family has only its own: timm ViT (`attn.qkv`, `attn.proj`,
# `mlp.fc1`, `mlp.fc2`), ConvNeXt and MLP blocks (`mlp.fc1`, `mlp.fc2`), BERT-like (`query`, `value`), timm
# EfficientNet / MobileNet blocks (their 1x1 convs `conv_pw`, `conv_pwl`: the depthwise `conv_dw` beside them is
# skipped anyway).
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "query", "value", "conv_pw", "conv_pwl")
ADAPTER = "default"


def uses_lora(cfg: StrategyConfig) -> bool:
    """`strategy.kind = "lora"`, or progressive unfreezing of adapters (`strategy.adapters = "lora"`)."""
    return cfg.kind == "lora" or cfg.adapters == "lora"


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _targets(
    model: nn.Module, head: LayerGroup, suffixes: tuple[str, ...], explicit: bool
) -> tuple[list[str], list[str]]:
    """Full names of the modules to adapt, and the depthwise convolutions skipped. The head is never adapted: it
    trains in full."""
    head_params = set(head.param_names)
    chosen, skipped = [], []
    for name, module in model.named_modules():
        if not name or not any(_matches(name, s) for s in suffixes):
            continue
        if any(f"{name}.{p}" in head_params for p, _ in module.named_parameters()):
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            skipped.append(name)
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)) or (
            type(module).__name__ == "Conv1D"
        ):  # GPT-2's transposed linear
            chosen.append(name)
        elif explicit:
            raise UserError(
                f"strategy.lora_targets: {name} is a {type(module).__name__}; LoRA adapts Linear, "
                f"Conv and Embedding layers"
            )
    return chosen, skipped


def apply_lora(
    backbone: Backbone, cfg: StrategyConfig, defaults: tuple[str, ...] = DEFAULT_TARGETS, full_head: bool = True
) -> tuple[Backbone, list[str]]:
    """Inject LoRA adapters into `backbone.model` (in place) and regroup: an adapter belongs to the group of the
    layer it adapts. Returns the new backbone and notes for the run's warnings (the skipped depthwise convs).
    `defaults`: the targets when `strategy.lora_targets` names none (the task's: a decoder's projections);
    `full_head`: the head trains in full (a classifier's new head) or, like every group, only its adapters (a
    language model's pretrained LM head)."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    model = backbone.model
    explicit = bool(cfg.lora_targets)
    suffixes = tuple(str(t) for t in cfg.lora_targets) or defaults
    targets, skipped = _targets(model, backbone.groups[-1], suffixes, explicit)
    notes = (
        [
            f"LoRA skipped {len(skipped)} depthwise convolution(s) (e.g. {skipped[0]}): an adapter there would "
            f"hold more parameters than the layer"
        ]
        if skipped
        else []
    )
    if not targets:
        why = " but depthwise convolutions, which LoRA skips" if skipped else ""
        raise UserError(
            f"strategy.lora_targets: no layer of {type(model).__name__} matches "
            f"{', '.join(suffixes)}{why} (name module suffixes, e.g. attn.qkv or query)"
        )
    config = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets
    )
    tuner = LoraModel(model, config, ADAPTER)
    return dataclasses.replace(
        backbone,
        groups=_regroup(model, backbone.groups, full_head),
        lora=tuner,
        description=f"{backbone.description}, LoRA r={cfg.lora_rank} on {len(targets)} layers",
    ), notes


def _original(name: str) -> str:
    """The pre-injection name of a parameter: `X.base_layer.w` -> `X.w`, `X.lora_A.default.w` -> `X.w`."""
    if ".base_layer." in name:
        return name.replace(".base_layer.", ".")
    for part in (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector."):
        if part in name:
            return name.split(part)[0] + ".weight"
    return name


def _regroup(model: nn.Module, groups: tuple[LayerGroup, ...], full_head: bool = True) -> tuple[LayerGroup, ...]:
    """The same groups over the injected names; `train_names` = the adapters (with `full_head`, the head: all)."""
    owner = {n: g.name for g in groups for n in g.param_names}
    members: dict[str, list[str]] = {g.name: [] for g in groups}
    sizes: dict[str, int] = {}
    for name, p in model.named_parameters():
        members[owner[_original(name)]].append(name)
        sizes[name] = p.numel()
    head = groups[-1].name
    out = []
    for g in groups:
        names = tuple(members[g.name])
        adapters = tuple(n for n in names if "lora_" in n)
        out.append(
            LayerGroup(
                g.name,
                names,
                sum(sizes[n] for n in names),
                train_names=names if g.name == head and full_head else adapters,
                adapter_params=sum(sizes[n] for n in adapters),
            )
        )
    result = tuple(out)
    check_partition(model, result)
    return result


def adapter_state(model: nn.Module) -> dict[str, Any]:
    """The adapter tensors alone, under the run's own parameter names."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}


def merged(backbone: Backbone, copy: bool = True) -> Backbone:
    """`backbone` with the adapters merged into the base weights and the peft layers removed (peft's
    `merge_and_unload`): plain timm / transformers modules with their original parameter names. On a copy, unless
    the caller's model is its to change (`copy=False`: no second model in memory)."""
    import copy as copying

    tuner = copying.deepcopy(backbone.lora) if copy else backbone.lora
    model = tuner.merge_and_unload()
    return dataclasses.replace(backbone, model=model, lora=None)
