"""The memory plan outside a run, and the check of a plan against what training really allocates.

`plan_profile`: a profile's plan as a run would emit it (`MemoryPlanned`), for `tuitune layers` and the picker's
composing screen: the run's parts are built (data and model; weights or not), each phase measured on one real
batch, nothing trained. `measured_peaks`: the peak each phase really reaches in a few plain training steps, by the
allocator's own count: on the CPU torch.profiler's memory events (`profile_memory=True`), on CUDA
`torch.cuda.max_memory_allocated`; the test of the plan and `benchmarks/memory_plan.py` set the two side by side.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuitune.engine.events import Event, MemoryPlanned

if TYPE_CHECKING:
    import torch

    from tuitune.config import RunProfile
    from tuitune.engine.train.objective import Objective
    from tuitune.engine.train.parts import RunParts


def quiet_profile(profile: RunProfile, random_init: bool) -> RunProfile:
    """The profile as a plan builds it: no image cache decoded into memory, no loader workers started, and
    (`random_init`) no weights read or downloaded (sizes do not depend on them; nor then the source task's check,
    which scores the weights file's own head)."""
    data = dataclasses.replace(profile.data, cache_images="off", num_workers=0)
    if random_init:
        data = dataclasses.replace(data, source_classes=[])
    model = dataclasses.replace(profile.model, pretrained=False, weights="") if random_init else profile.model
    return dataclasses.replace(profile, data=data, model=model)


def run_parts(profile: RunProfile, emit: Callable[[Event], None] | None = None) -> tuple[RunParts, Objective, Any]:
    """The parts, objective and feature cache a run of `profile` builds before its first step."""
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.objective import Objective
    from tuitune.engine.train.parts import build_parts

    parts = build_parts(profile, Path("."), emit)
    return parts, Objective(profile, parts), FeatureCache(parts, profile)


def plan_parts(
    profile: RunProfile, random_init: bool = False, emit: Callable[[Event], None] | None = None
) -> tuple[RunParts, MemoryPlanned]:
    """Every phase of `profile` planned as its run would plan it (see the module's docstring), and the parts built
    for it (their backbone: the groups `tuitune layers` lists)."""
    from tuitune.engine.train.memory_run import plan_run

    profile = quiet_profile(profile, random_init)
    parts, obj, cache = run_parts(profile, emit)
    return parts, plan_run(parts, profile, obj, cache)[1]


def plan_profile(profile: RunProfile, random_init: bool = True) -> MemoryPlanned:
    """The plan alone (the composing screen: at random init, nothing read from the hub or a weights file)."""
    return plan_parts(profile, random_init)[1]


def measured_peaks(parts: RunParts, profile: RunProfile, obj: Objective, size: int, steps: int = 2) -> list[int]:
    """For each phase: the most memory `steps` plain training steps at `size` examples hold at once, model
    included: a copy of the model, the copy of its weights drift is measured from (on the CPU, as a run keeps),
    an optimizer over the phase's groups, and the batch, all allocated in the measurement's sight."""
    from tuitune.engine.train.memory_measure import rng_kept, sample_batch

    x, y = sample_batch(parts.bundle.train, size, parts.train_loader.collate_fn)
    # CUDA: each phase runs twice and the second counts; cuDNN's autotuning (`cudnn.benchmark`) tries its
    # algorithms, with workspaces of their own, on the first calls of each shape only
    runs = 2 if parts.device.type == "cuda" else 1
    with rng_kept(parts.device):
        return [[_peak(parts, profile, obj, groups, x, y, steps) for _ in range(runs)][-1] for groups in parts.phases]


def _peak(parts: RunParts, profile: RunProfile, obj: Objective, groups: Any, x: Any, y: Any, steps: int) -> int:
    import torch

    from tuitune.engine.data.batches import to_device
    from tuitune.engine.train import strategy

    cfg = profile.train
    with _allocations(parts.device) as peak:
        model = copy.deepcopy(parts.model)
        drift = [p.detach().clone() for p in model.parameters()] if parts.device.type == "cpu" else []
        strategy.set_trainable(model, parts.groups, groups)
        strategy.train_mode(model, profile.strategy)
        pgroups = strategy.param_groups(
            model, parts.groups, groups, base_lr=cfg.lr, lr_decay=profile.strategy.lr_decay, weight_decay=0.0
        )
        opt = strategy.build_optimizer(
            pgroups, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
        )
        xb, yb = to_device(x, parts.device, parts.channels_last), y.to(parts.device)
        xb = {k: v.clone() for k, v in xb.items()} if isinstance(xb, dict) else xb.clone()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with parts.autocast():
                out, aux = obj.forward(model, xb)
                loss = obj.loss(out, yb.clone(), xb, aux)
            loss.backward()
            opt.step()
            del out, aux, loss
        del model, drift, opt, xb
    if parts.device.type == "cuda":
        torch.cuda.empty_cache()
    return peak[0]


@contextmanager
def _allocations(device: torch.device) -> Iterator[list[int]]:
    """The peak of the bytes allocated inside the block, above what was allocated before it (one number in the
    list yielded, filled at the end): the CUDA allocator's peak, or on the CPU the running sum of the profiler's
    memory events (allocations positive, frees negative; a free of a block older than the block is not seen)."""
    import torch

    out = [0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out[0] = torch.cuda.max_memory_allocated(device) - base
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    out[0] = peak
