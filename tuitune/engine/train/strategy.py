"""Strategies as data: which layer groups train in each phase, with which learning rates (`STRATEGIES`), and
when the next phase is due (`phase_due`).

Small pure functions in the manner of timm's `_manipulate.py`; the loop composes them. The mechanics follow
Lightning's finetuning callback, without its resume bug: freezing is `requires_grad`, unfreezing adds *new*
optimizer param groups (existing state untouched), and BatchNorm layers whose parameters are all frozen stay in eval
mode so their running statistics are never updated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuitune.errors import UserError

if TYPE_CHECKING:
    import torch

    from tuitune.config import RunProfile, StrategyConfig
    from tuitune.engine.model.groups import LayerGroup


@dataclass(frozen=True)
class PhasePlan:
    """The phases of a run: the trainable groups of each (cumulative, input -> output, the head last), and the
    factor every group's base LR is multiplied by on entering each phase (1.0: unchanged; LP-FT lowers it when
    everything starts to train)."""

    phases: tuple[tuple[str, ...], ...]
    lr_scales: tuple[float, ...]

    def __post_init__(self) -> None:
        assert len(self.phases) == len(self.lr_scales) and self.phases, "one LR scale per phase"


def _full(names: Sequence[str], cfg: StrategyConfig) -> PhasePlan:
    return PhasePlan((tuple(names),), (1.0,))


def _head_only(names: Sequence[str], cfg: StrategyConfig) -> PhasePlan:
    return PhasePlan(((names[-1],),), (1.0,))


def _lp_ft(names: Sequence[str], cfg: StrategyConfig) -> PhasePlan:
    """Linear probe, then everything at `ft_lr_scale` times the LR (Kumar et al. 2022)."""
    return PhasePlan(((names[-1],), tuple(names)), (1.0, cfg.ft_lr_scale))


def _groups(names: Sequence[str], cfg: StrategyConfig) -> PhasePlan:
    unknown = [g for g in cfg.groups if g not in names]
    if unknown:
        raise UserError(f"strategy.groups: unknown layer group {unknown[0]!r} (groups: {', '.join(names)})")
    return PhasePlan((tuple(n for n in names if n in cfg.groups),), (1.0,))


def _progressive(
    names: Sequence[str], cfg: StrategyConfig, shift: Mapping[str, float | None] | None = None
) -> PhasePlan:
    """Head first, then `groups_per_phase` more at a time: from the top down, or the most shifted first (`shift`,
    the measured shift of each group, with `strategy.order = "shift"`)."""
    below = shift_order(names, shift) if shift is not None else list(reversed(names[:-1]))
    phases: list[tuple[str, ...]] = [(names[-1],)]
    for i in range(0, len(below), cfg.groups_per_phase):
        added = set(phases[-1]) | set(below[i : i + cfg.groups_per_phase])
        phases.append(tuple(n for n in names if n in added))
    return PhasePlan(tuple(phases), (1.0,) * len(phases))


def shift_order(names: Sequence[str], shift: Mapping[str, float | None]) -> list[str]:
    """The groups below the head, most shifted first; those without a reading (no BatchNorm, say) after them, top
    down. Ties keep the top-down order."""
    below = list(reversed(names[:-1]))
    measured = sorted((g for g in below if shift.get(g) is not None), key=lambda g: -float(shift[g]))  # type: ignore[arg-type]
    return measured + [g for g in below if shift.get(g) is None]


def _lora(names: Sequence[str], cfg: StrategyConfig) -> PhasePlan:
    """Every group at once; with LoRA applied (`lora.apply_lora`) a group trains its adapters, the head in full."""
    return PhasePlan((tuple(names),), (1.0,))


# strategy.kind -> its plan. A new strategy is one function here and one entry (and its name in the config's choices).
STRATEGIES: dict[str, Callable[[Sequence[str], StrategyConfig], PhasePlan]] = {
    "full": _full,
    "head_only": _head_only,
    "lp_ft": _lp_ft,
    "groups": _groups,
    "progressive": _progressive,
    "lora": _lora,
    "auto_rgn": _full,  # every group trains; the LR scaling is `rgn_scales`, applied by the trainer's state
}


def plan_phases(
    names: Sequence[str], cfg: StrategyConfig, shift: Mapping[str, float | None] | None = None
) -> PhasePlan:
    """The plan of `cfg.kind` for these layer groups (ordered input -> output; the head is last); `shift`: each
    group's measured shift, for `progressive` with `order = "shift"`."""
    if cfg.kind not in STRATEGIES:
        raise UserError(f"strategy.kind: unknown strategy {cfg.kind!r} (one of {', '.join(STRATEGIES)})")
    if cfg.kind == "progressive" and shift is not None:
        return _progressive(names, cfg, shift)
    return STRATEGIES[cfg.kind](names, cfg)


