"""Measuring what the memory plan (`engine/memory_plan.py`) adds up, on one real batch, for every phase of a run.

For each phase its trainable set is switched on (and its train mode: frozen BatchNorm and dropout in eval), and one
forward pass and loss run under `torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps
for the backward, on any device (`saved_tensors.Recorder`): their storages, counted once and never the parameters'
own, are the phase's activations, credited to the layer group whose module was running; forward hooks on every
module give the forward's high point and each group's largest op. With gradient checkpointing a second forward,
checkpointing paused, gives what a checkpointed block holds while the backward recomputes it. No backward and no
optimizer step run: gradients are the trainable parameters' size and the optimizer's state is known per parameter
(`OPTIMIZER_STATES`), so the model, its buffers (BatchNorm statistics), its trainable flags and train modes, and
every random generator are as they were afterwards. The batch is the dataset's first examples, or for text its
longest ones (a batch is padded to its longest text, so the longest make the peak).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tuitune.engine.data.batches import text_lengths, to_device
from tuitune.engine.data.image_cache import available_memory
from tuitune.engine.memory_plan import MemoryParts, PhaseParts, optimizer_states
from tuitune.engine.model.checkpointing import checkpointing_paused
from tuitune.engine.train import strategy
from tuitune.engine.train.saved_tensors import Recorder, checkpoint_units, nbytes, tensors

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.tasks import TaskObjective


def tensors_bytes(x: Any) -> int:
    """Bytes of the tensors in a tensor, a dict, a list or a tuple of them."""
    return sum(nbytes(t) for t in tensors(x))


def sample_batch(dataset: Any, size: int, collate: Any) -> tuple[Any, torch.Tensor]:
    """`size` examples as one batch: the first ones, or (text) the longest, collated as the loader collates."""
    n = min(size, len(dataset))
    lengths = text_lengths(dataset)
    index = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:n] if lengths else range(n)
    x, y = collate([dataset[i] for i in index])
    return x, y


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """torch's (and CUDA's), Python's and numpy's generators back as they were: a measurement draws nothing from
    the run (its dropout masks, augmentations and Mixup stay those of a run that was not measured)."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextlib.contextmanager
def model_kept(model: nn.Module) -> Iterator[None]:
    """The trainable flags, train modes and buffers (BatchNorm running statistics move in a train-mode forward)
    restored afterwards, and no gradient left behind."""
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        for m, mode in modes.items():
            m.training = mode


@dataclass(frozen=True)
class _Forward:
    """What one recorded forward found, per group in forward order, and under each module."""

    order: list[str]
    activations: dict[str, int]
    workspace: dict[str, int]
    high: int
    called: dict[str, str]
    by_module: dict[str, int]


def _recorded(rec: Recorder, parts: RunParts, obj: TaskObjective, x: Any, y: torch.Tensor) -> _Forward:
    """One forward and loss under the recorder (`saved_tensors.Recorder`), in the current trainable set and
    train mode; the recorder's hold on the saved tensors ends with it."""
    names = [g.name for g in parts.groups]
    rec.begin(x)
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), parts.autocast():
            xt, yt = obj.targets(x, y)
            out, aux = obj.forward(parts.model, xt)
            loss = obj.loss(out, yt, xt, aux)
        acts = rec.by_group(names, (out, aux, loss))
        del loss, out, aux
    finally:
        rec.release()
    order = rec.order + [n for n in names if n not in rec.order]
    high = max(rec.forward, sum(acts.values()))  # the outputs still alive at the end count too
    return _Forward(order, acts, dict(rec.workspace), high, dict(rec.called), dict(rec.by_module))


def measure_phase(
    rec: Recorder, parts: RunParts, obj: TaskObjective, x: Any, y: torch.Tensor, checkpointing: bool
) -> PhaseParts:
    """The phase in its trainable set and train mode, measured (gradients and cache still 0: `measure_run`).
    With gradient checkpointing, each checkpointed block's recompute in the backward holds what it keeps without
    checkpointing: read from a second forward with checkpointing paused, per group its largest block."""
    seen = _recorded(rec, parts, obj, x, y)
    recompute = dict.fromkeys(seen.order, 0)
    if checkpointing:
        with checkpointing_paused(parts.model):
            plain = _recorded(rec, parts, obj, x, y).by_module
        for name, group in checkpoint_units(seen.called, seen.by_module, plain).items():
            recompute[group] = max(recompute[group], plain[name])
    return PhaseParts(
        groups=(),
        activations=tuple(seen.activations[n] for n in seen.order),
        grads=(),
        workspace=tuple(seen.workspace.get(n, 0) for n in seen.order),
        forward=seen.high,
        recompute=tuple(recompute[n] for n in seen.order),
        order=tuple(seen.order),
    )


def _grads(parts: RunParts, named: dict[str, nn.Parameter], order: tuple[str, ...]) -> tuple[int, ...]:
    by_name = {g.name: g for g in parts.groups}
    return tuple(sum(nbytes(named[n]) for n in by_name[g].param_names if named[n].requires_grad) for g in order)


