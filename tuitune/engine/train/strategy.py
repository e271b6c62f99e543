"""Strategies as data: which layer groups train in each phase, with which learning rates.

Small pure functions in the manner of timm's `_manipulate.py`; the loop composes them. The mechanics follow
Lightning's finetuning callback, without its resume bug: freezing is `requires_grad`, unfreezing adds *new*
optimizer param groups (existing state untouched), and BatchNorm layers whose parameters are all frozen stay in eval
mode so their running statistics are never updated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from tuitune.errors import UserError

if TYPE_CHECKING:
    import torch

    from tuitune.config import StrategyConfig
    from tuitune.engine.model.backbone import LayerGroup


def plan_phases(names: Sequence[str], cfg: StrategyConfig) -> tuple[tuple[str, ...], ...]:
    """The trainable groups of each phase, cumulative. Groups are ordered input -> output; the head is last."""
    head = names[-1]
    if cfg.kind == "full":
        return (tuple(names),)
    if cfg.kind == "head_only":
        return ((head,),)
    if cfg.kind == "lp_ft":  # linear probe, then everything (the LR drop happens on entering phase 2)
        return ((head,), tuple(names))
    if cfg.kind == "groups":
        unknown = [g for g in cfg.groups if g not in names]
        if unknown:
            raise UserError(f"strategy.groups: unknown layer group {unknown[0]!r} (groups: {', '.join(names)})")
        return (tuple(n for n in names if n in cfg.groups),)
    # progressive: head first, then `groups_per_phase` more at a time from the top down
    below = list(reversed(names[:-1]))
    phases = [(head,)]
    for i in range(0, len(below), cfg.groups_per_phase):
        added = set(phases[-1]) | set(below[i:i + cfg.groups_per_phase])
        phases.append(tuple(n for n in names if n in added))
    return tuple(phases)


def set_trainable(model: torch.nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str]) -> None:
    """Freeze every parameter outside the trainable groups and unfreeze every one inside."""
    wanted = set(trainable)
    params = dict(model.named_parameters())
    for group in groups:
        for name in group.param_names:
            params[name].requires_grad_(group.name in wanted)


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


def group_lr(base_lr: float, names: Sequence[str], group: str, decay: float) -> float:
    """Discriminative LR: the head gets `base_lr`; each group one step deeper gets `decay` times the one above."""
    depth = len(names) - 1 - list(names).index(group)
    return base_lr * decay ** depth


def param_groups(model: torch.nn.Module, groups: Sequence[LayerGroup], names: Iterable[str], *, base_lr: float,
                 lr_decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer param groups for the given layer groups: one with weight decay and one without (norms and biases,
    as timm's `param_groups_weight_decay` does), each tagged with its layer group and base LR."""
    params = dict(model.named_parameters())
    order = [g.name for g in groups]
    out: list[dict[str, Any]] = []
    for group in groups:
        if group.name not in set(names):
            continue
        lr = group_lr(base_lr, order, group.name, lr_decay)
        decay = [n for n in group.param_names if params[n].ndim > 1]
        no_decay = [n for n in group.param_names if params[n].ndim <= 1]
        for chosen, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if chosen:
                out.append({"params": [params[n] for n in chosen], "param_names": chosen, "layer_group": group.name,
                            "base_lr": lr, "lr": lr, "weight_decay": wd})
    return out


def build_optimizer(pgroups: list[dict[str, Any]], *, name: str, lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """Any optimizer timm's `create_optimizer_v2` knows, over explicit param groups."""
    from timm.optim import create_optimizer_v2, list_optimizers

    if name not in list_optimizers():
        raise UserError(f"train.optimizer: unknown optimizer {name!r} (e.g. sgd, momentum, adagrad, rmsprop, adam, "
                        f"adamw; any of timm.optim.list_optimizers())")
    return create_optimizer_v2(pgroups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)


def add_groups(optimizer: torch.optim.Optimizer, pgroups: list[dict[str, Any]]) -> None:
    """Unfreeze into new param groups: existing groups, their LRs and their optimizer state are left as they are."""
    for pg in pgroups:
        optimizer.add_param_group(pg)

