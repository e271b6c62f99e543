"""The memory plan: its arithmetic (pure), the batch that fits, the not-fit advice; measured on a real batch it
stays within 20% of torch.profiler's peak, leaves the run as it found it, drops with gradient checkpointing, and
`data.batch_size = "auto"` picks the largest batch under `train.memory_gb`."""

from __future__ import annotations

import io
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tuitune.config import ProfileError
from tuitune.console import ConsolePrinter
from tuitune.engine.commands import Control
from tuitune.engine.events import MemoryPlanned, PhaseMemory, RunStarted, event_from_json, to_json
from tuitune.engine.memory_plan import (
    MemoryParts,
    PhaseParts,
    batch_that_fits,
    fit_advice,
    largest_fitting,
    optimizer_states,
    phase_peak,
    plan,
)
from tuitune.engine.model.checkpointing import enable_checkpointing
from tuitune.engine.tools.memory import measured_peaks, run_parts
from tuitune.engine.train import strategy
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.memory_measure import measure_run
from tuitune.engine.train.memory_run import plan_run

MB = 1_000_000


def two_groups(accumulate: bool = False, foreach_temp: float = 0.0) -> MemoryParts:
    """A body (60 MB of activations, 10 MB of gradients) under a head (4 MB, 2 MB), measured at batch 8."""
    phase = PhaseParts(
        groups=("body", "head"),
        activations=(60 * MB, 4 * MB),
        grads=(10 * MB, 2 * MB),
        workspace=(8 * MB, 1 * MB),
        forward=50 * MB,
        cache=0,
    )
    return MemoryParts(
        batch_size=8,
        resident=100 * MB,
        batch_bytes=1 * MB,
        phases=(phase,),
        states=2.0,
        foreach_temp=foreach_temp,
        accumulate=accumulate,
    )


# ------------------------------------------------------------------------------------------------- arithmetic


def test_a_phase_peak_is_the_largest_of_forward_backward_and_step() -> None:
    held = 100 * MB + 2 * 12 * MB + 1 * MB  # resident, AdamW's two states of 12 MB of trainable weights, batch
    # backward in the body: the body's activations or gradients (the larger), the head's gradients, working memory
    p = phase_peak(two_groups(), 0)
    assert p.peak == held + 60 * MB + 2 * MB + 8 * MB
    assert (p.model, p.grads, p.optimizer, p.activations) == (100 * MB, 12 * MB, 24 * MB, 65 * MB)
    # twice the batch: activations, working memory and the batch double; weights, gradients and state do not
    assert phase_peak(two_groups(), 0, batch_size=16).peak == held + 1 * MB + 120 * MB + 2 * MB + 16 * MB
    # accumulation: the gradients of earlier batches are there through the forward and the whole backward
    assert phase_peak(two_groups(accumulate=True), 0).peak == held + 64 * MB + 12 * MB
    # a head whose backward needs much working memory: the high point is there, the body's activations still kept
    heavy_head = replace(two_groups().phases[0], workspace=(1 * MB, 30 * MB))
    assert phase_peak(replace(two_groups(), phases=(heavy_head,)), 0).peak == held + 60 * MB + 4 * MB + 30 * MB
    # gradient checkpointing: the body's largest block, recomputed in its backward, comes on top of its working memory
    recomputed = replace(two_groups().phases[0], recompute=(50 * MB, 0))
    assert phase_peak(replace(two_groups(), phases=(recomputed,)), 0).peak == held + 60 * MB + 2 * MB + 58 * MB


def test_the_step_can_be_the_peak_with_a_foreach_temporary() -> None:
    """A phase that keeps almost nothing for the backward peaks at the optimizer step (CUDA's foreach AdamW makes
    one temporary the size of the weights)."""
    tiny = PhaseParts(("body", "head"), (0, 1000), (40 * MB, 2 * MB), (0, 1000), forward=1 * MB)
    parts = MemoryParts(8, 100 * MB, MB, (tiny,), states=2.0, foreach_temp=1.0)
    assert phase_peak(parts, 0).peak == 100 * MB + 84 * MB + MB + 2 * 42 * MB


def test_optimizer_states_per_parameter() -> None:
    assert optimizer_states("adamw", 0.9, "cpu") == (2, 0)
    assert optimizer_states("adamw", 0.9, "cuda") == (2, 1)  # foreach's temporary on CUDA
    assert optimizer_states("sgd", 0.9, "cpu") == (1, 0)
    assert optimizer_states("momentum", 0.0, "cpu") == (0, 0)  # no momentum, no buffer
    assert optimizer_states("rmsprop", 0.9, "cpu") == (2, 0)
    assert optimizer_states("kron", 0.9, "cpu") is None  # measured on a probe parameter instead


@pytest.mark.parametrize("answer", [0, 1, 5, 37, 64, 100])
@pytest.mark.parametrize("guess", [1, 8, 200])
def test_largest_fitting_finds_the_largest_in_few_asks(answer: int, guess: int) -> None:
    asked: list[int] = []

    def fits(b: int) -> bool:
        asked.append(b)
        return b <= answer

    assert largest_fitting(fits, guess, cap=100) == answer
    assert len(asked) <= 2 * 7 + 2 and all(1 <= b <= 100 for b in asked)


