"""Runs compared on screen: a list of run directories to tick (space) and compare (enter), and the comparison:
the val loss and val score curves of every run overlaid, their best metrics, and the profile keys that differ.

Everything shown comes from `tuitune.runs.compare` (the run directories' records), the same data the plain
`tuitune compare --json` prints; nothing here trains or imports torch.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, SelectionList, Static

from tuitune.errors import UserError
from tuitune.fmt import METRIC_TITLES, is_percent
from tuitune.runs.compare import (
    RunRecord,
    best_cells,
    best_header,
    fmt_setting,
    has_f1,
    load_runs,
    metric_caption,
    profile_diff,
)
from tuitune.runs.status import list_runs
from tuitune.ui.curves import OverlayPlot
from tuitune.ui.views import run_label

# one colour per run, the same in the plots and in the tables' run column (cycled past six runs)
RUN_COLORS = [(80, 190, 255), (255, 160, 60), (120, 220, 120), (220, 110, 220), (235, 95, 95), (230, 200, 80)]


def run_color(i: int) -> tuple[int, int, int]:
    return RUN_COLORS[i % len(RUN_COLORS)]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class CurvesPlot(OverlayPlot):
    """One validation metric of every run, overlaid, a colour per run (its legend names the run)."""

    def __init__(self, field: str, *, id: str | None = None) -> None:
        super().__init__(RUN_COLORS, id=id)
        self.field = field  # "val_loss" or "val_score"
        self.drawn: list[tuple[str, list[int], list[float]]] = []  # (run, epochs, values) as last drawn

    def show(self, runs: list[RunRecord]) -> None:
        metrics = {r.metric for r in runs}
        metric = metrics.pop() if len(metrics) == 1 else ""
        self.drawn = []
        curves = []
        for i, run in enumerate(runs):
            start = [run.origin] if run.origin is not None and run.curve else []  # a branch: from its parent's point
            points = [(p.epoch, getattr(p, self.field)) for p in (*start, *run.curve)]
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            curves.append((i, "", xs, ys))  # no legend: the title line is the legend
            self.drawn.append((run.name, xs, ys))
        self.overlay(
            "val loss" if self.field == "val_loss" else f"val {METRIC_TITLES.get(metric, 'score')}",
            curves,
            scatter=True,
        )
        plt = self.plt
        epochs = max((p.epoch for r in runs for p in r.curve), default=1)
        plt.xlim(0.8, max(epochs, 1) + 0.2)
        plt.xticks(list(range(1, epochs + 1, max(1, epochs // 8))))
        if self.field == "val_score" and metric and is_percent(metric):
            plt.ylim(0, 1)
            plt.yticks([0, 0.25, 0.5, 0.75, 1], ["0%", "25%", "50%", "75%", "100%"])
        self.refresh()


class CompareScreen(Screen[None]):
    """Two or more runs side by side. `escape` goes back to the list it was opened from (or quits)."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("q", "app.quit", "Quit")]
    CSS_PATH = "compare.tcss"

    def __init__(self, runs: list[RunRecord]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        legend = [
            part
            for i, r in enumerate(self.runs)
            for part in (("  ● ", _hex(run_color(i))), (r.name, f"bold {_hex(run_color(i))}"))
        ]
        yield Static(Text.assemble((f"comparing {len(self.runs)} runs:", "bold"), *legend), id="compare-title")
        with Horizontal(id="compare-plots"):
            yield CurvesPlot("val_loss", id="plot-loss")
            yield CurvesPlot("val_score", id="plot-score")
        yield Static(f"best metrics: {metric_caption(self.runs)}", classes="caption")
        yield DataTable(id="compare-best", cursor_type="none", zebra_stripes=True)
        yield Static("", id="diff-caption", classes="caption")
        yield DataTable(id="compare-diff", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plot-loss", CurvesPlot).show(self.runs)
        self.query_one("#plot-score", CurvesPlot).show(self.runs)
        names = [Text(r.name, style=f"bold {_hex(run_color(i))}") for i, r in enumerate(self.runs)]
        best = self.query_one("#compare-best", DataTable)
        best.add_columns(*best_header(self.runs))
        f1 = has_f1(self.runs)
        for name, run in zip(names, self.runs):
            best.add_row(name, *best_cells(run, f1)[1:])
        diff = profile_diff([r.profile for r in self.runs])
        caption = self.query_one("#diff-caption", Static)
        caption.update(
            f"profile keys that differ: {len(diff)}" if diff else "profile keys that differ: none (the same profile)"
        )
        table = self.query_one("#compare-diff", DataTable)
        table.add_columns("key", *names)
        for key, values in diff:
            table.add_row(key, *(fmt_setting(v) for v in values))
        table.display = bool(diff)

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.exit()


class RunListScreen(Screen[None]):
    """The run directories under a folder: `space` ticks a run, `enter` compares the ticked ones (two or more)."""

    BINDINGS = [
        Binding("enter", "compare", "Compare", priority=True),
        Binding("space", "toggle_run", "Select", show=True),
        Binding("q", "app.quit", "Quit"),
    ]
    CSS_PATH = "compare.tcss"

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.infos = list_runs(folder)

    def compose(self) -> ComposeResult:
        yield Static(
            Text(f"runs in {self.folder}: space selects, enter compares the selected", style="bold"), id="runs-title"
        )
        yield SelectionList[str](*((run_label(r), r.path) for r in self.infos), id="runs-list")
        yield Footer()

    def action_toggle_run(self) -> None:
        self.query_one(SelectionList).action_select()

    def action_compare(self) -> None:
        chosen = self.query_one(SelectionList).selected
        if len(chosen) < 2:
            self.notify("select two or more runs first (space)", severity="warning")
            return
        order = {r.path: i for i, r in enumerate(self.infos)}  # list order, whatever the order of ticking
        try:
            runs = load_runs([Path(p) for p in sorted(chosen, key=order.__getitem__)])
        except UserError as e:
            self.notify(str(e), severity="error")
            return
        self.app.push_screen(CompareScreen(runs))


class CompareApp(App[None]):
    """`tuitune runs DIR --compare` (the list first) or `tuitune compare RUN_DIR RUN_DIR ...` (the comparison)."""

    TITLE = "tuitune compare"

    def __init__(self, *, folder: Path | None = None, runs: list[RunRecord] | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.runs = runs

    def on_mount(self) -> None:
        if self.runs:
            self.push_screen(CompareScreen(self.runs))
        else:
            self.push_screen(RunListScreen(self.folder or Path("runs")))
