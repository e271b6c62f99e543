"""The leaderboard of a sweep, read from its study: plain rows for the headless printer and the dashboard alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuitune.config.loop import metric_name

STATUS = {"RUNNING": "running", "PRUNED": "pruned", "COMPLETE": "done", "FAIL": "failed", "WAITING": "waiting"}


@dataclass(frozen=True)
class TrialRow:
    number: int
    status: str  # running, paused (a recipe's trial between rungs), pruned, done, failed, killed, waiting
    params: dict[str, Any]
    best: float | None  # the trial's best value of the sweep's metric so far
    epochs: int  # epochs reported (each epoch's metric)
    time_s: float
    run_dir: str
    curve: tuple[tuple[int, float], ...] = field(default=())  # (epoch, metric)
    error: str = ""


def rows_from_trials(trials: list[Any], direction: str, now: datetime | None = None) -> list[TrialRow]:
    """Best first (done and pruned by their best value; running ones next; failed last). A trial given back
    (asked past the cap by a worker on another machine: `study.ask`) is not the sweep's and is left out."""
    rows = [_row(t, direction, now or datetime.now()) for t in trials if not t.user_attrs.get("surplus")]
    sign = -1.0 if direction == "maximize" else 1.0
    order = {"done": 0, "pruned": 0, "running": 1, "paused": 1, "waiting": 2, "failed": 3, "killed": 3}
    return sorted(
        rows, key=lambda r: (order[r.status], r.best is None, sign * r.best if r.best is not None else 0.0, r.number)
    )


def _row(t: Any, direction: str, now: datetime) -> TrialRow:
    curve = tuple(sorted((int(k), float(v)) for k, v in t.intermediate_values.items() if math.isfinite(v)))
    values = [v for _, v in curve]
    best = t.value if t.value is not None else ((max if direction == "maximize" else min)(values) if values else None)
    status = STATUS.get(t.state.name, t.state.name.lower())
    if status == "failed" and t.user_attrs.get("retry"):
        status = "killed"
    if status == "running" and t.user_attrs.get("paused"):  # `tuitune recipe`: waiting for its rung's verdict
        status = "paused"
    start, end = t.datetime_start, t.datetime_complete or (now if t.datetime_start else None)
    time_s = (end - start).total_seconds() if start and end else 0.0
    time_s = float(t.user_attrs.get("time_s", time_s))  # a recipe's trial: its training time, not its waits
    return TrialRow(
        t.number,
        status,
        dict(t.params),
        best,
        len(curve),
        time_s,
        t.user_attrs.get("run_dir", ""),
        curve,
        t.user_attrs.get("error", ""),
    )


def _fmt_value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def params_text(params: dict[str, Any]) -> str:
    """`lr=0.00123 kind=full`: the last part of each dotted key, for narrow columns."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt_value(v)}" for k, v in params.items())


def format_board(rows: list[TrialRow], metric: str, width: int | None = None) -> str:
    """The leaderboard as text; lines cut at `width` when given (a log keeps every parameter)."""
    title = f"best {metric}"
    w = max(14, len(title))
    lines = [f"{'trial':>5}  {'status':<8} {title:>{w}}  {'epochs':>6}  {'time':>7}  params"]
    for r in rows:
        best = "-" if r.best is None else f"{r.best:.4f}"
        line = f"{r.number:>5}  {r.status:<8} {best:>{w}}  {r.epochs:>6}  {r.time_s:>6.1f}s  {params_text(r.params)}"
        lines.append(line[:width] if width else line)
    return "\n".join(lines)


def read_board(sweep_dir: Path) -> tuple[list[TrialRow], str, str]:
    """(rows, metric, direction) of the sweep in `sweep_dir`, from its study (journal or `--storage`)."""
    from tuitune.sweep.study import load_study

    study = load_study(sweep_dir)
    metric = str(metric_name(study.user_attrs.get("metric", "value")))
    direction = study.direction.name.lower()
    return rows_from_trials(study.get_trials(deepcopy=False), direction), metric, direction


def sweep_loader(sweep_dir: Path) -> Callable[[], tuple[list, str]]:
    """The sweep screen's loader: (rows best first, metric name) of the sweep in `sweep_dir`.

    The study is loaded once, on the first call that finds it, and kept: its JournalStorage then reads only the
    lines appended since the last call instead of replaying the whole journal each second. The screen
    calls it in a thread worker, so optuna's import and the reads stay off the event loop."""
    study: list = []  # the loaded study, once the journal exists

    def load() -> tuple[list, str]:
        if not study:
            from tuitune.sweep.storage import has_study

            if not has_study(sweep_dir):
                return [], ""
            from tuitune.sweep.study import load_study

            try:
                study.append(load_study(sweep_dir))
            except KeyError:  # a --storage sweep whose study is not created there yet
                return [], ""
        s = study[0]
        rows = rows_from_trials(s.get_trials(deepcopy=False), s.direction.name.lower())
        return rows, str(metric_name(s.user_attrs.get("metric", "value")))

    return load
