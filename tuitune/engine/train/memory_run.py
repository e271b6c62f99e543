"""Before the first step: the memory plan of every phase (`plan_run`, the `MemoryPlanned` event), and for
`data.batch_size = "auto"` the largest batch whose every phase fits in memory (`choose_batch`).

On the CPU the memory plan decides, by arithmetic: the phases are measured once at a few examples, activations
scale linearly with the batch, and the largest size whose plan stays under `train.memory_gb` (else the available
RAM) wins. On CUDA a plan is only the first guess: real steps of the last phase (it trains the most) are run at
growing sizes, a forward, a backward and the optimizer's state allocated as its first step would, with out of
memory caught, and a size fits when its step ran and stayed under 90% of the GPU's free memory (the rest is
headroom for fragmentation and the loaders' pinned batches). Several ranks take the smallest size any rank chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tuitune.engine.data.batches import to_device
from tuitune.engine.events import MemoryPlanned
from tuitune.engine.memory_plan import MemoryParts, batch_that_fits, fit_advice, largest_fitting, plan
from tuitune.engine.train import strategy
from tuitune.engine.train.guards import is_oom
from tuitune.engine.train.memory_measure import budget, measure_run, model_kept, rng_kept, sample_batch

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.tasks import TaskObjective

HEADROOM = 0.9  # of the budget a chosen size may fill
MAX_BATCH = 4096
# Examples the phases are measured on (fewer when the batch is smaller); the plan scales activations and working
# memory to the run's batch linearly (a text batch of the longest texts: the worst one, whatever its size). A run
# of 9 phases costs 9 forward passes of this many examples before its first step.
MEASURED_BATCH = 8


def plan_run(
    parts: RunParts, profile: RunProfile, obj: TaskObjective, cache: FeatureCache
) -> tuple[RunProfile, MemoryPlanned]:
    """Measure every phase on one real batch and plan it; with `data.batch_size = "auto"` choose the size first
    (the parts' loaders are made anew at it) and return the profile with the chosen size in its place."""
    from tuitune.engine.train.parts import rank_batch_size, set_batch_size

    auto = not isinstance(profile.data.batch_size, int)
    measured = measure_run(parts, profile, obj, cache, min(MEASURED_BATCH, rank_batch_size(profile, parts.dist)))
    note = ""
    if auto:
        size, note = choose_batch(parts, profile, obj, cache, measured)
        profile = set_batch_size(parts, profile, size)
    return profile, planned(parts, profile, measured, rank_batch_size(profile, parts.dist), note)


def planned(parts: RunParts, profile: RunProfile, measured: MemoryParts, size: int, note: str = "") -> MemoryPlanned:
    """The plan at `size` examples against the device's budget, with advice when a phase will not fit."""
    phases = plan(measured, size)
    room, source = budget(parts.device, profile, measured.resident)
    cap = min(MAX_BATCH, len(parts.bundle.train))
    fitting = batch_that_fits(measured, room, cap) if room else 0
    return MemoryPlanned(
        phases=phases,
        batch_size=size,
        device=parts.device.type,
        budget=room,
        budget_source=source,
        advice=fit_advice(phases, room, source, fitting, measured.checkpointing),
        checkpointing=measured.checkpointing,
        note=note,
    )


def choose_batch(
    parts: RunParts, profile: RunProfile, obj: TaskObjective, cache: FeatureCache, measured: MemoryParts
) -> tuple[int, str]:
    """The batch size to train with, and one line saying how it was chosen. `measured`: the phases measured at a
    few examples (`measure_run`)."""
    cap = min(MAX_BATCH, len(parts.bundle.train))
    room, source = budget(parts.device, profile, measured.resident)
    guess = batch_that_fits(measured, int(room * HEADROOM), cap) if room else measured.batch_size
    if parts.device.type == "cuda":
        size = largest_fitting(lambda b: step_fits(parts, profile, obj, b, room * HEADROOM), max(guess, 1), cap)
        how = "the largest whose last phase's real step fits on the GPU"
    else:
        size = guess
        how = f"the largest whose every phase the memory plan fits in {HEADROOM:.0%} of {source_text(source)}"
    if parts.dist.active:
        size = min(parts.dist.gather_objects(size))
    if size < 1:
        return 1, "data.batch_size = auto: not even 1 example fits by the memory plan; training with 1"
    peak = max(p.peak for p in plan(measured, size)) / 1e9
    return size, f"data.batch_size = auto: {size} ({how}; planned peak ~{peak:.2f} GB)"


def source_text(source: str) -> str:
    return {"memory_gb": "train.memory_gb", "ram": "the available RAM", "gpu": "the GPU's free memory"}[source]


def step_fits(parts: RunParts, profile: RunProfile, obj: TaskObjective, size: int, limit: float) -> bool:
    """A real step of the last phase at `size` examples on CUDA: forward, loss, backward, and the optimizer state
    allocated (zeros, as the first step allocates it; the weights are not stepped). True when it ran without
    running out of memory and its peak stayed under `limit` bytes. Leaves the model and the generators as found."""
    model, device = parts.model, parts.device
    x, y = sample_batch(parts.bundle.train, size, parts.train_loader.collate_fn)
    states: list[torch.Tensor] = []
    torch.cuda.reset_peak_memory_stats(device)
    try:
        with rng_kept(device), model_kept(model):
            strategy.set_trainable(model, parts.groups, parts.phases[-1])
            strategy.train_mode(model, profile.strategy)
            x, y = to_device(x, device, parts.channels_last), y.to(device)
            with parts.autocast():
                out, aux = obj.forward(model, x)
                loss = obj.loss(out, y, x, aux)
            loss.backward()
            per_param = _states_per_param(profile)
            states = [torch.zeros_like(p) for p in model.parameters() if p.requires_grad for _ in range(per_param)]
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) <= limit
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if not is_oom(e):
            raise
        return False
    finally:
        del x, y, states
        torch.cuda.empty_cache()


def _states_per_param(profile: RunProfile) -> int:
    from tuitune.engine.memory_plan import optimizer_states

    known = optimizer_states(profile.train.optimizer, profile.train.momentum, "cuda")
    return round(sum(known)) if known is not None else 2  # an unknown optimizer: as Adam (2 states)