def test_the_batch_that_fits_is_under_the_budget_and_the_next_is_not() -> None:
    parts = two_groups()
    budget = 400 * MB
    b = batch_that_fits(parts, budget, cap=1000)
    assert max(p.peak for p in plan(parts, b)) <= budget < max(p.peak for p in plan(parts, b + 1))


def test_the_advice_names_the_phase_what_it_needs_and_what_fits() -> None:
    phases = tuple(PhaseMemory(("head",), 0, 0, 0, int(peak / 2), 0, peak) for peak in (2e9, 9e9, 14.2e9, 12e9))
    advice = fit_advice(phases, int(11.6e9), "gpu", 32, checkpointing=False)
    assert (
        advice == "phase 3 needs ~14.2 GB, the GPU has 11.6 GB free: batch 32 fits, or set train.gradient_checkpointing"
    )
    assert fit_advice(phases, int(15e9), "gpu", 64, checkpointing=False) == ""
    assert fit_advice(phases[:1], int(1e9), "memory_gb", 0, checkpointing=True) == (
        "phase 1 needs ~2.00 GB, train.memory_gb allows 1.00 GB: not even batch 1 fits, or train fewer layer groups"
    )
    # a phase whose peak is its weights and its feature cache: checkpointing would not help, a smaller cache would
    cached = (PhaseMemory(("head",), int(5e6), 0, 0, int(4e5), int(17e6), int(27e6)),)
    assert fit_advice(cached, int(20e6), "ram", 0, checkpointing=False) == (
        "phase 1 needs ~27.0 MB, the machine has 20.0 MB available: not even batch 1 fits, or lower "
        "train.cache_memory_gb (the feature cache takes 17.0 MB), or train fewer layer groups"
    )


def test_the_event_round_trips_and_prints_a_line_per_phase() -> None:
    event = MemoryPlanned(
        phases=(
            PhaseMemory(("head",), 5 * MB, 1000, 2000, 3 * MB, 0, 9 * MB),
            PhaseMemory(("a", "head"), 5 * MB, 1, 2, 3, 4, 12 * MB),
        ),
        batch_size=16,
        device="cpu",
        budget=int(2e9),
        budget_source="memory_gb",
        advice="phase 2 needs more",
    )
    assert event_from_json(to_json(event)) == event
    out = io.StringIO()
    ConsolePrinter(out=out)(event)
    parts = "model 5.00 MB, grads {}, optimizer {}, activations {}, cache 0.00 KB"
    assert out.getvalue().splitlines() == [
        "memory plan (batch 16, cpu; train.memory_gb allows 2.00 GB):",
        "  phase 1 (head): ~9.00 MB at peak (" + parts.format("1.00 KB", "2.00 KB", "3.00 MB") + ")",
        "  phase 2 (a, head): ~12.0 MB at peak (" + parts.format("0.00 KB", "0.00 KB", "0.00 KB") + ")",
        "phase 2 needs more",
    ]


# ---------------------------------------------------------------------------------------------------- measured


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_the_plan_is_within_20_percent_of_the_profilers_peak(checkpointing: bool) -> None:
    """Two phases of the tiny resnet (head, then everything), AdamW, on CPU: each phase's planned peak, as a run
    plans it, against torch.profiler's (profile_memory=True) over two real training steps at the run's batch; with
    gradient checkpointing too (its stages recomputed in the backward)."""
    train = {"feature_cache": False, "gradient_checkpointing": checkpointing}
    profile = tiny_profile(strategy={"kind": "lp_ft"}, train=train)
    parts, obj, cache = run_parts(profile)
    planned = plan_run(parts, profile, obj, cache)[1].phases  # measured on 8 examples, planned for the batch of 16
    real = measured_peaks(parts, profile, obj, 16)
    assert len(planned) == len(real) == 2
    for p, r in zip(planned, real):
        assert 0.8 <= p.peak / r <= 1.2, (p, r)


def test_measuring_leaves_the_model_and_the_generators_as_they_were() -> None:
    """BatchNorm statistics move and dropout draws in a train-mode forward: not in the measured ones."""
    profile = tiny_profile(strategy={"kind": "progressive"}, regularization={"drop_rate": 0.5})
    parts, obj, cache = run_parts(profile)
    strategy.set_trainable(parts.model, parts.groups, parts.phases[0])
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    flags = [p.requires_grad for p in parts.model.parameters()]
    rngs = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    measure_run(parts, profile, obj, cache, 16)
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert [p.requires_grad for p in parts.model.parameters()] == flags
    assert all(p.grad is None for p in parts.model.parameters())
    assert torch.equal(torch.get_rng_state(), rngs[0]) and random.getstate() == rngs[1]
    assert (np.random.get_state()[1] == rngs[2]).all()


