"""Runs compared: each run's validation curves, its best metrics and the profile keys that differ between runs.

Read from the run directory alone (`events.jsonl` through `read_history`, `summary.json`, `profile.toml`), so a
finished, stopped, dead or still live run compares the same way, and neither torch nor Textual is imported: the
screen (`tuitune.ui.compare`) and the plain output (`tuitune compare --json`, the text table) share this.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from tuitune.config import read_toml
from tuitune.engine.events import EpochEnded, RunStarted
from tuitune.engine.record.history import read_history
from tuitune.errors import UserError
from tuitune.fmt import fmt_percent, fmt_plain, fmt_score
from tuitune.runs.process import read_json
from tuitune.runs.status import run_status, table_lines

MISSING = "-"  # a key one run's profile does not have


@dataclass(frozen=True)
class EpochPoint:
    epoch: int
    val_loss: float
    val_score: float
    val_macro_f1: float | None = None  # classification runs since macro-F1 was counted (imbalanced classes)


@dataclass(frozen=True)
class RunRecord:
    """One run as the comparison sees it."""

    name: str
    path: str
    status: str
    metric: str  # "acc", "f1", "rmse", ... (RunStarted.metric)
    higher_is_better: bool
    curve: tuple[EpochPoint, ...]  # one point per epoch; a resumed run's repeated epochs keep their last values
    profile: dict[str, Any] = field(default_factory=dict)  # flattened: "train.lr" -> 0.001
    wall_s: float | None = None
    parent: str | None = None  # a branch's parent run (`branch.json`), resolved
    branch_epoch: int | None = None  # the parent's epoch the branch started from
    origin: EpochPoint | None = None  # the parent's point at that epoch, when the parent is compared too

    def best(self) -> EpochPoint | None:
        """The epoch with the best val score (the earliest of equals), by the run's own direction."""
        return self._first_best(lambda p: p.val_score, -1.0 if self.higher_is_better else 1.0)

    def best_f1(self) -> EpochPoint | None:
        """The epoch with the highest val macro-F1 (the earliest of equals); None when the run has none."""
        return self._first_best(lambda p: p.val_macro_f1, -1.0)

    def lowest_loss(self) -> EpochPoint | None:
        return self._first_best(lambda p: p.val_loss, 1.0)

    def _first_best(self, value: Callable[[EpochPoint], float | None], sign: float) -> EpochPoint | None:
        """The earliest epoch with the lowest `sign * value` among its finite values (sign -1: the highest)."""
        finite = [(v, p) for p in self.curve if _finite(v := value(p))]
        return min(finite, key=lambda vp: (sign * vp[0], vp[1].epoch))[1] if finite else None


