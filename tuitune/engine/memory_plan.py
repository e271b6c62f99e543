"""The memory plan: from what was measured on one real batch (`train/memory_measure`) to the peak each phase will need,
by arithmetic alone. Pure Python (no torch), so the plan, the batch that fits and the advice are tested as numbers.

A phase's step holds, besides the resident model (parameters, buffers, an EMA copy) and the batch:
- forward: the activations autograd saves for the backward (measured with saved-tensor hooks, per layer group in
  the order the forward reaches them) and the working memory of the op running (its input and output);
- backward: walking the groups back from the head, each group's activations are freed as its gradients appear, so
  the high point is the largest "activations of the groups not yet reached + gradients of those done"; with
  gradient accumulation the gradients of the previous batches are all there from the start;
- optimizer step: the gradients, the optimizer state (`OPTIMIZER_STATES`: AdamW keeps 2 tensors per parameter, SGD
  with momentum 1, ...) and, for torch's multi-tensor ("foreach") kernels on CUDA, one temporary of that size.
The optimizer state stays from one step to the next, so it is there in every part of the step. Activations and
working memory scale with the batch size (linearly: the measure is per example); nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuitune.engine.events import MemoryPlanned, PhaseMemory

# Optimizer name -> (state tensors per parameter, more with momentum > 0, a full-size temporary in its CUDA foreach
# step), each tensor the size of the parameter. Checked against timm's optimizers, stepped on a probe parameter;
# a name not here is measured the same way (`train.memory_measure.probe_optimizer`). Adafactor's factored state is a
# row and a column per matrix: ~0 per parameter.
OPTIMIZER_STATES: dict[str, tuple[float, float, float]] = {
    "sgd": (0, 1, 0),
    "nesterov": (0, 1, 0),
    "momentum": (0, 1, 0),
    "sgdw": (0, 1, 0),
    "sgdp": (1, 0, 0),
    "lars": (0, 1, 0),
    "adagrad": (1, 0, 0),
    "adadelta": (2, 0, 0),
    "rmsprop": (1, 1, 0),
    "rmsproptf": (1, 1, 0),
    "adam": (2, 0, 1),
    "adamw": (2, 0, 1),
    "adamax": (2, 0, 1),
    "nadam": (2, 0, 1),
    "nadamw": (2, 0, 1),
    "radam": (2, 0, 1),
    "adamp": (2, 0, 1),
    "adabelief": (2, 0, 1),
    "lamb": (2, 0, 1),
    "lion": (1, 0, 0),
    "madgrad": (2, 1, 0),
    "adan": (4, 0, 0),
    "adafactor": (0, 0, 0),
}


@dataclass(frozen=True)
class PhaseParts:
    """What one phase was measured to need at `MemoryParts.batch_size`. Per layer group, in the order the forward
    reaches them: the activations saved for the backward, the gradients (the trainable parameters' size) and the
    working memory of its largest op (inputs and outputs, alive together). `forward`: the forward's high point,
    the activations saved so far plus the running op's working memory. `cache`: the feature cache on the device."""

    groups: tuple[str, ...]
    activations: tuple[int, ...]
    grads: tuple[int, ...]
    workspace: tuple[int, ...]
    forward: int
    cache: int = 0
    recompute: tuple[int, ...] = ()  # gradient checkpointing: per group, its largest block's recomputed activations
    order: tuple[str, ...] = ()  # the groups the per-group figures are of, in forward order


@dataclass(frozen=True)
class MemoryParts:
    """Everything measured for a run's phases. `states`: optimizer tensors per trainable parameter (see
    `optimizer_states`); `foreach_temp`: the step's full-size temporary (CUDA); `accumulate`: several batches per
    optimizer step (the gradients are there through the forward)."""

    batch_size: int
    resident: int  # parameters, buffers, an EMA copy of the weights
    batch_bytes: int  # the batch's tensors on the device
    phases: tuple[PhaseParts, ...]
    states: float
    foreach_temp: float = 0.0
    accumulate: bool = False
    checkpointing: bool = False


def optimizer_states(name: str, momentum: float, device: str) -> tuple[float, float] | None:
    """(state tensors per parameter, the step's temporaries) of a known optimizer, None for one to measure."""
    if name not in OPTIMIZER_STATES:
        return None
    base, with_momentum, temp = OPTIMIZER_STATES[name]
    return base + (with_momentum if momentum > 0 else 0), temp if device == "cuda" else 0.0


def phase_peak(parts: MemoryParts, index: int, batch_size: int | None = None) -> PhaseMemory:
    """The plan of phase `index` at `batch_size` (default: the measured one)."""
    p = parts.phases[index]
    scale = (batch_size or parts.batch_size) / parts.batch_size
    acts = [a * scale for a in p.activations]
    grads = sum(p.grads)
    states = parts.states * grads
    held = parts.resident + states + p.cache + parts.batch_bytes * scale
    forward = p.forward * scale + (grads if parts.accumulate else 0)
    step = grads * (1 + parts.foreach_temp)
    working = [(w + r) * scale for w, r in zip(p.workspace, p.recompute or [0] * len(p.workspace))]
    peak = held + max(forward, _backward(acts, p.grads, working, parts.accumulate), step)
    return PhaseMemory(
        groups=p.groups,
        model=parts.resident,
        grads=grads,
        optimizer=round(states),
        activations=round(sum(acts) + parts.batch_bytes * scale),
        cache=p.cache,
        peak=round(peak),
    )


def _backward(acts: list[float], grads: tuple[int, ...], workspace: list[float], accumulate: bool) -> float:
    """The backward's high point: it walks the groups back from the head; while it is in group k, the groups before
    it still hold their activations, the ones after it hold their gradients (with accumulation: all of them, from
    the batches before), and group k holds the larger of the two plus its largest op's working memory (with
    gradient checkpointing, and its largest block's recomputed activations). Groups before the first one that
    keeps anything never run backward."""
    first = next((k for k, (a, g) in enumerate(zip(acts, grads)) if a or g), len(acts))
    live = [
        sum(acts[:k])
        + max(acts[k], grads[k])
        + (sum(grads) - grads[k] if accumulate else sum(grads[k + 1 :]))
        + workspace[k]
        for k in range(first, len(acts))
    ]
    return max([sum(acts) + (sum(grads) if accumulate else 0), *live])


def plan(parts: MemoryParts, batch_size: int | None = None) -> tuple[PhaseMemory, ...]:
    return tuple(phase_peak(parts, i, batch_size) for i in range(len(parts.phases)))


def largest_fitting(fits: Callable[[int], bool], guess: int, cap: int) -> int:
    """The largest batch size in [1, cap] for which `fits` holds (0 if none), assuming that a batch that fits means
    every smaller one does: doubling from `guess` while it fits (halving while it does not), then bisecting. `fits`
    is a plan's arithmetic (CPU) or a real step that may run out of memory (CUDA): it is asked ~2 log2(answer) times."""
    if cap < 1:
        return 0
    lo, hi = 0, cap + 1  # lo fits (or is 0), hi does not (or is past the cap)
    b = max(1, min(guess, cap))
    while fits(b):  # up
        lo = b
        if b == cap:
            return cap
        b = min(2 * b, cap)
    hi = b
    while lo == 0:  # down
        b = hi // 2
        if b < 1:
            return 0
        if fits(b):
            lo = b
        else:
            hi = b
    while hi - lo > 1:  # between
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def batch_that_fits(parts: MemoryParts, budget: int, cap: int) -> int:
    """The largest batch size (up to `cap`) whose every phase fits in `budget` bytes, by the plan; 0 if none."""
    return largest_fitting(lambda b: all(p.peak <= budget for p in plan(parts, b)), parts.batch_size, cap)


# MemoryPlanned.budget_source -> how the advice and the heading say it
BUDGET_CLAUSES = {
    "gpu": "the GPU has {} free",
    "memory_gb": "train.memory_gb allows {}",
    "ram": "the machine has {} available",
}


def budget_clause(source: str, budget: int) -> str:
    return BUDGET_CLAUSES.get(source, source + " {}").format(fmt_bytes(budget))


def fit_advice(
    phases: tuple[PhaseMemory, ...], budget: int, source: str, fitting_batch: int, checkpointing: bool
) -> str:
    """One line for the largest phase that will not fit in `budget` ("" when every phase fits or the budget is
    unknown): what it needs, what there is, and what would make it fit: the batch that fits; gradient
    checkpointing where activations are a fifth of the peak or more (and it is off); a smaller feature cache where
    the phase holds one; fewer trainable groups where no batch fits."""
    over = [(p.peak, i) for i, p in enumerate(phases) if p.peak > budget]
    if budget <= 0 or not over:
        return ""
    need, i = max(over)
    phase = phases[i]
    fixes = [f"batch {fitting_batch} fits" if fitting_batch else "not even batch 1 fits"]
    if not checkpointing and phase.activations >= 0.2 * need:
        fixes.append("set train.gradient_checkpointing")
    if phase.cache:
        fixes.append(f"lower train.cache_memory_gb (the feature cache takes {fmt_bytes(phase.cache)})")
    if not fitting_batch:
        fixes.append("train fewer layer groups")
    return f"phase {i + 1} needs ~{fmt_bytes(need)}, {budget_clause(source, budget)}: {', or '.join(fixes)}"


def fmt_bytes(n: float) -> str:
    """`14.2 GB`, `1.42 GB`, `512 MB`, `6.05 MB`, `48.0 KB`: three significant digits, the unit that fits."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size or unit == "KB":
            v = n / size
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"
    raise AssertionError("unreachable")


def phase_line(index: int, p: PhaseMemory) -> str:
    """`phase 2 (layer4, head): ~1.42 GB at peak (model 51.2 MB, grads 33.6 MB, ...)`: the peak, then the parts,
    which do not add up to it (gradients take the place of activations during the backward)."""
    groups = ", ".join(p.groups) if len(p.groups) <= 3 else f"{p.groups[0]} … {p.groups[-1]}, {len(p.groups)} groups"
    parts = ", ".join(
        f"{name} {fmt_bytes(n)}"
        for name, n in (
            ("model", p.model),
            ("grads", p.grads),
            ("optimizer", p.optimizer),
            ("activations", p.activations),
            ("cache", p.cache),
        )
    )
    return f"phase {index + 1} ({groups}): ~{fmt_bytes(p.peak)} at peak ({parts})"


def planned_lines(event: MemoryPlanned) -> list[str]:
    """The console's and the dashboard log's lines for a plan: a heading, one line per phase, the advice."""
    budget = f"; {budget_clause(event.budget_source, event.budget)}" if event.budget > 0 else ""
    ckpt = ", gradient checkpointing" if event.checkpointing else ""
    head = f"memory plan (batch {event.batch_size}, {event.device}{ckpt}{budget}):"
    lines = [event.note] if event.note else []
    lines += [head, *(f"  {phase_line(i, p)}" for i, p in enumerate(event.phases))]
    return lines + ([event.advice] if event.advice else [])
