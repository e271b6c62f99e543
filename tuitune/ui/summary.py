"""The run-end summary: best / final / test metrics, per-class accuracy, per-phase table, stop reason, checkpoints."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tuitune.engine.events import RunFinished
from tuitune.ui.state import fmt_duration, fmt_metric

NOT_METRICS = ("epoch", "phase", "step", "global_step")
TITLES = {"finished": "✔ Run finished", "stopped_early": "✔ Stopped early", "interrupted": "✖ Interrupted"}


def _metrics_line(label: str, metrics: dict[str, Any] | None) -> Text:
    line = Text.assemble((f"{label:<7}", "bold"))
    if not metrics:
        line.append("-", "dim")
        return line
    parts = [f"{k} {fmt_metric(k, v)}" for k, v in metrics.items() if k not in NOT_METRICS]
    line.append("  ".join(parts))
    if "epoch" in metrics:
        line.append(f"  (epoch {metrics['epoch']})", "dim")
    return line


def _best_line(best: dict[str, Any]) -> Text:
    if not best or "metric" not in best:
        return _metrics_line("best", best)
    metric = str(best["metric"])
    if best.get("value") is None:
        return Text.assemble(("best   ", "bold"), (f"{metric}: no epoch completed", "dim"))
    text = Text.assemble(("best   ", "bold"), f"{metric} {fmt_metric(metric, best.get('value'))}")
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


def phase_table(phases: tuple[dict[str, Any], ...]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
    for name, justify in (("phase", "right"), ("groups", "left"), ("epochs", "right"), ("best val acc", "right"),
                          ("time", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in phases:
        groups = ", ".join(p.get("groups", ())) or "-"
        acc = p.get("best_val_acc")
        table.add_row(str(int(p.get("index", 0)) + 1), groups, str(p.get("epochs", "-")),
                      "-" if acc is None else f"{acc:.2%}", fmt_duration(p.get("time_s")))
    return table


def summary_renderable(e: RunFinished) -> RenderableType:
    header = Text.assemble((TITLES.get(e.status, e.status), "bold"), "  ", (e.reason, "italic"))
    facts = Text(f"{e.epochs} epochs · {e.global_step} steps · {e.samples_per_s:,.0f} samples/s · "
                 f"{fmt_duration(e.wall_s)}", "dim")
    checkpoints = Text.assemble(("checkpoints", "bold"))
    for kind, path in e.checkpoints.items():
        checkpoints.append(f"\n  {kind:<6} ", "dim")
        checkpoints.append(path)
    if not e.checkpoints:
        checkpoints.append("  -", "dim")
    return Group(
        header, facts, Text(),
        _best_line(e.best), _metrics_line("final", e.final), _metrics_line("test", e.test), Text(),
        checkpoints, Text(), phase_table(e.phases), Text(),
        Text("per-class accuracy", "bold"), per_class_table(e.per_class_acc),
    )


class SummaryScreen(Screen[None]):
    DEFAULT_CSS = """
    SummaryScreen VerticalScroll { padding: 1 2; }
    """
    BINDINGS = [
        Binding("escape,d", "dashboard", "Dashboard"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, event: RunFinished) -> None:
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(summary_renderable(self.event), id="summary")
        yield Footer()

    def action_dashboard(self) -> None:
        self.dismiss(None)
