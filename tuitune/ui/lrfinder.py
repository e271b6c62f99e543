"""The LR finder's answer: loss against learning rate (log x), the suggestion marked; `a` applies it, `v` / `s`
pick the valley / steepest point, `e` takes a typed value. At a phase start (`strategy.phase_lr = "find"`) a
countdown applies the suggestion if nobody answers.

Shown on an `f` sweep's `LRFound`, and for a phase's sweep when `f` opens it from the dashboard's question bar.
Applying only puts `ApplyLR` on the engine's queue: the layer table's LRs change when the engine confirms
(`CommandApplied("ApplyLR")` and `LayersChanged`), like every other command.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Input, Static
from textual_plotext import PlotextPlot

from tuitune.engine.events import LRFound
from tuitune.fmt import fmt_sci
from tuitune.ui.event_text import lr_found_text
from tuitune.ui.modals import MODAL_CSS_PATH, refresh_below

CURVE_COLOR = (80, 190, 255)
SUGGESTION_COLOR = (120, 220, 120)
CURRENT_COLOR = (160, 160, 160)


def _rgb(color: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*color)


def curve_points(e: LRFound) -> tuple[list[float], list[float]]:
    """(log10 lr, loss) for the points both finite and plottable."""
    xs, ys = [], []
    for lr, loss in zip(e.lrs, e.losses):
        if lr > 0 and math.isfinite(lr) and math.isfinite(loss):
            xs.append(math.log10(lr))
            ys.append(loss)
    return xs, ys


def y_range(ys: list[float]) -> tuple[float, float]:
    """Room for the useful part: the curve's start and its dip. A sweep ends by diverging; that tail is cut."""
    low, first = min(ys), ys[0]
    high = max(ys)
    if first > low:
        high = min(high, first + 1.5 * (first - low))
    pad = (high - low) * 0.05 or 0.1
    return low - pad, high + pad


class LRCurvePlot(PlotextPlot):
    def draw(self, e: LRFound, compact: bool = False) -> None:
        """`compact`: no title or axis label (a short terminal keeps its rows for the curve)."""
        plt = self.plt
        plt.clear_figure()
        plt.theme("pro")
        if not compact:
            plt.title("loss vs learning rate")
            plt.xlabel("learning rate (log)")
        xs, ys = curve_points(e)
        if not xs:
            self.refresh()
            return
        plt.plot(xs, ys, marker="braille", color=CURVE_COLOR, label="loss (smoothed)")
        if e.current_lr > 0:
            plt.vline(math.log10(e.current_lr), CURRENT_COLOR)
        if e.suggestion > 0:
            plt.vline(math.log10(e.suggestion), SUGGESTION_COLOR)
        decades = [float(d) for d in range(math.floor(min(xs)), math.ceil(max(xs)) + 1)]
        plt.xticks(decades, [f"1e{int(d):+03d}" for d in decades])
        plt.xlim(min(xs), max(xs))
        plt.ylim(*y_range(ys))
        self.refresh()