def _resident(parts: RunParts, obj: TaskObjective) -> int:
    """Bytes the run keeps on its device whatever the phase: the model's parameters and buffers, the EMA copy, a
    distillation teacher, L2-SP's anchors; on the CPU also the copy of the starting weights that drift is measured
    from (`TrainerState`, kept on the host)."""
    model = parts.model
    own = sum(nbytes(t) for t in [*model.parameters(), *model.buffers()])
    teacher = getattr(getattr(obj, "distiller", None), "teacher", None)  # a classifier's objective only
    extra: list[nn.Module] = [m for m in (obj.ema, teacher) if m is not None]
    more = sum(nbytes(t) for m in extra for t in [*m.parameters(), *m.buffers()])
    penalty = getattr(obj, "penalty", None)  # L2-SP's anchors: a classifier's objective only
    more += sum(nbytes(t) for t in penalty.anchors()) if penalty is not None else 0
    if parts.device.type == "cpu":
        more += sum(nbytes(p) for p in model.parameters())
    return own + more


def probe_optimizer(profile: RunProfile) -> float:
    """Optimizer state tensors per parameter, measured: two steps on a probe parameter (for names the table does
    not know). A per-tensor scalar (a step count) does not count."""
    p = nn.Parameter(torch.randn(64, 48))
    cfg = profile.train
    opt = strategy.build_optimizer(
        [{"params": [p]}], name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    kept = sum(t.numel() for st in opt.state.values() for t in st.values() if torch.is_tensor(t) and t.numel() > 1)
    return kept / p.numel()


def _cache_bytes(cache: FeatureCache, x: Any, ks: list[int], device: torch.device) -> list[int]:
    """The feature cache's bytes on the run's device in each phase (its boundary `ks[i]`, -1 for none): the phase's
    activations and those stored with them for later phases, as many as fit the cache's budget in order (the
    cache's own rule, `FeatureCache._sized`); a cache that fits only in host memory counts 0 on CUDA."""
    wanted = sorted({k for k in ks if k >= 0})
    size = cache.stored_bytes(x, wanted) if wanted else {}
    budget = cache.budget(device)
    out = []
    for i, k in enumerate(ks):
        later = [j for j in dict.fromkeys(ks[i + 1 :]) if 0 <= j < k]
        total = 0
        for b in [k, *later] if k >= 0 else []:
            if (total + size[b]) * 1.1 > budget:
                break
            total += size[b]
        out.append(total)
    return out


def measure_run(
    parts: RunParts, profile: RunProfile, obj: TaskObjective, cache: FeatureCache, batch: int
) -> MemoryParts:
    """Every phase of the run measured on `batch` examples of its train split (see the module's docstring)."""
    x, y = sample_batch(parts.bundle.train, batch, parts.train_loader.collate_fn)
    x, y = to_device(x, parts.device, parts.channels_last), y.to(parts.device)
    model, measured, ks = parts.model, [], []
    named = dict(model.named_parameters())
    rec = Recorder(model, parts.groups, x)
    try:
        with rng_kept(parts.device), model_kept(model):
            for groups in parts.phases:
                strategy.set_trainable(model, parts.groups, groups)
                strategy.train_mode(model, profile.strategy)
                ks.append(cache.plan()[0])
                seen = measure_phase(rec, parts, obj, x, y, profile.train.gradient_checkpointing)
                measured.append(replace(seen, groups=tuple(groups), grads=_grads(parts, named, seen.order)))
            caches = _cache_bytes(cache, x, ks, parts.device)
    finally:
        rec.close()
    cfg, device = profile.train, parts.device.type
    known = optimizer_states(cfg.optimizer, cfg.momentum, device)
    states, temp = known if known is not None else (probe_optimizer(profile), 0.0)
    phases = tuple(replace(p, cache=c) for p, c in zip(measured, caches))
    return MemoryParts(
        batch_size=len(y),
        resident=_resident(parts, obj),
        batch_bytes=tensors_bytes(x) + nbytes(y),
        phases=phases,
        states=states,
        foreach_temp=temp,
        accumulate=cfg.accumulate_steps > 1,
        checkpointing=cfg.gradient_checkpointing,
    )


def budget(device: torch.device, profile: RunProfile, resident: int) -> tuple[int, str]:
    """What a run may use, in bytes, and where the figure comes from (`MemoryPlanned.budget_source`): on CUDA the
    GPU's free memory plus what this process holds already (its model among it); on the CPU `train.memory_gb`,
    else the available RAM plus the resident model (already loaded); 0 when the platform does not say."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device)), "gpu"
    if profile.train.memory_gb > 0:
        return int(profile.train.memory_gb * 1e9), "memory_gb"
    free = available_memory()
    return (int(free) + resident, "ram") if free else (0, "ram")
