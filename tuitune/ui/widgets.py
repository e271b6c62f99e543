"""Dashboard widgets. Each one renders a `DashboardState`; none of them knows where the state came from."""

from __future__ import annotations

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from tuitune.ui.state import (COMMAND_LABELS, DashboardState, LogLine, Point, eta_s, fmt_count, fmt_duration, fmt_sci,
                              smooth)

STATUS_STYLES = {
    "starting": ("… STARTING", "bold black on #a0a0a0"),
    "running": ("▶ RUNNING", "bold black on #4ec96f"),
    "paused": ("‖ PAUSED", "bold black on #e5c07b"),
    "stopping": ("■ STOPPING", "bold black on #e0a050"),
    "finished": ("✔ FINISHED", "bold black on #61afef"),
    "stopped_early": ("✔ STOPPED EARLY", "bold black on #61afef"),
    "interrupted": ("✖ INTERRUPTED", "bold black on #e0a050"),
    "failed": ("✖ FAILED", "bold white on #c0392b"),
}
TRAIN_COLOR = (80, 190, 255)
VAL_COLOR = (255, 160, 60)
RAW_COLOR = (85, 95, 115)
PHASE_COLOR = (230, 200, 80)
COMMAND_COLOR = (200, 110, 220)


class StatusBar(Static):
    """Two lines: run, device, state, phase, epoch, step; then speed, elapsed, ETA, GPU memory, pending commands."""

    DEFAULT_CSS = """
    StatusBar { height: 2; padding: 0 1; background: $panel; }
    """

    def show(self, state: DashboardState) -> None:
        self.update(status_text(state))


def status_text(state: DashboardState) -> Text:
    label, style = STATUS_STYLES.get(state.status, (state.status.upper(), "bold"))
    top = Text.assemble((f" {label} ", style), " ", (state.run_name or "waiting for the engine…", "bold"))
    if state.device:
        top.append(f"  {state.device}", "dim")
    if state.trust_remote_code:
        top.append("  ⚠ trust_remote_code", "bold red")
    if state.num_phases:
        top.append(f"  phase {state.phase + 1}/{state.num_phases}")
    if state.epochs:
        top.append(f"  epoch {min(max(state.epoch, 1), state.epochs)}/{state.epochs}")
    if state.steps_per_epoch:
        top.append(f"  step {state.step}/{state.steps_per_epoch}")
    bottom = Text(f"{state.samples_per_s:,.0f} samples/s  elapsed {fmt_duration(state.elapsed_s)}", "dim")
    if state.live:
        bottom.append(f"  ETA {fmt_duration(eta_s(state))}", "dim")
    if state.best_val_acc is not None:
        bottom.append(f"  best val acc {state.best_val_acc:.1%}", "dim")
    if state.gpu_mem_gb is not None:
        peak = f" (peak {state.gpu_peak_gb:.2f})" if state.gpu_peak_gb is not None else ""
        bottom.append(f"  GPU {state.gpu_mem_gb:.2f} GB{peak}", "bold")
    for command in state.pending:
        bottom.append(f"  ⧗ {COMMAND_LABELS.get(command, command)}…", "yellow")
    return Text("\n").join([top, bottom])


def thin(n: int, most: int) -> list[int]:
    """At most about `most` evenly spaced indices of `n` points, always keeping the last one."""
    step = max(1, -(-n // max(most, 1)))
    keep = list(range(0, n, step))
    if keep and keep[-1] != n - 1:
        keep.append(n - 1)
    return keep


class MetricPlot(PlotextPlot):
    """Train (smoothed) and val curves of one metric, with a vertical line at each phase change or command."""

    def __init__(self, metric: str, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.metric = metric

    def show(self, state: DashboardState, log_scale: bool = False) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.theme("pro")
        plt.title(self.metric + (" (log)" if log_scale and self.metric == "loss" else ""))
        train: tuple[Point, ...] = getattr(state, f"train_{self.metric}")
        val: tuple[Point, ...] = getattr(state, f"val_{self.metric}")
        if log_scale and self.metric == "loss":
            train = tuple(p for p in train if p[1] > 0)
            val = tuple(p for p in val if p[1] > 0)
            plt.yscale("log")
        if len(train) > 1:
            xs, ys = [p[0] for p in train], [p[1] for p in train]
            keep = thin(len(xs), 4 * max(self.size.width, 20))  # braille: 2 dots a cell; more is wasted work
            plt.plot([xs[i] for i in keep], [ys[i] for i in keep], marker="braille", color=RAW_COLOR)
            smoothed = smooth(ys)
            plt.plot([xs[i] for i in keep], [smoothed[i] for i in keep], marker="braille", color=TRAIN_COLOR,
                     label="train")
        if val:
            plt.plot([p[0] for p in val], [p[1] for p in val], marker="braille", color=VAL_COLOR, label="val")
            plt.scatter([p[0] for p in val], [p[1] for p in val], marker="●", color=VAL_COLOR)
        for marker in state.markers:
            plt.vline(marker.x, PHASE_COLOR if marker.kind == "phase" else COMMAND_COLOR)
        if state.epochs:
            plt.xlim(state.start_epoch, max(state.epochs, max((p[0] for p in train), default=0)))
        if self.metric == "acc" and not log_scale:
            plt.ylim(0, 1)
        self.refresh()


STATE_CELLS = {
    True: Text("● train", style="bold #4ec96f"),
    False: Text("○ frozen", style="#6a8fb5"),
}


class LayerTable(DataTable):
    """One row per layer group. Rebuilt from state only: it flips when the engine says so, never before."""

    DEFAULT_CSS = """
    LayerTable { height: auto; max-height: 100%; }
    """

    COLUMNS = ("group", "params", "state", "LR", "grad", "drift")

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = True
        for name in self.COLUMNS:
            self.add_column(name, key=name)
        self._shown: tuple = ()

    def show(self, state: DashboardState) -> None:
        if state.layers == self._shown:
            return
        self._shown = state.layers
        self.clear()
        for layer in state.layers:
            self.add_row(
                Text(layer.name, style="bold" if layer.trainable else "dim"),
                Text(fmt_count(layer.params), justify="right"),
                STATE_CELLS[layer.trainable],
                Text(fmt_sci(layer.lr) if layer.trainable else "-", justify="right"),
                Text("-" if layer.grad_norm is None else f"{layer.grad_norm:.2e}", justify="right"),
                Text("-" if layer.drift is None else f"{layer.drift:.2%}", justify="right"),
                key=layer.name,
            )

    def state_of(self, name: str) -> str:
        """The state cell's plain text for group `name` (for tests and accessibility)."""
        return str(self.get_cell(name, "state"))


LOG_STYLES = {
    "info": "", "epoch": "dim", "phase": "bold #e6c850", "command": "#c86edc", "checkpoint": "#61afef",
    "warning": "bold #e0a050", "error": "bold red",
}
LOG_ICONS = {"info": "·", "epoch": "·", "phase": "◆", "command": "»", "checkpoint": "✚", "warning": "⚠",
             "error": "✖"}


class EventLog(Widget):
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
        if state.log != self._lines:
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