def test_the_recorder_counts_what_autograd_saves_but_no_parameter_and_not_the_batch() -> None:
    """Linear -> ReLU -> Linear on a batch that needs no gradient: the first layer saves the batch (for its weight's
    gradient), the ReLU its output, the second layer that output and its own weight (for the input's gradient):
    of these, only the ReLU's output is an activation."""
    from tuitune.engine.model.groups import LayerGroup
    from tuitune.engine.train.saved_tensors import Recorder

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    names = [n for n, _ in model.named_parameters()]
    groups = (LayerGroup("body", tuple(names[:2]), 0), LayerGroup("head", tuple(names[2:]), 0))
    x = torch.randn(4, 64)
    rec = Recorder(model, groups, x)
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
        out = model(x)
    assert rec.by_group(["body", "head"], out) == {"body": 4 * 256 * 4, "head": 0}
    rec.close()
    assert not rec.saved  # let go: the counts stay, the tensors do not


def test_gradient_checkpointing_lowers_the_activations_and_still_trains_the_phase() -> None:
    """timm's resnet checkpoints its stages (layer1..layer4): what they keep for the backward falls to each
    block's input; the stem, not checkpointed, keeps its own."""
    profile = tiny_profile(train={"feature_cache": False}, data={"batch_size": 16})
    parts, obj, cache = run_parts(profile)
    plain = measure_run(parts, profile, obj, cache, 16).phases[0]
    assert enable_checkpointing(parts.model) == ""  # what the parts do with train.gradient_checkpointing = true
    profile = replace(profile, train=replace(profile.train, gradient_checkpointing=True))
    checkpointed = measure_run(parts, profile, obj, cache, 16).phases[0]
    stages = slice(1, 5)
    assert sum(checkpointed.activations[stages]) < 0.3 * sum(plain.activations[stages])
    assert sum(checkpointed.activations) < sum(plain.activations)
    # in the backward each stage's largest block is recomputed: some of what the stage keeps without checkpointing
    assert not any(plain.recompute)
    assert all(0 < r <= a for r, a in zip(checkpointed.recompute[stages], plain.activations[stages]))
    assert checkpointed.recompute[0] == checkpointed.recompute[-1] == 0  # the stem and the head are not checkpointed
    # the top groups train through their checkpointed blocks, the frozen ones below get no gradient
    strategy.set_trainable(parts.model, parts.groups, ["layer4", "head"])
    parts.model.train()
    x = torch.randn(4, 3, 32, 32)
    parts.model(x).sum().backward()
    named = dict(parts.model.named_parameters())
    assert all(named[n].grad is not None for n in parts.groups[-2].param_names)
    assert all(named[n].grad is None for n in parts.groups[1].param_names)


def test_a_model_without_checkpointing_says_so_in_one_line() -> None:
    assert enable_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2))) == (
        "train.gradient_checkpointing: Sequential does not support it; training without"
    )


def test_batch_auto_on_cpu_takes_the_largest_batch_under_memory_gb(tmp_path: Path) -> None:
    events: list = []
    budget_gb = 0.008
    profile = tiny_profile(
        data={"batch_size": "auto", "num_samples": 200, "val_fraction": 0.1},
        train={"memory_gb": budget_gb, "feature_cache": False, "epochs": 1, "max_steps_per_epoch": 2},
    )
    trainer = Trainer(profile, tmp_path, events.append, Control())
    size = trainer.profile.data.batch_size
    assert isinstance(size, int) and 8 < size < 300
    assert trainer.parts.train_loader.batch_size == size and trainer.memory.batch_size == size
    assert trainer.memory.note.startswith(f"data.batch_size = auto: {size} (")
    parts = measure_run(trainer.parts, trainer.profile, trainer.obj, trainer.cache, 8)
    limit = 0.9 * budget_gb * 1e9
    assert max(p.peak for p in plan(parts, size)) <= limit < max(p.peak for p in plan(parts, size + 1))
    trainer.run()
    assert of_type(events, MemoryPlanned) == [trainer.memory]
    assert of_type(events, RunStarted)[0].profile["data"]["batch_size"] == size  # recorded: what a resume uses


def test_batch_size_takes_a_number_or_auto_and_nothing_else() -> None:
    assert tiny_profile(data={"batch_size": "auto"}).data.batch_size == "auto"
    with pytest.raises(ProfileError, match=r"data.batch_size: expected an integer or 'auto', got a string 'big'"):
        tiny_profile(data={"batch_size": "big"})


def test_the_plan_counts_the_feature_cache_the_run_builds(tmp_path: Path) -> None:
    """Head-only on the tiny resnet caches the pooled features of the train and val splits: the plan's cache is
    the bytes the cache then holds; a strategy that trains the stem has no frozen prefix, and no cache."""
    trainer = Trainer(tiny_profile(strategy={"kind": "head_only"}), tmp_path, lambda e: None, Control())
    strategy.train_mode(trainer.parts.model, trainer.profile.strategy)
    changed, detail = trainer.cache.refresh(0, 0, lambda **progress: None)
    assert changed and trainer.cache.active, detail
    stored = sum(t.nbytes + v.nbytes for t, v in trainer.cache.stores.values())
    assert trainer.memory.phases[0].cache == stored > 0
    full = Trainer(tiny_profile(), tmp_path / "full", lambda e: None, Control())
    assert full.memory.phases[0].cache == 0
