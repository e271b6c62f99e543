"""What the plots and the status bar derive from the dashboard state: the curves (smoothed, extras included), the
x axis span, the ETA, and the state the plots read (to skip redraws). Pure functions, no Textual."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tuitune.ui.downsample import Point
from tuitune.ui.state import DashboardState, x_at

__all__ = ["Series", "eta_s", "plot_inputs", "plot_series", "smooth", "x_range"]


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0 = raw)."""
    out: list[float] = []
    last = 0.0
    for i, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight**i) if weight > 0 else value)
    return out


@dataclass(frozen=True)
class Series:
    """One curve of a plot. `smoothed`: a per-step series drawn raw (faint, for the main one) and smoothed."""

    label: str
    points: Sequence[Point]  # a `Downsampled` series (or a tuple)
    smoothed: bool = False
    raw: bool = False


def plot_series(state: DashboardState, which: str) -> list[Series]:
    """The curves of the "loss" or the score ("acc") plot, extras included where the engine sent them.

    Distillation splits the train loss into task and distillation terms; `ema_*` is the EMA model's val figure;
    `source_acc` is the pretraining task's accuracy (forgetting shows as it falls).
    """
    te, ee = state.train_extra, state.epoch_extra
    if which == "loss":
        out = [
            Series("task", te["task_loss"], True, True)
            if "task_loss" in te
            else Series("train", state.train_loss, True, True)
        ]
        if "distill_loss" in te:
            out.append(Series("distill", te["distill_loss"], True))
        if "ema_val_loss" in ee:
            out.append(Series("ema", ee["ema_val_loss"]))
        return [*out, Series("val", state.val_loss)]  # val last: drawn on top
    out = [Series("train", state.train_score, True, True)]
    if "ema_val_score" in ee:
        out.append(Series("ema", ee["ema_val_score"]))
    if "source_acc" in ee:
        out.append(Series("source", ee["source_acc"]))
    return [*out, Series("val", state.val_score)]


def plot_inputs(state: DashboardState) -> tuple[object, ...]:
    """Everything the plots read. `reduce` keeps a field's object when it leaves it alone, so a change is an
    identity change: a redraw for events that touch no curve (LayersChanged, checkpoints...) is skipped."""
    return (
        state.train_loss,
        state.train_score,
        state.val_loss,
        state.val_score,
        state.train_extra,
        state.epoch_extra,
        state.markers,
        state.epochs,
        state.start_epoch,
        state.metric,
    )


def x_range(state: DashboardState, whole: bool = False) -> tuple[float, float]:
    """The plots' x axis, in epochs. By default it follows the run: from where this session started to the current
    position plus a margin (a quarter of the way so far, at least one epoch), never past the plan, so 200 planned
    epochs do not squeeze the first few into a sliver. `whole`: the whole planned span. Never empty (plotext divides
    by it): a session that starts at its last epoch (a finished run resumed) shows that last epoch."""
    start, end = float(state.start_epoch), float(state.epochs)
    now = x_at(state, state.global_step)
    if whole or not state.epochs:
        return _nonempty(start, max(end, now))
    ahead = now + max(1.0, 0.25 * (now - start))
    return _nonempty(start, float(min(max(end, now), max(math.ceil(ahead - 1e-9), start + 1))))


def _nonempty(low: float, high: float) -> tuple[float, float]:
    if high > low:
        return low, high
    return (high - 1.0, high) if high >= 1.0 else (low, low + 1.0)


def eta_s(state: DashboardState) -> float | None:
    """Seconds left: the steps still to go at this session's pace, i.e. its steps over its time (after a resume,
    both counted from the resume: `elapsed_s` is the whole run's)."""
    total = state.epochs * state.steps_per_epoch
    done = state.global_step - state.start_step
    took = state.elapsed_s - state.start_elapsed_s
    if not state.live or done <= 0 or total <= 0 or took <= 0:
        return None
    return took / done * max(total - state.global_step, 0)
