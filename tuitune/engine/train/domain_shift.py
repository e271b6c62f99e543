"""How far the target data is from what the pretrained layers expect, per layer group, and AdaBN.

With BatchNorm, the layers carry their own expectation: the running mean and variance of their input over the
pretraining data. The shift of a BN layer is the symmetric KL divergence between that Gaussian and the target
batches' (per channel, averaged); a group's shift is the mean over its BN layers. Without BatchNorm, and when the
profile names source data (`data.source_classes`), each group's output statistics on source and target batches are
compared the same way. A few val batches, forward hooks, no grad; one host read.

`adapt_batchnorm` (the `AdaptBatchNorm` command) re-estimates the running statistics on target batches (AdaBN,
Li et al. 2016): the cheapest answer to a shift in the low-level statistics.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from tuitune.engine.data.batches import to_device
from tuitune.engine.events import DomainShiftMeasured
from tuitune.engine.model.groups import LayerGroup
from tuitune.engine.train.strategy import batchnorms_by_group, plan_phases

BATCHES = 4  # val batches a measurement reads
EPS = 1e-5


def batchnorms(model: nn.Module, groups: tuple[LayerGroup, ...]) -> dict[str, list[nn.Module]]:
    """Each group's BatchNorm layers that keep running statistics (`strategy.batchnorms_by_group`, less those
    without running statistics: they have no reference to measure against)."""
    out = {g: [m for m in bns if m.running_mean is not None] for g, bns in batchnorms_by_group(model, groups).items()}
    return {g: bns for g, bns in out.items() if bns}


def group_outputs(model: nn.Module, groups: tuple[LayerGroup, ...]) -> dict[str, list[nn.Module]]:
    """Each group's outermost modules (those holding its parameters whose parent holds none of another group)."""
    owner = {p: g.name for g in groups for p in g.param_names}
    out: dict[str, list[nn.Module]] = {}
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        names = {owner.get(f"{name}.{p}") for p, _ in module.named_parameters()}
        if len(names) == 1 and (group := names.pop()) is not None:
            out.setdefault(group, []).append(module)
            taken.append(name)
    return out


def _channels(t: torch.Tensor, channel_first: bool) -> torch.Tensor:
    """(N, C) rows of channel values: BN inputs and conv maps (B, C, ...) are channel-first; token sequences
    (B, T, D) and vectors (B, D) channel-last."""
    t = t.detach().float()
    if channel_first or t.ndim == 4:
        return t.transpose(0, 1).reshape(t.shape[1], -1).T
    return t.reshape(-1, t.shape[-1])