def from_first_trainable(plan: PhasePlan, trains: set[str]) -> PhasePlan:
    """The plan without its leading phases that train nothing (`trains`: the groups with something to train), each
    merged into the next: under LoRA a language model's pretrained head has no adapter, so progressive unfreezing
    starts with the top block's adapters, not with an empty optimizer. A plan whose every phase trains nothing is
    left for the optimizer to refuse."""
    first = next((i for i, groups in enumerate(plan.phases) if trains & set(groups)), 0)
    return PhasePlan(plan.phases[first:], plan.lr_scales[first:])


def rgn_scales(grad_norms: Mapping[str, float], weight_norms: Mapping[str, float]) -> dict[str, float]:
    """Auto-RGN (Lee et al. 2023): each group's relative gradient norm |g| / |w| over the largest one, so the
    group that moves most for its size keeps the full LR and the others get their share of it. A group without a
    gradient or weights gets 0; when no group has a usable reading, every group keeps its LR (1.0)."""
    rgn = {
        g: grad_norms[g] / w
        for g, w in weight_norms.items()
        if g in grad_norms and w > 0 and math.isfinite(grad_norms[g]) and math.isfinite(w)
    }
    top = max(rgn.values(), default=0.0)
    if not top > 0:
        return {g: 1.0 for g in weight_norms}
    return {g: rgn.get(g, 0.0) / top for g in weight_norms}


def planned_phase_epochs(profile: RunProfile, epoch: int) -> int:
    """How many epochs the phase starting after `epoch` completed epochs is planned to last: `every_epochs` with the
    `epochs` trigger (the epochs left, at most), else every epoch left (a plateau or a person ends it)."""
    left = max(1, profile.train.epochs - epoch)
    return min(profile.strategy.every_epochs, left) if profile.strategy.trigger == "epochs" else left


def phase_due(
    cfg: StrategyConfig,
    *,
    interactive: bool,
    phase: int,
    num_phases: int,
    epoch: int,
    total_epochs: int,
    phase_start_epoch: int,
    stale_epochs: int,
) -> str:
    """Is the next phase due after this epoch? "" when not; else the trigger that makes it due, "epochs" or
    "plateau" (the loop moves on, or, with a person watching, asks first for a plateau). Without a person a
    `manual` or `plateau` trigger (nobody to press `u` or answer the question) falls back to `strategy.fallback`.
    Pure: the loop passes in where the run stands."""
    if phase + 1 >= num_phases or epoch >= total_epochs:
        return ""
    trigger = cfg.fallback if cfg.trigger in ("manual", "plateau") and not interactive else cfg.trigger
    if trigger == "epochs" and epoch - phase_start_epoch >= cfg.every_epochs:
        return "epochs"
    if trigger == "plateau" and stale_epochs >= cfg.plateau_patience:
        return "plateau"
    return ""


def set_trainable(
    model: torch.nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str], always: Iterable[str] = ()
) -> None:
    """Freeze every parameter outside the trainable groups and unfreeze every one inside (under LoRA: the group's
    adapters; its base weights stay frozen, whatever peft set when it injected them). `always`: parameters that
    train whatever their group (`strategy.train_bn`: the norm layers' affine weights)."""
    wanted, kept = set(trainable), set(always)
    params = dict(model.named_parameters())
    for group in groups:
        on = set(group.trained) if group.name in wanted else set()
        for name in group.param_names:
            params[name].requires_grad_(name in on or name in kept)


