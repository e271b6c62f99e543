"""Dashboard widgets. Each one renders a `DashboardState`; none of them knows where the state came from."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import JustifyMethod
from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey
from textual_plotext import PlotextPlot

from tuitune.engine.events import LayerInfo, SetupProgressed
from tuitune.engine.record.progress import progress_text
from tuitune.fmt import (
    METRIC_TITLES,
    fmt_count,
    fmt_duration,
    fmt_rate,
    fmt_sci,
    fmt_value,
    is_percent,
    score_label,
)
from tuitune.ui.downsample import Point
from tuitune.ui.keys import COMMAND_LABELS
from tuitune.ui.plotcanvas import render_figure
from tuitune.ui.plotdata import Series, eta_s, plot_series, smooth, x_range
from tuitune.ui.state import DashboardState, LogLine
from tuitune.ui.step_bar import step_line

STATUS_STYLES = {
    "starting": ("… STARTING", "bold black on #a0a0a0"),
    "running": ("▶ RUNNING", "bold black on #4ec96f"),
    "paused": ("‖ PAUSED", "bold black on #e5c07b"),
    "stopping": ("■ STOPPING", "bold black on #e0a050"),
    "finished": ("✔ FINISHED", "bold black on #61afef"),
    "stopped_early": ("✔ STOPPED EARLY", "bold black on #61afef"),
    "interrupted": ("✖ INTERRUPTED", "bold black on #e0a050"),
    "preempted": ("✖ PREEMPTED", "bold black on #e0a050"),
    "failed": ("✖ FAILED", "bold white on #c0392b"),
}
TRAIN_COLOR = (80, 190, 255)
VAL_COLOR = (255, 160, 60)
SERIES_COLORS = {
    "train": TRAIN_COLOR,
    "task": TRAIN_COLOR,
    "val": VAL_COLOR,
    "distill": (90, 220, 200),
    "ema": (120, 220, 120),
    "source": (235, 95, 95),
}
CACHE_BADGE = ("cache", "bold black on #56b6c2")
RAW_COLOR = (85, 95, 115)
PHASE_COLOR = (230, 200, 80)
COMMAND_COLOR = (200, 110, 220)
LR_COLOR = (120, 220, 120)  # as the LR finder's suggestion line


class RenderMeter:
    """CPU seconds (`time.thread_time`, the UI thread's) spent rendering the metered widgets: the frames a
    redraw costs, which happen after the code that asked for them. The dashboard budgets its redraws by it."""

    cpu = 0.0


class Metered:
    """Mixin for a widget whose rendering counts towards `RenderMeter`."""

    def render_lines(self, crop: Region) -> list[Strip]:
        start = time.thread_time()
        try:
            return super().render_lines(crop)  # type: ignore[misc]  # a mixin: super() is the Widget it is mixed into
        finally:
            RenderMeter.cpu += time.thread_time() - start


class StatusBar(Metered, Static):
    """Two lines: run, device, state, phase, epoch, step; then speed, elapsed, ETA, GPU memory, pending commands; a
    third once the metrics say where a step's time goes (`step_bar`)."""

    DEFAULT_CSS = """
    StatusBar { height: 2; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    StatusBar.-steps { height: 3; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._shown: Text | None = None

    def show(self, state: DashboardState) -> None:
        """Update only when the text (or its styles) changed; the bar's size changes only with its third line."""
        text = status_text(state)
        if text != self._shown:
            self._shown = text
            self.set_class(text.plain.count("\n") == 2, "-steps")
            self.update(text, layout=False)


def status_text(state: DashboardState) -> Text:
    label, style = STATUS_STYLES.get(state.status, (state.status.upper(), "bold"))
    top = Text.assemble((f" {label} ", style), " ")
    if state.cache_active:
        top.append_text(Text.assemble((f" {CACHE_BADGE[0]} ", CACHE_BADGE[1]), " "))
    top.append(state.run_name or ("preparing the run…" if state.setup else "waiting for the engine…"), "bold")
    if state.device:
        top.append(f"  {state.device}", "dim")
    if state.world_size > 1:
        top.append(f"  × {state.world_size} ranks", "bold")
    if state.trust_remote_code:
        top.append("  ⚠ trust_remote_code", "bold red")
    if state.num_phases:
        top.append(f"  phase {state.phase + 1}/{state.num_phases}")
    if state.epochs:
        top.append(f"  epoch {min(max(state.epoch, 1), state.epochs)}/{state.epochs}")
    if state.steps_per_epoch:
        top.append(f"  step {state.step}/{state.steps_per_epoch}")
    if state.setup is not None:
        return Text("\n").join([top, setup_text(state.setup)])
    bottom = Text(f"{fmt_rate(state.samples_per_s)} samples/s  elapsed {fmt_duration(state.elapsed_s)}", "dim")
    if state.live:
        bottom.append(f"  ETA {fmt_duration(eta_s(state))}", "dim")
    if state.best_value is not None:  # the checkpoint metric's: what `best.safetensors` holds
        key = state.best_key
        bottom.append(
            f"  best {score_label(key, state.metric)} {fmt_value(key, state.best_value, state.metric, 1)}", "dim"
        )
    f1 = [v for _, v in state.epoch_extra.get("val_macro_f1", ())]
    if f1:  # imbalanced classes: the fair score beside accuracy
        bottom.append(f"  macro-F1 {fmt_value('val_macro_f1', max(f1), digits=1)}", "dim")
    if state.gpu_mem_gb is not None:
        peak = f" (peak {state.gpu_peak_gb:.2f})" if state.gpu_peak_gb is not None else ""
        bottom.append(f"  GPU {state.gpu_mem_gb:.2f} GB{peak}", "bold")
    if state.gpu_max_gb is not None:
        bottom.append(f"  max/rank {state.gpu_max_gb:.2f} GB", "bold")
    for command in state.pending:
        bottom.append(f"  ⧗ {COMMAND_LABELS.get(command, command)}…", "yellow")
    lines = [top, bottom]
    # where a step's time goes, once the metrics say
    steps = step_line(state.step_split, state.system, state.loader_workers)
    if steps is not None:
        lines.append(steps)
    return Text("\n").join(lines)  # (the CSS cuts a long line: it never pushes the next one out)


def setup_text(e: SetupProgressed, width: int = 20) -> Text:
    """`⇣ download model.safetensors ██████░░░░ 12.3/45.6 MB  27%  1.2 MB/s`: a setup step's progress line."""
    icon = {"download": "⇣", "tokenize": "¶", "scan": "⌕", "decode": "▦", "cache": "▤"}.get(e.task, "…")
    line = Text(f"{icon} {e.task} {e.detail} ", "bold")
    if e.total:
        filled = round(width * min(max(e.done / e.total, 0.0), 1.0))
        line.append("█" * filled, "#4ec96f")
        line.append("░" * (width - filled) + " ", "dim")
    body = progress_text(e).removeprefix(f"{e.task} {e.detail}".strip()).strip()
    line.append(body)
    return line


def log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Ticks for log10-transformed data: 1-2-5 steps within [10**low, 10**high], labelled with the real values."""
    ticks = [math.log10(m * 10.0**k) for k in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if low - 1e-9 <= t <= high + 1e-9]
    if len(inside) < 2:
        inside = [low, high] if high > low else [low]
    return inside, [f"{10**t:.3g}" for t in inside]


def thin(n: int, most: int) -> list[int]:
    """At most about `most` evenly spaced indices of `n` points, always keeping the last one."""
    step = max(1, -(-n // max(most, 1)))
    keep = list(range(0, n, step))
    if keep and keep[-1] != n - 1:
        keep.append(n - 1)
    return keep


PERCENT_TICKS = ([0, 0.25, 0.5, 0.75, 1], ["0%", "25%", "50%", "75%", "100%"])
FEW_PERCENT_TICKS = ([0, 0.5, 1], ["0%", "50%", "100%"])


class MetricPlot(Metered, PlotextPlot):
    """The loss or the score plot: train (smoothed), val and any extra series, with a vertical line at each phase
    change or command. The score plot is titled and scaled by the run's metric (percent, or RMSE as is)."""

    def __init__(self, metric: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.metric = metric  # "loss" or "acc" (the task's score, whatever it is)
        self.x_span: tuple[float, float] | None = None  # the x axis last drawn
        self.percent = False  # the score plot of a percent metric: 0-100% ticks, set when drawn at its size

    def title(self, state: DashboardState, log_scale: bool) -> str:
        if self.metric == "loss":
            return "loss (log)" if log_scale else "loss"
        return METRIC_TITLES.get(state.metric, state.metric)

    def show(self, state: DashboardState, log_scale: bool = False, whole_span: bool = False) -> None:
        """Draw the curves; the x axis follows the run (`x_range`), or spans the whole plan with `whole_span`."""
        plt = self.plt
        plt.clear_figure()
        plt.theme("pro")
        plt.title(self.title(state, log_scale))
        log_y = log_scale and self.metric == "loss"
        low, high = math.inf, -math.inf
        for series in plot_series(state, self.metric):
            points = series.points
            if log_y:  # log10 by hand: plotext's own log scale re-applies itself on every re-render
                points = tuple((x, math.log10(y)) for x, y in points if y > 0)
            low, high = min([low, *(p[1] for p in points)]), max([high, *(p[1] for p in points)])
            self._draw(series, points)
        if log_y and low <= high:
            plt.yticks(*log_ticks(low, high))
        self._markers(state, low)
        if state.epochs:
            self.x_span = x_range(state, whole_span)
            plt.xlim(*self.x_span)
        self.percent = self.metric == "acc" and is_percent(state.metric)
        if self.percent:
            plt.ylim(0, 1)
        self.refresh()

    def _markers(self, state: DashboardState, bottom: float) -> None:
        """Commands and LR changes first, phase lines last (a manual unfreeze's confirmation and a phase's LR come
        after its PhaseChanged, at the same x, and the phase line must stay visible); the loss plot names each LR
        chosen at the foot of its line (the legend holds the top left)."""
        for marker in sorted(state.markers, key=lambda m: m.kind == "phase"):
            plt_color = {"phase": PHASE_COLOR, "lr": LR_COLOR}.get(marker.kind, COMMAND_COLOR)
            self.plt.vline(marker.x, plt_color)
            if marker.kind == "lr" and self.metric == "loss" and math.isfinite(bottom):
                self.plt.text(marker.label, marker.x, bottom, color=LR_COLOR, alignment="left")

    def fit(self, width: int, height: int) -> None:
        """The figure at the widget's size, with the ticks that size can show."""
        self._plot.plotsize(width, height)
        self._plot._set_size(width, height)  # (as PlotextPlot.render does: resizing needs both)
        if self.percent:  # five ticks need 9 rows: on fewer, plotext picks among labels sharing a row by hash order
            self.plt.yticks(*(PERCENT_TICKS if height >= 9 else FEW_PERCENT_TICKS))

    def render(self) -> RenderResult:
        """As `PlotextPlot.render`, without the ANSI string plotext builds and Rich parses back (same `Text`)."""
        plot, size = self._plot, self.size
        self.fit(size.width, size.height)
        plot.theme(self._get_plotext_theme_name(self.app.theme))
        return render_figure(plot)

    def _draw(self, series: Series, points: Sequence[Point]) -> None:
        plt = self.plt
        color = SERIES_COLORS.get(series.label, TRAIN_COLOR)
        if series.smoothed:
            if len(points) < 2:  # one metric read so far (epochs shorter than train.log_every x 2): a dot, not nothing
                if points:
                    plt.scatter([points[0][0]], [points[0][1]], marker="braille", color=color, label=series.label)
                return
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            keep = thin(len(xs), 4 * max(self.size.width, 20))  # braille: 2 dots a cell; more is wasted work
            if series.raw:
                plt.plot([xs[i] for i in keep], [ys[i] for i in keep], marker="braille", color=RAW_COLOR)
            smoothed = smooth(ys)
            plt.plot(
                [xs[i] for i in keep], [smoothed[i] for i in keep], marker="braille", color=color, label=series.label
            )
        elif points:
            plt.plot([p[0] for p in points], [p[1] for p in points], marker="braille", color=color, label=series.label)
            plt.scatter([p[0] for p in points], [p[1] for p in points], marker="●", color=color)


STATE_CELLS = {
    True: ("● train", "bold #4ec96f", None),
    False: ("○ frozen", "#6a8fb5", None),
}
# (text, style, justify): formatted first, so an unchanged value costs no redraw
Cell = tuple[str, str, "JustifyMethod | None"]


def layer_cells(layer: LayerInfo) -> tuple[Cell, ...]:
    """One row of the layer table, formatted: group, params, state, LR, grad norm, drift."""
    return (
        (layer.name, "bold" if layer.trainable else "dim", None),
        (
            fmt_count(layer.params)
            if layer.adapters is None  # under LoRA: "adapter params/all params"
            else f"{fmt_count(layer.adapters)}/{fmt_count(layer.params)}",
            "",
            "right",
        ),
        STATE_CELLS[layer.trainable],
        (fmt_sci(layer.lr) if layer.trainable else "-", "", "right"),
        ("-" if layer.grad_norm is None else f"{layer.grad_norm:.2e}", "", "right"),
        ("-" if layer.drift is None else f"{layer.drift:.2%}", "", "right"),
        (layer.bn or "-", "#e5c07b" if layer.bn == "train" else "dim", None),
    )


def shift_cell(value: float | None) -> Cell:
    """A group's domain shift (symmetric KL): green when its data looks like pretraining, red when far off."""
    if value is None:
        return ("-", "dim", "right")
    return (f"{value:.2f}", "green" if value < 0.1 else ("yellow" if value < 1.0 else "red"), "right")


def _text(cell: Cell) -> Text:
    return Text(cell[0], style=cell[1], justify=cell[2])


class LayerTable(Metered, DataTable):
    """One row per layer group, from state only: it flips when the engine says so, never before.

    The same groups in the same order (every update but the first) change in place, cell by cell, and only the
    cells whose text changed; the columns grow as a rebuild would grow them (they never shrink).

    Selection: no group is selected (no cursor shown) until an arrow key is pressed on the table or a row is
    clicked; the first `up` selects the head (the bottom row), the first `down` the top row; `unselect` (the
    dashboard's `esc`) hides the cursor again. `selected` is the group the dashboard's `space`, `+` and `-` act on."""

    DEFAULT_CSS = """
    LayerTable { height: auto; max-height: 100%; }
    """

    COLUMNS = ("group", "params", "state", "LR", "grad", "drift", "BN")

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.show_cursor = False
        self.zebra_stripes = True
        for name in self.COLUMNS:
            self.add_column(name, key=name)
        self._layers: tuple[LayerInfo, ...] = ()
        self._shift: dict[str, float | None] = {}
        self._cells: dict[str, tuple[Cell, ...]] = {}

    def show(self, state: DashboardState) -> None:
        if state.layers is self._layers and state.domain_shift is self._shift:
            return
        self._layers, self._shift = state.layers, state.domain_shift
        with_shift = ColumnKey("shift") in self.columns
        if self._shift and not with_shift:  # the first measurement adds the column
            with_shift = True
            self.add_column("shift", key="shift")
            self._cells = {}
        rows = {
            layer.name: layer_cells(layer) + ((shift_cell(self._shift.get(layer.name)),) if with_shift else ())
            for layer in state.layers
        }
        if tuple(rows) != tuple(self._cells) or len(rows) != len(state.layers):
            self._rebuild(state.layers, rows)
            return
        for name, cells in rows.items():
            for column, cell, was in zip(self.columns, cells, self._cells[name]):
                if cell != was:
                    grow = cell_len(cell[0]) > self.columns[column].content_width
                    self.update_cell(name, column, _text(cell), update_width=grow)
        self._cells = rows

    def _rebuild(self, layers: tuple[LayerInfo, ...], rows: dict[str, tuple[Cell, ...]]) -> None:
        selected = self.selected
        self.clear()
        for layer in layers:
            self.add_row(*(_text(cell) for cell in rows[layer.name]), key=layer.name)
        self._cells = rows
        if selected in rows:  # the same group stays selected
            self.move_cursor(row=list(rows).index(selected), animate=False)
        elif selected is not None:
            self.unselect()

    @property
    def selected(self) -> str | None:
        """The selected group's name; None when no cursor is shown."""
        if not self.show_cursor or not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def unselect(self) -> None:
        self.show_cursor = False

    def _select(self, row: int) -> bool:
        """Show the cursor on `row` if none is shown yet; True when this press did that (and so moved nothing)."""
        if self.show_cursor or not self.row_count:
            return False
        self.move_cursor(row=row, animate=False)
        self.show_cursor = True
        return True

    async def _on_click(self, event: events.Click) -> None:
        """A click on a row selects it (DataTable moves only a cursor already shown)."""
        meta = event.style.meta
        if meta.get("row", -1) >= 0 and not meta.get("out_of_bounds", False):
            self.show_cursor = True
        await super()._on_click(event)

    def action_cursor_up(self) -> None:
        if not self._select(self.row_count - 1):
            super().action_cursor_up()

    def action_cursor_down(self) -> None:
        if not self._select(0):
            super().action_cursor_down()

    def state_of(self, name: str) -> str:
        """The state cell's plain text for group `name` (for tests and accessibility)."""
        return str(self.get_cell(name, "state"))


LOG_STYLES = {
    "info": "",
    "epoch": "dim",
    "phase": "bold #e6c850",
    "command": "#c86edc",
    "checkpoint": "#61afef",
    "warning": "bold #e0a050",
    "error": "bold red",
}
LOG_ICONS = {"info": "·", "epoch": "·", "phase": "◆", "command": "»", "checkpoint": "✚", "warning": "⚠", "error": "✖"}


class EventLog(Metered, Widget):
    """Phase changes, applied commands, checkpoints, warnings: the newest lines that fit, newest last.

    Rendered from state on every refresh (no deferred writes), so a snapshot shows the same lines every time.
    """

    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._lines: tuple[LogLine, ...] = ()

    def show(self, state: DashboardState) -> None:
        if state.log is not self._lines:
            self._lines = state.log
            self.refresh()

    def render(self) -> RenderResult:
        """The newest lines that fit, each wrapped to the width: the latest event is always visible."""
        width, height = max(self.content_region.width, 10), max(self.content_region.height, 1)
        rows: list[Text] = []
        for line in reversed(self._lines):
            style = LOG_STYLES.get(line.kind, "")
            text = Text(f"{LOG_ICONS.get(line.kind, '·')} {line.text}", style)
            rows[:0] = list(text.wrap(self.app.console, width))
            if len(rows) >= height:
                break
        return Text("\n").join(rows[-height:])
