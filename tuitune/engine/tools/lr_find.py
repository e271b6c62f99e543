"""`tuitune lr-find`: build a profile's run parts and phase-0 optimizer exactly as training would, sweep them
(`tuitune.engine.train.lr_sweep`, the same sweep the dashboard's `f` runs), and write the curve and a text plot."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tuitune.engine.train.lr_sweep import LRCurve, curve_to_csv, sweep_run

__all__ = ["find_lr_for_profile", "text_plot"]


def find_lr_for_profile(profile: Any, out_dir: Path, emit: Any = None, **sweep: Any) -> tuple[LRCurve, Path]:
    """`tuitune lr-find`: build the run's parts, phase-0 optimizer and objective exactly as training would, sweep
    the phase-0 trainable groups (`sweep_run`, the dashboard's recipe too), write `lr_find.csv` (and
    `lr_find.json`, the suggestion) into `out_dir`. `emit` gets the setup's progress (download, tokenization)."""
    import json

    from tuitune.engine.train.parts import build_parts
    from tuitune.engine.train.tasks import task_of
    from tuitune.engine.train.trainer_state import TrainerState

    task = task_of(profile)
    parts = build_parts(profile, out_dir, emit, build=task.build)
    objective = task.objective(profile, parts, None)
    if not isinstance(profile.data.batch_size, int):  # "auto": chosen as a run would choose it
        from tuitune.engine.train.feature_cache import FeatureCache
        from tuitune.engine.train.memory_run import plan_run

        profile = plan_run(parts, profile, objective, FeatureCache(parts, profile))[0]
    state = TrainerState(parts, profile, objective.scorer)
    curve = sweep_run(profile, parts, state, objective, **sweep)
    path = curve_to_csv(curve, out_dir / "lr_find.csv")
    (out_dir / "lr_find.json").write_text(
        json.dumps(
            {
                "suggestion": curve.suggestion,
                "method": curve.method,
                "steep": curve.steep,
                "valley": curve.valley,
                "profile_lr": profile.train.lr,
                "steps": len(curve.lrs),
                "stopped_early": curve.stopped_early,
                "phase0_groups": list(parts.phases[0]),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return curve, path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def text_plot(curve: LRCurve, width: int = 72, height: int = 18) -> str:
    """Smoothed loss against log10 LR, the suggestion marked, as plain text (plotext without colours, or a
    character grid when plotext is missing)."""
    pts = [(math.log10(lr), s) for lr, s in zip(curve.lrs, curve.smoothed) if math.isfinite(s)]
    if len(pts) < 2:
        return "(LR finder: too few finite points to plot)"
    mark = math.log10(curve.suggestion) if curve.suggestion else None
    try:
        import plotext as plt
    except ImportError:
        return _ascii_plot(pts, mark, width, height)
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.plot([x for x, _ in pts], [y for _, y in pts], marker="braille")
    if mark is not None:
        plt.vline(mark)
    ticks = list(range(math.floor(pts[0][0]), math.ceil(pts[-1][0]) + 1))
    plt.xticks(ticks, [f"1e{t}" for t in ticks])
    plt.title(
        f"LR finder: smoothed loss vs LR (| = {curve.method} {curve.suggestion:.2g})"
        if mark is not None
        else "LR finder: smoothed loss vs LR"
    )
    out = _ANSI.sub("", plt.build())
    plt.clear_figure()
    return out


def _ascii_plot(pts: list[tuple[float, float]], mark: float | None, width: int, height: int) -> str:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    col = lambda x: round((x - x0) / ((x1 - x0) or 1) * (width - 1))  # noqa: E731
    for x, y in pts:
        grid[height - 1 - round((y - y0) / ((y1 - y0) or 1) * (height - 1))][col(x)] = "*"
    if mark is not None:
        for row in grid:
            row[col(mark)] = "|" if row[col(mark)] == " " else row[col(mark)]
    lines = ["".join(r) for r in grid]
    return "\n".join([f"loss {y1:.3g} (top) .. {y0:.3g} (bottom)", *lines, f"lr 1e{x0:.1f} .. 1e{x1:.1f}"])
