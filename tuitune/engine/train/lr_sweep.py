"""LR finder (Smith 2015, as popularised by fastai): train for a few steps while the learning rate grows
exponentially, watch the smoothed loss, and read a good LR off the curve — then put everything back.

The sweep runs on the real model and optimizer, so it sees the phase's real param groups (discriminative LRs keep
their ratios: the sweep LR is the largest group's, the others follow in proportion). It snapshots the weights,
buffers (BatchNorm statistics), optimizer state and hyperparameters, the RNG and the loader's shuffle generator, and
restores all of them bit for bit afterwards, so it can run before a phase or in the middle of one.

Suggestions: `steep` = the point of steepest descent of the smoothed loss against log LR; `valley` = fastai's
default (the middle of the longest descending stretch, a little towards its bottom), which is less fooled by noise.
`valley` is the one chosen.

Here: the sweep, its curve and suggestions, and `find_lr_in_run` (the `FindLR` command inside a run). The
`tuitune lr-find` command, which builds a run's parts for it, is `tuitune.engine.tools.lr_find`.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tuitune.engine.data.batches import to_device
from tuitune.engine.events import LRFound
from tuitune.engine.record.checkpoint import rng_state, set_rng_state
from tuitune.engine.train import strategy

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.tasks import TaskObjective
    from tuitune.engine.train.trainer_state import TrainerState

__all__ = ["LRCurve", "curve_to_csv", "find_lr_in_run", "lr_sweep", "scale_lrs", "suggest", "sweep_run"]


@dataclass(frozen=True)
class LRCurve:
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    steep: float | None = None
    valley: float | None = None
    method: str = "valley"
    stopped_early: bool = False  # the loss diverged before `steps`
    group_ratios: tuple[float, ...] = field(default=())  # each param group's LR / the swept LR

    @property
    def suggestion(self) -> float | None:
        return self.valley if self.method == "valley" else self.steep


# ----------------------------------------------------------------------------------------------- snapshot


@dataclass
class _Snapshot:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    training: dict[str, bool]  # each module's mode: frozen BatchNorm layers stay in eval mode in a training model
    rng: dict[str, Any]  # checkpoint.rng_state(): every global generator, Mixup/CutMix's numpy one included
    loader_gen: torch.Tensor | None


def _take(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any) -> _Snapshot:
    gen = getattr(loader, "generator", None)
    return _Snapshot(
        model={k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()},
        optimizer=copy.deepcopy(optimizer.state_dict()),
        training={name: m.training for name, m in model.named_modules()},
        rng=rng_state(),
        loader_gen=gen.get_state() if gen is not None else None,
    )


def _restore(snap: _Snapshot, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any) -> None:
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            v.copy_(snap.model[k])  # in place: the Parameter objects the optimizer holds stay the same
    optimizer.load_state_dict(snap.optimizer)
    for p in model.parameters():
        p.grad = None
    for name, module in model.named_modules():
        module.training = snap.training[name]
    set_rng_state(snap.rng)
    if snap.loader_gen is not None:
        loader.generator.set_state(snap.loader_gen)


# -------------------------------------------------------------------------------------------------- sweep


def _batches(loader: Any) -> Iterator[Any]:
    """The loader, over and over: a sweep may want more steps than an epoch has."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_sweep: the loader is empty")


def lr_sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    loss_fn: Callable,
    device: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
    train_mode: Callable[[nn.Module], None] | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
    targets: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    swept: Callable[[dict[str, Any]], bool] | None = None,
) -> LRCurve:
    """Sweep the LR exponentially from `start_lr` to `end_lr` over `steps` optimizer steps; stop once the smoothed
    loss exceeds `diverge` x its best. `targets(x, y)` turns a device batch into what the loss scores (Mixup/CutMix).
    `swept(param_group)`: only those groups' LR grows (the others hold LR 0: they take no step), so the curve
    answers for them alone, as a phase's new groups (`strategy.phase_lr_rule = "new_groups"`). Everything is
    restored afterwards, also on error or interrupt."""

    if not 0 < start_lr < end_lr or steps < 2:
        raise ValueError("lr_sweep: need 0 < start_lr < end_lr and steps >= 2")
    ratios = _group_ratios(optimizer, swept)
    snap = _take(model, optimizer, loader)
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    try:
        (train_mode or nn.Module.train)(model)
        batches = _batches(loader)
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            x, y = next(batches)
            x, y = to_device(x, device), y.to(device)
            if targets is not None:
                x, y = targets(x, y)
            with (autocast or nullcontext)():
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())  # one sync per step: a sweep is short and must watch every step
            avg = smooth * avg + (1 - smooth) * value
            s = avg / (1 - smooth ** (i + 1))  # bias-corrected, as fastai's Recorder does
            lrs.append(lr)
            losses.append(value)
            smoothed.append(s)
            best = min(best, s)
            if not math.isfinite(s) or (i > 0 and s > diverge * best):
                stopped = True
                break
    finally:
        _restore(snap, model, optimizer, loader)
    steep, valley = suggest(lrs, smoothed)
    return LRCurve(tuple(lrs), tuple(losses), tuple(smoothed), steep, valley, "valley", stopped, tuple(ratios))


