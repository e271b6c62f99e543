"""The compression report's rows as data, and their cells as text: the one model that `tuitune compress`'s table
(`compress.format_report`), the summary screen's table and the event log's line all draw from.

`compress.compress_model` writes the report as a dict (`summary.json`, `RunFinished.compression`,
`CompressionReported`): `{"steps": [{"step", "params", "nonzero", ...}], "notes": [...]}`. Read back from a file it
may lack keys or hold odd values: each missing or non-numeric one is None and draws as `-`. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuitune.fmt import fmt_bytes, fmt_ms, fmt_percent

__all__ = ["COLUMNS", "CompressionReport", "CompressionStep", "read_report"]


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


@dataclass(frozen=True)
class CompressionStep:
    """One model measured: the original, pruned, pruned + fine-tuned, int8."""

    step: str
    params: int | None = None
    nonzero: float | None = None  # share of all weights that are not zero
    nonzero_prunable: float | None = None  # ...of the conv / linear weights (what pruning touches)
    file_bytes: float | None = None
    zlib_bytes: float | None = None  # the file compressed: where unstructured zeros show
    val_acc: float | None = None
    latency_ms: float | None = None  # median CPU forward over one val batch

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> CompressionStep:
        params = row.get("params")
        return cls(
            step=str(row.get("step", "?")),
            params=params if isinstance(params, int) and not isinstance(params, bool) else None,
            **{k: _number(row.get(k)) for k in _NUMBERS},
        )

    def cells(self) -> dict[str, str]:
        """Every column's text (`COLUMNS`), as each renderer shows it."""
        return {
            "step": self.step,
            "params": f"{self.params:,}" if self.params is not None else "-",
            "nonzero": fmt_percent(self.nonzero),
            "conv/lin": fmt_percent(self.nonzero_prunable),
            "file": fmt_bytes(self.file_bytes),
            "zlib": fmt_bytes(self.zlib_bytes),
            "val acc": fmt_percent(self.val_acc),
            "ms/batch": fmt_ms(self.latency_ms),
        }


_NUMBERS = ("nonzero", "nonzero_prunable", "file_bytes", "zlib_bytes", "val_acc", "latency_ms")
COLUMNS = ("step", "params", "nonzero", "conv/lin", "file", "zlib", "val acc", "ms/batch")  # left: step only


@dataclass(frozen=True)
class CompressionReport:
    steps: tuple[CompressionStep, ...]
    notes: tuple[str, ...] = ()
    batch_size: int | None = None  # of the batch `ms/batch` was measured on...
    threads: int | None = None  # ...with this many CPU threads

    @property
    def timing_note(self) -> str:
        """What `ms/batch` and `zlib` mean, with the batch and threads they were measured with."""
        batch = self.batch_size if self.batch_size is not None else "?"
        threads = self.threads if self.threads is not None else "?"
        return (
            f"(ms/batch: median CPU forward over one val batch of {batch}, "
            f"{threads} thread(s); zlib: the file compressed, where unstructured zeros show)"
        )


def read_report(report: dict[str, Any] | None) -> CompressionReport:
    """The report as rows; no steps when there is no report (or it is not one)."""
    report = report if isinstance(report, dict) else {}
    raw = [r for r in report.get("steps", ()) or () if isinstance(r, dict)]
    first = raw[0] if raw else {}
    as_int = lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None  # noqa: E731
    return CompressionReport(
        steps=tuple(CompressionStep.from_dict(r) for r in raw),
        notes=tuple(str(n) for n in report.get("notes", ()) or ()),
        batch_size=as_int(first.get("batch_size")),
        threads=as_int(first.get("threads")),
    )


def format_report(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal (its rows and cells: `compress_report`)."""
    data = read_report(report)
    widths = {"step": -22, "params": 10, "nonzero": 8, "conv/lin": 8, "file": 10, "zlib": 10, "val acc": 8}
    widths["ms/batch"] = 9  # negative: left-aligned
    line = lambda cells: " ".join(f"{cells[c]:<{-w}}" if w < 0 else f"{cells[c]:>{w}}" for c, w in widths.items())  # noqa: E731
    head = line({c: c for c in COLUMNS})
    lines = [head, "-" * len(head), *(line(step.cells()) for step in data.steps), data.timing_note]
    return "\n".join(lines + list(data.notes))
