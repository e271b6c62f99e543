"""Number formatting, one way everywhere: the dashboard, the summary, `tuitune compare` (screen and text) and the
compression report. Plain Python: no Textual, no torch, no engine.

The task's score travels in every `*_score` field (see `RunStarted.metric`): accuracy or micro-F1 (fractions, shown
as percentages: `fmt_score("acc", 0.91)` is `91.0%`) or RMSE (lower is better, shown as a plain number). `score_label`
and `fmt_value` turn an `*_score` key and its value into what the user should read (`source_acc` is a real accuracy).
"""

from __future__ import annotations

import math
from typing import Any

PERCENT_METRICS = ("acc", "f1", "token_acc")
METRIC_TITLES = {
    "acc": "accuracy",
    "f1": "micro-F1",
    "rmse": "RMSE (lower is better)",
    "token_acc": "next-token accuracy",
}
# EpochEnded.extra keys, in the order the event log shows them, with their short names
EXTRA_NAMES = {
    "val_mae": "mae",
    "val_map": "mAP",
    "ema_val_loss": "ema loss",
    "ema_val_score": "ema {metric}",
    "source_acc": "source acc",
    "train_task_loss": "task loss",
    "train_distill_loss": "distill loss",
    "val_macro_f1": "macro-F1",
    "val_perplexity": "ppl",
    "val_exact_match": "exact match",
}


def is_percent(metric: str) -> bool:
    return metric in PERCENT_METRICS


def _plain(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def fmt_score(metric: str, value: Any, digits: int = 1) -> str:
    """A task score: a percentage for accuracy / F1, a plain number for RMSE; `-` for none."""
    v = _number(value)
    if v is None:
        return "-" if value is None else str(value)
    if math.isnan(v):
        return "nan"
    return f"{v:.{digits}%}" if is_percent(metric) else _plain(v)


def fmt_percent(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage (`0.5` -> `50.0%`): accuracies, nonzero shares."""
    return fmt_score("acc", value, digits)


def fmt_plain(value: Any) -> str:
    """A loss or any other unbounded number: 4 decimals below 100, else grouped (`1,234.5`); `-` for none."""
    return fmt_score("", value)


def score_label(key: str, metric: str) -> str:
    """`val_score` -> `val rmse` for a regression run; `source_acc` stays accuracy (the pretraining task's)."""
    if key == "score" or key.endswith("_score"):
        key = key[: -len("score")] + metric
    return key.replace("_", " ")


def fmt_value(key: str, value: Any, metric: str = "acc", digits: int = 2) -> str:
    """Any metric by its key: scores by the task's metric, source accuracy and mAP as percentages, the rest plain."""
    v = _number(value)
    if v is None:
        return "-" if value is None else str(value)
    if key == "score" or key.endswith("_score"):
        return fmt_score(metric, v, digits)
    if key.endswith(("acc", "map", "f1", "exact_match")):  # source_acc: the pretraining task's accuracy
        return fmt_percent(v, digits)
    return _plain(v)


def extras_text(extra: dict[str, float], metric: str) -> str:
    """The per-epoch extras, compactly: `mae 0.3100 · ema acc 91.0% · source acc 72.3%`."""
    keys = [k for k in EXTRA_NAMES if k in extra] + sorted(k for k in extra if k not in EXTRA_NAMES)
    parts = []
    for key in keys:
        name = EXTRA_NAMES.get(key, key.replace("_", " ")).format(metric=metric)
        parts.append(f"{name} {fmt_value(key, extra[key], metric, digits=1)}")
    return " · ".join(parts)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    total = round(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_rate(value: Any, digits: int = 0, small: float = 10.0) -> str:
    """A throughput: grouped, with `digits` decimals, from `small` up (`1,234` samples/s, `2.5` MB/s); two
    significant digits below (`0.37`, `4.2`), so a slow run (a language model on a CPU) does not read `0`; `-` for
    none."""
    v = _number(value)
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if abs(v) >= small or math.isnan(v) else f"{v:.2g}"


def fmt_sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def fmt_bytes(n: Any) -> str:
    """A size: `44.80 MB`, `41.3 KB`; `-` for none."""
    v = _number(n)
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} MB" if v >= 1e5 else f"{v / 1e3:.1f} KB"


def fmt_ms(value: Any) -> str:
    v = _number(value)
    return "-" if v is None else f"{v:.2f}"


def phase_change_text(event: Any) -> str:
    """What a `PhaseChanged` did, for the event log and the console: the groups it unfroze, or a rollback's groups
    frozen again, and the epoch whose weights came back (`strategy.restore_best_phase`, a rollback)."""
    if event.reason == "rollback":
        text = f"rolled back, froze {', '.join(event.refrozen) or '-'}"
    else:
        text = f"unfroze {', '.join(event.unfrozen) or '-'}"
    if event.restored_epoch is not None:
        text += f"; weights of epoch {event.restored_epoch} restored (the best of the phase before)"
    return text
