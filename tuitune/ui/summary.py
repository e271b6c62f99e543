"""The run-end summary: best / final / test metrics, per-class precision / recall / F1 (accuracy in older logs),
per-phase table, stop reason, checkpoints, the compression report and the export folder. Scores are named and
formatted by the run's metric (RMSE for regression), which the dashboard passes in from `RunStarted`."""

from __future__ import annotations

from typing import Any

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tuitune.engine.events import RunFinished
from tuitune.engine.tools.compress_report import read_report
from tuitune.fmt import fmt_duration, fmt_rate, fmt_score, fmt_value, score_label
from tuitune.ui.samples import samples_table
from tuitune.ui.views import confusion_view, misclassified_view

NOT_METRICS = ("epoch", "phase", "step", "global_step")
TITLES = {
    "finished": "✔ Run finished",
    "stopped_early": "✔ Stopped early",
    "interrupted": "✖ Interrupted",
    "preempted": "✖ Preempted",
}


def _metrics_line(label: str, metrics: dict[str, Any] | None, metric: str = "acc") -> Text:
    line = Text.assemble((f"{label:<7}", "bold"))
    if not metrics:
        line.append("-", "dim")
        return line
    parts = [
        f"{score_label(k, metric)} {fmt_value(k, v, metric)}"
        for k, v in metrics.items()
        if k not in NOT_METRICS and not isinstance(v, dict)
    ]  # test's per-class accuracy: a table, not a value
    line.append("  ".join(parts))
    if "epoch" in metrics:
        line.append(f"  (epoch {metrics['epoch']})", "dim")
    return line


def _best_line(best: dict[str, Any], metric: str = "acc") -> Text:
    if not best or "metric" not in best:
        return _metrics_line("best", best, metric)
    key = str(best["metric"])
    if best.get("value") is None:
        return Text.assemble(("best   ", "bold"), (f"{score_label(key, metric)}: no epoch completed", "dim"))
    text = Text.assemble(("best   ", "bold"), f"{score_label(key, metric)} {fmt_value(key, best.get('value'), metric)}")
    if best.get("epoch") is not None:
        text.append(f"  (epoch {best['epoch']})", "dim")
    return text


def per_class_table(per_class: dict[str, float], columns: int = 5) -> RenderableType:
    if not per_class:
        return Text("-", "dim")
    table = Table.grid(padding=(0, 1))
    items = list(per_class.items())
    columns = min(columns, len(items))
    rows = (len(items) + columns - 1) // columns
    for c in range(columns):
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True, min_width=6)
        if c < columns - 1:
            table.add_column(width=2)
    for r in range(rows):
        cells: list[RenderableType] = []
        for c in range(columns):
            i = c * rows + r
            name, acc = items[i] if i < len(items) else ("", None)
            style = "" if acc is None else ("red" if acc < 0.5 else ("yellow" if acc < 0.8 else "green"))
            cells += [Text(name[:14], "dim"), Text("" if acc is None else f"{acc:.1%}", style)]
            if c < columns - 1:
                cells.append(Text(""))
        table.add_row(*cells)
    return table


def _add_columns(table: Table, columns: tuple[tuple[str, JustifyMethod], ...], no_wrap: bool) -> None:
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=no_wrap)


def class_report_table(report: dict[str, dict[str, float]], limit: int = 20) -> RenderableType:
    """Per-class precision / recall (= per-class accuracy) / F1 and support, the last val epoch's, worst F1 first
    when there are more than `limit` classes (their mean F1, `val macro f1`, is on the `final` line)."""
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
    _add_columns(
        table,
        (
            ("class", "left"),
            ("precision", "right"),
            ("recall", "right"),
            ("F1", "right"),
            ("support", "right"),
        ),
        no_wrap=True,
    )
    items = list(report.items())
    if len(items) > limit:
        items = sorted(items, key=lambda kv: kv[1].get("f1", 0.0))[:limit]
    for name, r in items:
        f1 = float(r.get("f1", 0.0))
        style = "red" if f1 < 0.5 else ("yellow" if f1 < 0.8 else "green")
        table.add_row(
            Text(name[:20], "dim"),
            f"{r.get('precision', 0.0):.3f}",
            f"{r.get('recall', 0.0):.3f}",
            Text(f"{f1:.3f}", style),
            f"{int(r.get('support', 0))}",
        )
    return table