class _Moments:
    """Per-module channel sums (count, sum, sum of squares) on the device, fed by forward hooks."""

    def __init__(self, modules: list[nn.Module], inputs: bool) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.inputs = inputs
        self.handles = [
            m.register_forward_pre_hook(self._pre) if inputs else m.register_forward_hook(self._post) for m in modules
        ]

    def _add(self, module: nn.Module, t: Any) -> None:
        if isinstance(t, (tuple, list)):
            t = t[0] if t else None
        if not isinstance(t, torch.Tensor) or t.ndim < 2 or not t.is_floating_point():
            return
        rows = _channels(t, self.inputs)
        s = torch.stack([torch.full_like(rows[0], rows.shape[0]), rows.sum(0), rows.pow(2).sum(0)])
        key = id(module)
        self.sums[key] = self.sums[key] + s if key in self.sums else s

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self._add(module, args)

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._add(module, output)

    def gaussian(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        s = self.sums.get(id(module))
        if s is None:
            return None
        mean = s[1] / s[0]
        return mean, (s[2] / s[0] - mean.pow(2)).clamp(min=0)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def symmetric_kl(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) for per-channel Gaussians, averaged over channels: 0 when they match."""
    v1, v2 = v1 + EPS, v2 + EPS
    return (0.5 * (v1 / v2 + v2 / v1 - 2) + 0.5 * (m1 - m2).pow(2) * (1 / v1 + 1 / v2)).mean()


@torch.no_grad()
def _feed(model: nn.Module, loader: Any, device: torch.device, autocast: Any, batches: int) -> None:
    """Forward `batches` batches. Iterating a loader draws its workers' seed from the global RNG: forked, so a
    measurement never moves the training's random stream (a resumed run measures at its start too)."""
    with torch.random.fork_rng(devices=[]):
        for x, _ in itertools.islice(loader, batches):
            with autocast():
                model(to_device(x, device))


def measure(
    model: nn.Module,
    groups: tuple[LayerGroup, ...],
    val_loader: Any,
    device: torch.device,
    autocast: Any,
    source_loader: Any = None,
    batches: int = BATCHES,
) -> tuple[str, tuple[float | None, ...]] | None:
    """(reference, per-group shift in `groups` order; None where nothing was measured): reference "bn" (BN
    running statistics) or "source" (the source data's output statistics). None when neither applies. Leaves
    the model in eval mode (the caller restores the train mode)."""
    bns = batchnorms(model, groups)
    model.eval()
    if bns:
        moments = _Moments([m for ms in bns.values() for m in ms], inputs=True)
        try:
            _feed(model, val_loader, device, autocast, batches)
        finally:
            moments.close()
        per_group = {
            g: [
                symmetric_kl(*batch, m.running_mean.float(), m.running_var.float())
                for m in ms
                if (batch := moments.gaussian(m)) is not None
            ]
            for g, ms in bns.items()
        }
        return "bn", _read(groups, per_group)
    if source_loader is None:
        return None
    outputs = group_outputs(model, groups)
    modules = [m for ms in outputs.values() for m in ms]
    seen = []
    for loader in (source_loader, val_loader):
        moments = _Moments(modules, inputs=False)
        try:
            _feed(model, loader, device, autocast, batches)
        finally:
            moments.close()
        seen.append(moments)
    per_group = {}
    for g, ms in outputs.items():
        pairs = [(seen[0].gaussian(m), seen[1].gaussian(m)) for m in ms]
        per_group[g] = [symmetric_kl(*a, *b) for a, b in pairs if a is not None and b is not None]
    return "source", _read(groups, per_group)


def _read(groups: tuple[LayerGroup, ...], per_group: dict[str, list[torch.Tensor]]) -> tuple[float | None, ...]:
    """The one host read: every group's mean shift at once."""
    names = [g.name for g in groups if per_group.get(g.name)]
    if not names:
        return tuple(None for _ in groups)
    values = dict(zip(names, torch.stack([torch.stack(per_group[n]).mean() for n in names]).tolist()))
    return tuple(values.get(g.name) for g in groups)


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module, loader: Any, device: torch.device, autocast: Any, batches: int
) -> tuple[int, int]:
    """AdaBN: every BN layer's running statistics re-estimated from scratch on `batches` target batches (a
    cumulative average, momentum None); nothing else changes (the rest of the model runs in eval mode). Returns
    (BN layers, batches read). The caller restores the train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    if not bns:
        return 0, 0
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        _feed(model, loader, device, autocast, batches)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
    model.eval()
    return len(bns), min(batches, len(loader)) if hasattr(loader, "__len__") else batches


def adapt_in_run(parts: Any, batches: int, train_mode: Any) -> tuple[int, int]:
    """`adapt_batchnorm` inside a run (`parts`: its `RunParts`) at a step boundary: the train loader's shuffle
    generator is put back after (resume replays the same order) and `train_mode(model)` restores the modes."""
    gen = parts.train_loader.generator
    state = gen.get_state() if gen is not None else None
    try:
        return adapt_batchnorm(parts.model, parts.train_loader, parts.device, parts.autocast, batches)
    finally:
        if gen is not None:
            gen.set_state(state)
        train_mode(parts.model)


def shift_plan(parts: Any, profile: Any) -> str:
    """`strategy.order = "shift"`: the phases re-planned with the most shifted groups unfrozen first, measured on
    the pretrained model (before any resume loads weights, so a resumed run plans the same phases); rank 0's
    reading on every rank. Returns a warning when nothing could be measured (the plan stays top-down)."""
    if profile.strategy.kind != "progressive" or profile.strategy.order != "shift":
        return ""
    found = measure(parts.model, parts.groups, parts.val_loader, parts.device, parts.autocast, parts.source_loader)
    shifts = parts.dist.gather_objects(None if found is None else found[1])[0]
    if shifts is None or all(v is None for v in shifts):
        return (
            'strategy.order = "shift": no BatchNorm layers and no data.source_classes to measure the shift '
            "against; the groups unfreeze top down"
        )
    names = [g.name for g in parts.groups]
    parts.plan = plan_phases(names, profile.strategy, dict(zip(names, shifts)))
    return ""


def shift_event(parts: Any, epoch: int, global_step: int, reason: str) -> DomainShiftMeasured | None:
    """The run's measurement as an event (`parts`: the run's `RunParts`); None when nothing applies (no BatchNorm
    and no source data)."""
    found = measure(parts.model, parts.groups, parts.val_loader, parts.device, parts.autocast, parts.source_loader)
    if found is None or all(v is None for v in found[1]):
        return None
    return DomainShiftMeasured(
        groups=tuple(g.name for g in parts.groups),
        shifts=found[1],
        reference=found[0],
        epoch=epoch,
        global_step=global_step,
        reason=reason,
    )