def _group_ratios(
    optimizer: torch.optim.Optimizer, swept: Callable[[dict[str, Any]], bool] | None = None
) -> list[float]:
    """Each group's share of the largest group's LR (its `base_lr` when the engine set one); 0 for the groups a
    sweep leaves out (`swept`)."""
    on = [swept is None or swept(g) for g in optimizer.param_groups]
    base = [float(g.get("base_lr", g["lr"])) if keep else 0.0 for g, keep in zip(optimizer.param_groups, on)]
    top = max(base) if base and max(base) > 0 else 1.0
    return [b / top if keep else 0.0 for b, keep in zip(base, on)]


def scale_lrs(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a suggestion: the largest group's base LR becomes `lr`, the others keep their ratios to it (the
    engine's schedule multiplies `base_lr`; plain optimizers get `lr` itself)."""
    for group, ratio in zip(optimizer.param_groups, _group_ratios(optimizer)):
        if "base_lr" in group:
            factor = group["lr"] / group["base_lr"] if group["base_lr"] else 1.0
            group["base_lr"] = lr * ratio
            group["lr"] = group["base_lr"] * factor
        else:
            group["lr"] = lr * ratio


# ---------------------------------------------------------------------------------------------- suggestion


def smoothing(steps: int) -> float:
    """The loss's smoothing factor for a sweep of `steps` steps: fastai's 0.98 for its 100, less for a short sweep
    (0.98 averages over ~50 steps: a 20-step curve would be all lag)."""
    return min(0.98, max(0.5, 1.0 - 2.0 / steps))


def _trim(n: int) -> slice:
    """fastai skips the first tenth (the smoothing is still warming up) and the last few (divergence)."""
    return slice(n // 10, n - 5 if n > 15 else n)


def suggest(
    lrs: list[float] | tuple[float, ...], smoothed: list[float] | tuple[float, ...]
) -> tuple[float | None, float | None]:
    """(steep, valley) over the finite part of the curve; None where the curve is too short to tell: fewer than
    three points, or a sweep that stopped before the LR grew tenfold (at a phase start on a training set the model
    already fits, a loss near zero "diverges" on the first noisy batch, and the lowest LR tried is no answer)."""
    pts = [(lr, s) for lr, s in zip(lrs, smoothed) if math.isfinite(s)]
    if len(pts) < 3 or pts[-1][0] < 10 * pts[0][0]:
        return None, None
    pts = pts[_trim(len(pts))]
    if len(pts) < 3:
        return None, None
    xs, ys = [math.log10(lr) for lr, _ in pts], [s for _, s in pts]
    grads = [
        (ys[min(i + 1, len(ys) - 1)] - ys[max(i - 1, 0)]) / (xs[min(i + 1, len(xs) - 1)] - xs[max(i - 1, 0)])
        for i in range(len(ys))
    ]
    steep = pts[min(range(len(grads)), key=grads.__getitem__)][0]
    return steep, pts[_valley_index(ys)][0]


def _valley_index(losses: list[float]) -> int:
    """fastai's `valley`: find the longest decreasing subsequence of the loss, then step half its length in from
    its start (a third plus half a third): past the noisy start, short of the bottom where training turns
    unstable."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return min(n - 1, max_start + int(sections) + int(sections / 2))


# ------------------------------------------------------------------------------------------------- output


def curve_to_csv(curve: LRCurve, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss", "smoothed"])
        for row in zip(curve.lrs, curve.losses, curve.smoothed):
            writer.writerow([f"{v:.6g}" for v in row])
    return path


# ------------------------------------------------------------------------------------------- inside a run


class _CachedBatches:
    """The feature cache's stored train activations in a seeded shuffle, as a loader the sweep can read: a sweep
    over the cache runs only the layers above the frozen part, as the phase's own training steps do."""

    generator = None

    def __init__(self, store: Any, batch_size: int, device: Any, seed: int) -> None:
        self.store, self.batch_size, self.device = store, batch_size, device
        self.shuffle = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.store) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        """Each pass in the order a DataLoader with this seed's generator deals (its workers' base seed drawn
        first, then the shuffle), so a sweep over the cache sees the batches a sweep over the images would."""
        from torch.utils.data import BatchSampler, RandomSampler

        torch.empty((), dtype=torch.int64).random_(generator=self.shuffle)
        order = RandomSampler(range(len(self.store)), generator=self.shuffle)
        for index in BatchSampler(order, self.batch_size, drop_last=False):
            yield self.store.batch(index, self.device)


def sweep_run(
    profile: RunProfile,
    parts: RunParts,
    st: TrainerState,
    objective: TaskObjective,
    cache: FeatureCache | None = None,
    **sweep: Any,
) -> LRCurve:
    """The one LR-finder recipe, for `tuitune lr-find`, the dashboard's `f` and the phases' LRs: the run's model
    and optimizer (the current phase's param groups) scored by the run's own objective (its loss on its targets,
    Mixup/CutMix included), over a fresh shuffle of the train split seeded by the run's seed and step, so the run's
    own loader is never advanced. With the run's feature `cache` in use, over its stored activations: only the
    layers above the frozen part run (a head-only sweep costs a few matrix products)."""
    seed, batch = profile.train.seed + st.global_step, profile.data.batch_size
    assert isinstance(batch, int), 'data.batch_size = "auto" is chosen before the LR finder runs'
    model: nn.Module = parts.model
    loader: Any
    if cache is not None and cache.active and cache.top is not None:
        model, loader = cache.top, _CachedBatches(cache.train, batch, parts.device, seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(parts.bundle.train, batch_size=batch, shuffle=True, generator=gen)
    return lr_sweep(
        model,
        st.optimizer,
        loader,
        objective.train_loss,
        parts.device,
        train_mode=lambda m: strategy.train_mode(m, profile.strategy),
        autocast=parts.autocast,
        targets=objective.targets,
        **sweep,
    )


def find_lr_in_run(
    profile: RunProfile,
    parts: RunParts,
    st: TrainerState,
    objective: TaskObjective,
    *,
    steps: int,
    out_dir: Path | None,
    phase: int = -1,
    wait_s: float = 0.0,
    cache: FeatureCache | None = None,
    groups: tuple[str, ...] = (),
) -> LRFound:
    """The `FindLR` command, and `strategy.phase_lr = "find"` at a phase's start (`phase`, and the `wait_s` a person
    has to answer): sweep the current phase's LR from a snapshot (restored afterwards) with the recipe
    `tuitune lr-find` uses, and write the curve (unless `out_dir` is None: a rank other than 0, which sweeps
    the same batches so that the ranks stay in step); the `LRFound` event says what it found."""
    current = st.head_base_lr() if not groups else st.base_lrs()[groups[-1]]
    swept = (lambda g: g["layer_group"] in groups) if groups else None
    curve = sweep_run(profile, parts, st, objective, cache, steps=steps, smooth=smoothing(steps), swept=swept)
    st.apply_lr()  # the sweep restored the optimizer; put this step's scheduled LRs back
    name = f"lr_find_phase{phase + 1}.csv" if phase >= 0 else f"lr_find_step{st.global_step}.csv"
    path = curve_to_csv(curve, out_dir / name) if out_dir is not None else Path(name)
    suggestion = curve.suggestion or current
    return LRFound(
        lrs=curve.lrs,
        losses=curve.smoothed,
        suggestion=float(suggestion),
        steep=float(curve.steep or 0.0),
        valley=float(curve.valley or 0.0),
        current_lr=current,
        path=str(path),
        epoch=st.epoch,
        global_step=st.global_step,
        phase=phase,
        wait_s=wait_s if curve.suggestion else 0.0,
    )  # nothing to answer when it found nothing