def _finite(x: float | None) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and math.isfinite(x)


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}`; lists stay values (a list is one setting)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def profile_diff(profiles: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The flattened keys whose values are not the same in every profile, sorted, with each profile's value
    (`MISSING` where a profile lacks the key). Keys equal everywhere are left out: they explain no difference."""
    keys = sorted(set().union(*profiles)) if profiles else []
    rows = []
    for key in keys:
        values = [p.get(key, MISSING) for p in profiles]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows


def _curve(events: list[Any]) -> tuple[RunStarted | None, tuple[EpochPoint, ...], float | None]:
    started, points, elapsed = None, {}, None
    for e in events:
        if isinstance(e, RunStarted):
            started = started or e
        elif isinstance(e, EpochEnded):
            points[e.epoch] = EpochPoint(e.epoch, e.val_loss, e.val_score, e.extra.get("val_macro_f1"))
            elapsed = e.elapsed_s
    return started, tuple(points[k] for k in sorted(points)), elapsed


def load_run(run_dir: Path) -> RunRecord:
    """One run directory read back; an error naming the directory when it holds no run."""
    run_dir = Path(run_dir)
    if not (run_dir / "events.jsonl").exists():
        raise UserError(f"{run_dir}: compare: no events.jsonl here (is this a tuitune run directory?)")
    started, curve, elapsed = _curve(read_history(run_dir))  # the readings condensed: only epochs count here
    profile_path = run_dir / "profile.toml"  # a broken one: the one-line profile error (tomli on Python 3.10)
    profile = read_toml(profile_path) if profile_path.exists() else dict(started.profile) if started else {}
    summary = read_json(run_dir / "summary.json") or {}
    wall = summary.get("wall_s") if isinstance(summary.get("wall_s"), (int, float)) else elapsed
    return RunRecord(
        name=run_dir.name,
        path=str(run_dir),
        status=run_status(run_dir),
        metric=started.metric if started else str(summary.get("metric", "acc")),
        higher_is_better=started.higher_is_better if started else True,
        curve=curve,
        profile=flatten(profile),
        wall_s=wall,
        **_branch_of(run_dir),
    )


def _branch_of(run_dir: Path) -> dict[str, Any]:
    """A branch's parent and branch epoch from its `branch.json` (none for a run that is no branch)."""
    branch = read_json(run_dir / "branch.json") or {}
    parent, epoch = branch.get("parent"), branch.get("epoch")
    if not isinstance(parent, str) or not isinstance(epoch, int):
        return {}
    return {"parent": parent, "branch_epoch": epoch}


def _with_origins(runs: list[RunRecord]) -> list[RunRecord]:
    """Each branch compared with its parent starts its curve at the parent's point at the branch epoch."""
    by_path = {str(Path(r.path).resolve()): r for r in runs}
    out = []
    for r in runs:
        parent = by_path.get(r.parent) if r.parent else None
        origin = next((p for p in parent.curve if p.epoch == r.branch_epoch), None) if parent else None
        out.append(RunRecord(**{**r.__dict__, "origin": origin}) if origin else r)
    return out


def load_runs(run_dirs: list[Path]) -> list[RunRecord]:
    if len(run_dirs) < 2:
        raise UserError("compare: give two or more run directories")
    runs = _with_origins([load_run(d) for d in run_dirs])
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name under different parents: the paths tell them apart
        runs = [RunRecord(**{**r.__dict__, "name": r.path}) for r in runs]
    return runs


def best_row(run: RunRecord) -> dict[str, Any]:
    """A run's best metrics: the best val score and its epoch, the lowest val loss and its epoch, the last
    epoch's val score, epochs run, wall time."""
    best, low, f1 = run.best(), run.lowest_loss(), run.best_f1()
    last = run.curve[-1] if run.curve else None
    return {
        "name": run.name,
        "status": run.status,
        "metric": run.metric,
        "best_val_score": best.val_score if best else None,
        "best_epoch": best.epoch if best else None,
        "best_val_macro_f1": f1.val_macro_f1 if f1 else None,
        "best_f1_epoch": f1.epoch if f1 else None,
        "lowest_val_loss": low.val_loss if low else None,
        "lowest_loss_epoch": low.epoch if low else None,
        "final_val_score": last.val_score if last else None,
        "epochs": last.epoch if last else 0,
        "wall_s": run.wall_s,
    }


def compare_dict(runs: list[RunRecord]) -> dict[str, Any]:
    """What `tuitune compare --json` prints."""
    return {
        "runs": [
            {
                **best_row(r),
                "path": r.path,
                "higher_is_better": r.higher_is_better,
                "curve": [p.__dict__ for p in r.curve],
                "parent": r.parent,
                "branch_epoch": r.branch_epoch,
            }
            for r in runs
        ],
        "differ": {
            key: dict(zip((r.name for r in runs), values)) for key, values in profile_diff([r.profile for r in runs])
        },
    }


def fmt_setting(value: Any) -> str:
    """A profile value as a table cell (`MISSING` where a profile lacks the key)."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def has_f1(runs: list[RunRecord]) -> bool:
    """Whether any run counted macro-F1: then the best metrics get its column (on imbalanced data accuracy
    misleads: always answering "ham" scores 87% on SMS spam)."""
    return any(p.val_macro_f1 is not None for r in runs for p in r.curve)


def best_header(runs: list[RunRecord]) -> tuple[str, ...]:
    """The best-metrics columns (val scores and losses, as the caption above the table says)."""
    f1 = ("best macro-F1",) if has_f1(runs) else ()
    return ("run", "status", "best score", *f1, "lowest loss", "final score", "epochs", "time")


def best_cells(run: RunRecord, f1: bool = False) -> tuple[str, ...]:
    """A run's best metrics as table cells (the screen and the text table show the same); `f1`: with the best
    macro-F1 column."""
    row = best_row(run)
    score = lambda v: fmt_score(run.metric, v, 2)  # noqa: E731
    at = lambda text, e: f"{text} @ {e}" if text != MISSING else MISSING  # noqa: E731
    f1_cell = (at(fmt_percent(row["best_val_macro_f1"], 2), row["best_f1_epoch"]),) if f1 else ()
    return (
        run.name,
        run.status,
        at(score(row["best_val_score"]), row["best_epoch"]),
        *f1_cell,
        at(fmt_plain(row["lowest_val_loss"]), row["lowest_loss_epoch"]),
        score(row["final_val_score"]),
        str(row["epochs"]),
        f"{row['wall_s']:.0f} s" if row["wall_s"] is not None else MISSING,
    )


def metric_caption(runs: list[RunRecord]) -> str:
    """Which score the best metrics are: the runs' one metric, or a note that each run has its own."""
    metrics = sorted({f"{r.metric} ({'higher' if r.higher_is_better else 'lower'} is better)" for r in runs})
    return (
        f"val {metrics[0]}"
        if len(metrics) == 1
        else "each run's own val metric: " + ", ".join(f"{r.name} {r.metric}" for r in runs)
    )


def format_compare(runs: list[RunRecord]) -> str:
    """The plain text comparison: best metrics, the profile keys that differ, and the val curves per epoch."""
    f1 = has_f1(runs)
    lines = [
        f"best metrics: {metric_caption(runs)}",
        *table_lines(best_header(runs), [best_cells(r, f1) for r in runs]),
        "",
    ]
    lines += [f"{r.name}: branch of {r.parent} at epoch {r.branch_epoch}" for r in runs if r.parent]
    lines += [""] if any(r.parent for r in runs) else []
    diff = profile_diff([r.profile for r in runs])
    names = tuple(r.name for r in runs)
    if diff:
        lines += [
            "profile keys that differ",
            *table_lines(("key", *names), [(k, *(fmt_setting(v) for v in vs)) for k, vs in diff]),
            "",
        ]
    else:
        lines += ["profile keys that differ: none (the same profile)", ""]
    epochs = sorted({p.epoch for r in runs for p in r.curve})
    by_run = [(r.metric, {p.epoch: p for p in r.curve}) for r in runs]
    cells = lambda e: tuple(  # noqa: E731
        f"{fmt_plain(c[e].val_loss)} / {fmt_score(m, c[e].val_score, 2)}" if e in c else MISSING for m, c in by_run
    )
    lines += ["val loss / val score per epoch", *table_lines(("epoch", *names), [(str(e), *cells(e)) for e in epochs])]
    return "\n".join(lines)