def parse_lr(text: str) -> float | None:
    """A typed learning rate (`3e-4`, `0.001`), or None when it is not a positive finite number."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class LRFinderScreen(ModalScreen["float | None"]):
    """Dismisses with the LR to apply, or None (`esc` after `f`: nothing changes).

    After `f` the person opened it and closes it. At a phase start (`strategy.phase_lr = "find"`, `LRFound.wait_s`
    > 0) the engine waits for the answer: a countdown runs and the suggestion applies itself at zero; `esc` then
    keeps the LR the phase started with. Typing a value pauses the countdown (the engine waits a little longer).
    The countdown moves one second per `TICK_S` wall seconds: tests set it, so no snapshot depends on the clock."""

    TICK_S = 1.0
    AUTO_FOCUS = ""  # the keys are the screen's; the input takes focus only on `e`
    CSS_PATH = MODAL_CSS_PATH  # its box and curve: the end of modals.tcss
    BINDINGS = [
        Binding("a", "apply", "Apply"),
        Binding("v", "pick('valley')", "Valley"),
        Binding("s", "pick('steep')", "Steepest"),
        Binding("e", "edit", "Type an LR"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, event: LRFound, remaining: int | None = None) -> None:
        """`remaining`: the countdown's seconds left (a phase's question counted down on the dashboard already)."""
        super().__init__()
        self.event = event
        self.remaining = math.ceil(event.wait_s) if remaining is None else max(remaining, 1)
        self.counting = self.remaining > 0
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        e = self.event
        with Vertical():
            title = f"LR finder · {len(e.lrs)} steps"
            if e.phase >= 0:
                title = f"LR for phase {e.phase + 1} · finder, {len(e.lrs)} steps"
            yield Static(title, classes="title")
            yield LRCurvePlot()
            legend = Text.assemble(
                ("│", _rgb(SUGGESTION_COLOR)), " suggested   ", ("│", _rgb(CURRENT_COLOR)), " current"
            )
            yield Static(Text.assemble(lr_found_text(e), "\n", legend), id="lr-text")
            if e.path:
                yield Static(Text.assemble(("curve  ", "dim"), e.path), id="lr-path")
            if self.counting:
                yield Static(self._countdown_text(), id="lr-countdown")
            yield Input(placeholder="learning rate, e.g. 3e-4 (enter applies)", id="lr-input")
            yield Static(self._keys_text(), classes="keys")

    def _keys_text(self) -> Text:
        e = self.event
        close = " keep " + fmt_sci(e.current_lr) if e.wait_s > 0 else " close"
        return Text.assemble(
            ("a", "bold"),
            f" apply {fmt_sci(e.suggestion)}  ",
            ("v", "bold"),
            " valley  ",
            ("s", "bold"),
            " steepest  ",
            ("e", "bold"),
            " type one  ",
            ("esc", "bold"),
            close,
        )

    def _countdown_text(self) -> Text:
        if not self.counting:
            return Text("countdown paused: enter applies the typed LR, esc goes back", "italic")
        return Text(f"applies {fmt_sci(self.event.suggestion)} by itself in {self.remaining} s")

    def on_mount(self) -> None:
        self._fit()
        if self.counting:
            self._timer = self.set_interval(self.TICK_S, self._tick)

    def _stop_countdown(self) -> None:
        self.counting = False
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _tick(self) -> None:
        if not self.counting:  # a tick already queued when the countdown stopped
            return
        self.remaining -= 1
        if self.remaining <= 0:
            self._stop_countdown()
            self.dismiss(self.event.suggestion)
            return
        self.query_one("#lr-countdown", Static).update(self._countdown_text())

    def _fit(self) -> None:
        """A short terminal (80x24) drops the CSV path line and the plot's title and axis label, so the curve
        keeps its rows beside the countdown and the keys."""
        compact = self.app.size.height < 32
        self.set_class(compact, "compact")
        self.query_one(LRCurvePlot).draw(self.event, compact)

    def on_resize(self) -> None:
        self._fit()
        refresh_below(self)

    def action_apply(self) -> None:
        self.dismiss(self.event.suggestion)

    def action_pick(self, which: str) -> None:
        lr = self.event.valley if which == "valley" else self.event.steep
        if lr > 0:
            self.dismiss(lr)

    def action_edit(self) -> None:
        """Show the input and stop the countdown: a person typing is answering."""
        box = self.query_one("#lr-input", Input)
        box.add_class("editing")
        box.focus()
        if self.counting:
            self._stop_countdown()
            self.query_one("#lr-countdown", Static).update(self._countdown_text())

    def on_input_submitted(self, message: Input.Submitted) -> None:
        lr = parse_lr(message.value)
        if lr is None:
            self.notify(f"Not a learning rate: {message.value!r} (a positive number, e.g. 3e-4).", severity="error")
            return
        self.dismiss(lr)

    def action_close(self) -> None:
        box = self.query_one("#lr-input", Input)
        if box.has_class("editing"):  # leave the input first
            box.remove_class("editing")
            self.set_focus(None)
            return
        self.dismiss(self.event.current_lr if self.event.wait_s > 0 else None)