def norm_params(model: torch.nn.Module) -> tuple[str, ...]:
    """The affine parameters of the model's norm layers, fastai's `norm_types` (BatchNorm, InstanceNorm, LayerNorm,
    and their subclasses: timm's BatchNormAct2d, its LayerNorm2d): what `strategy.train_bn` keeps training in
    frozen groups, as fastai's `train_bn` does."""
    from torch import nn

    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)
    out: list[str] = []
    for prefix, module in model.named_modules():
        if isinstance(module, kinds):
            out += [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
    return tuple(out)


def set_train_mode(model: torch.nn.Module, freeze_bn: bool, freeze_dropout: bool = False) -> None:
    """`model.train()`, except BatchNorm layers with no trainable parameter, which stay in eval mode (the Keras
    guide's rule: a frozen BN must keep normalising with its pretrained statistics, not the new data's), and, with
    `freeze_dropout`, every module whose parameters are all frozen (its dropout, stochastic depth and functional
    `training`-dependent ops off): frozen groups then compute a deterministic function, which the feature cache can
    store. Parameter-free modules follow the nearest enclosing module that has parameters. BatchNorm follows
    `freeze_bn` alone (off: every BN normalises with batch statistics and updates its running ones)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model.train()
    if freeze_dropout:
        _eval_frozen(model)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            own = list(module.parameters(recurse=False))
            module.train(not (freeze_bn and own and not any(p.requires_grad for p in own)))


def train_mode(model: torch.nn.Module, cfg: StrategyConfig) -> None:
    """`set_train_mode` as the profile's strategy asks (`freeze_bn`, `freeze_dropout`)."""
    set_train_mode(model, cfg.freeze_bn, cfg.freeze_dropout)


def _eval_frozen(module: torch.nn.Module) -> None:
    """Top-down: a child whose parameters are all frozen goes to eval mode whole; a mixed one is looked into."""
    for child in module.children():
        flags = [p.requires_grad for p in child.parameters()]
        if not flags:
            continue
        if not any(flags):
            child.eval()
        elif not all(flags):
            _eval_frozen(child)


def batchnorms_by_group(model: torch.nn.Module, groups: Sequence[LayerGroup]) -> dict[str, list[torch.nn.Module]]:
    """The BatchNorm layers (with affine parameters) of each layer group, found by their parameters' names."""
    from torch.nn.modules.batchnorm import _BatchNorm

    owner = {n: g.name for g in groups for n in g.param_names}
    out: dict[str, list[torch.nn.Module]] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
            group = next((owner[n] for n in names if n in owner), None)
            if group is not None:
                out.setdefault(group, []).append(module)
    return out


def bn_mode(modules: Sequence[torch.nn.Module]) -> str | None:
    """ "train" when any of a group's BatchNorm layers updates its running statistics, "eval" when none does,
    None when the group has none (the layer table's BN column)."""
    if not modules:
        return None
    return "train" if any(m.training for m in modules) else "eval"


def group_lr(base_lr: float, names: Sequence[str], group: str, decay: float) -> float:
    """Discriminative LR: the head gets `base_lr`; each group one step deeper gets `decay` times the one above."""
    depth = len(names) - 1 - list(names).index(group)
    return base_lr * decay**depth


def param_groups(
    model: torch.nn.Module,
    groups: Sequence[LayerGroup],
    names: Iterable[str],
    *,
    base_lr: float,
    lr_decay: float,
    weight_decay: float,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer param groups for the given layer groups: one with weight decay and one without (norms and biases,
    as timm's `param_groups_weight_decay` does), each tagged with its layer group and base LR. `only`: of each
    group, just these parameters (`train_bn`: the norm layers of a frozen group); `skip`: parameters already in the
    optimizer (a group unfrozen after its norm layers trained)."""
    params = dict(model.named_parameters())
    order = [g.name for g in groups]
    wanted, subset, skipped = set(names), None if only is None else set(only), set(skip)
    out: list[dict[str, Any]] = []
    for group in groups:
        if group.name not in wanted:
            continue
        lr = group_lr(base_lr, order, group.name, lr_decay)
        pool = group.trained if subset is None else [n for n in group.param_names if n in subset]
        taken = [n for n in pool if n not in skipped]
        decay = [n for n in taken if params[n].ndim > 1]
        no_decay = [n for n in taken if params[n].ndim <= 1]
        for chosen, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if chosen:
                out.append(
                    {
                        "params": [params[n] for n in chosen],
                        "param_names": chosen,
                        "layer_group": group.name,
                        "base_lr": lr,
                        "lr": lr,
                        "weight_decay": wd,
                    }
                )
    return out


def build_optimizer(
    pgroups: list[dict[str, Any]], *, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """Any optimizer timm's `create_optimizer_v2` knows, over explicit param groups."""
    from timm.optim import create_optimizer_v2, list_optimizers

    if name not in list_optimizers():
        raise UserError(
            f"train.optimizer: unknown optimizer {name!r} (e.g. sgd, momentum, adagrad, rmsprop, adam, "
            f"adamw; any of timm.optim.list_optimizers())"
        )
    return create_optimizer_v2(pgroups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)


def add_groups(optimizer: torch.optim.Optimizer, pgroups: list[dict[str, Any]]) -> None:
    """Unfreeze into new param groups: existing groups, their LRs and their optimizer state are left as they are."""
    for pg in pgroups:
        optimizer.add_param_group(pg)


def rescale_by_rgn(
    optimizer: torch.optim.Optimizer, groups: Sequence[LayerGroup], params: Mapping[str, torch.nn.Parameter]
) -> None:
    """`strategy.kind = "auto_rgn"`, at an epoch's first step, after its backward: each group's LR factor becomes
    its relative gradient norm over the largest (`rgn_scales`), until the next epoch's first step. The factors ride
    in the optimizer's param groups ("rgn", which the schedule multiplies in), so a checkpoint keeps them. One host
    read; a reading that is not finite keeps the factors as they were."""
    import torch

    readings: dict[str, torch.Tensor] = {}
    for group in groups:
        ps = [params[n] for n in group.trained if params[n].grad is not None]
        if ps:
            g = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in ps])))
            w = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in ps])))
            readings[group.name] = torch.stack([g, w]).float()
    if not readings:
        return
    values = dict(zip(readings, torch.stack(list(readings.values())).tolist()))
    if not all(math.isfinite(v) for pair in values.values() for v in pair):
        return
    scales = rgn_scales({n: v[0] for n, v in values.items()}, {n: v[1] for n, v in values.items()})
    for pg in optimizer.param_groups:
        pg["rgn"] = scales.get(pg["layer_group"], 1.0)