def phase_table(phases: tuple[dict[str, Any], ...], metric: str = "acc") -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
    _add_columns(
        table,
        (
            ("phase", "right"),
            ("groups", "left"),
            ("epochs", "right"),
            (f"best val {metric}", "right"),
            ("time", "right"),
        ),
        no_wrap=False,
    )
    for p in phases:
        groups = (", ".join(p.get("groups", ())) or "-") + (" (rolled back)" if p.get("rolled_back") else "")
        acc = p.get("best_val_score")
        table.add_row(
            str(int(p.get("index", 0)) + 1),
            groups,
            str(p.get("epochs", "-")),
            fmt_score(metric, acc, 2),
            fmt_duration(p.get("time_s")),
        )
    return table


COMPRESSION_COLUMNS = ("step", "params", "nonzero", "file", "zlib", "val acc", "ms/batch")  # of compress_report.COLUMNS


def compression_table(report: dict[str, Any] | None) -> RenderableType | None:
    """Before / after, one row per step, in the columns `tuitune compress` prints; its notes below, dimmed."""
    data = read_report(report)
    if not data.steps:
        return None
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
    for name in COMPRESSION_COLUMNS:
        table.add_column(name, justify="left" if name == "step" else "right", no_wrap=True)
    for step in data.steps:
        cells = step.cells()
        table.add_row(*(cells[name] for name in COMPRESSION_COLUMNS))
    return Group(table, *(Text(n, "dim") for n in data.notes))


def _paths(e: RunFinished) -> Text:
    text = Text.assemble(("checkpoints", "bold"))
    for kind, path in e.checkpoints.items():
        text.append(f"\n  {kind:<6} ", "dim")
        text.append(path)
    if not e.checkpoints:
        text.append("  -", "dim")
    if e.export_dir:
        text.append_text(Text.assemble(("\nexport", "bold"), "   ", e.export_dir))
    return text


def _validation_views(e: RunFinished) -> list[RenderableType]:
    """The last validation's confusion matrix and worst errors, near the top: what a person looks at first."""
    out: list[RenderableType] = []
    if e.confusion:
        out += [
            Text(),
            Text("confusion matrix (last validation)", "bold"),
            confusion_view(e.confusion, list(e.per_class_acc)),
        ]
    if e.misclassified:
        out += [Text(), Text("worst validation errors", "bold"), misclassified_view(e.misclassified)]
    if e.samples:  # a language model's last samples
        out += [Text(), Text("samples (last evaluation)", "bold"), samples_table(e.samples)]
    return out


def summary_renderable(e: RunFinished, metric: str = "acc") -> RenderableType:
    header = Text.assemble((TITLES.get(e.status, e.status), "bold"), "  ", (e.reason, "italic"))
    facts = Text(
        f"{e.epochs} epochs · {e.global_step} steps · {fmt_rate(e.samples_per_s)} samples/s · {fmt_duration(e.wall_s)}",
        "dim",
    )
    parts: list[RenderableType] = [
        header,
        facts,
        Text(),
        _best_line(e.best, metric),
        _metrics_line("final", e.final, metric),
        _metrics_line("test", e.test, metric),
        *_validation_views(e),
        Text(),
        _paths(e),
        Text(),
        phase_table(e.phases, metric),
    ]
    compression = compression_table(e.compression)
    if compression is not None:
        parts += [Text(), Text("compression", "bold"), compression]
    if e.per_class_report:  # recall is the per-class accuracy: one table says both
        parts += [Text(), Text("per class (last val epoch)", "bold"), class_report_table(e.per_class_report)]
    elif e.per_class_acc:  # older event logs
        parts += [Text(), Text("per-class accuracy", "bold"), per_class_table(e.per_class_acc)]
    return Group(*parts)


class SummaryScreen(Screen[None]):
    CSS_PATH = "summary.tcss"
    BINDINGS = [
        Binding("escape,d", "dashboard", "Dashboard"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, event: RunFinished, metric: str = "acc") -> None:
        super().__init__()
        self.event = event
        self.metric = metric

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(summary_renderable(self.event, self.metric), id="summary")
        yield Footer()

    def action_dashboard(self) -> None:
        self.dismiss(None)
