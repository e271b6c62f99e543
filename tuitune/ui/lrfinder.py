"""The LR finder's answer: loss against learning rate (log x), the suggestion marked; `a` applies it.

Shown on `LRFound`. Applying only puts `ApplyLR` on the engine's queue: the layer table's LRs change when the engine
confirms (`CommandApplied("ApplyLR")` and `LayersChanged`), like every other command.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from tuitune.engine.events import LRFound
from tuitune.ui.fmt import fmt_sci
from tuitune.ui.modals import MODAL_CSS, refresh_below
from tuitune.ui.reducer import lr_found_text

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


class LRCurve(PlotextPlot):
    def draw(self, e: LRFound) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.theme("pro")
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
        decades = list(range(math.floor(min(xs)), math.ceil(max(xs)) + 1))
        plt.xticks(decades, [f"1e{d:+03d}" for d in decades])
        plt.xlim(min(xs), max(xs))
        plt.ylim(*y_range(ys))
        self.refresh()


class LRFinderScreen(ModalScreen["float | None"]):
    """Dismisses with the LR to apply (`a`), or None (`esc`)."""

    # The box takes a fixed share of the screen and the curve what is left (1fr): the answer and the keys below it
    # keep their rows down to 80x24, where a fixed-height curve pushed them past the screen's edge.
    DEFAULT_CSS = MODAL_CSS.format(name="LRFinderScreen", border="$accent") + """
    LRFinderScreen > Vertical { width: 100; height: 90%; max-height: 36; padding: 0 2; }
    LRFinderScreen .title { margin-bottom: 0; }
    LRFinderScreen LRCurve { height: 1fr; min-height: 6; }
    LRFinderScreen #lr-path { text-wrap: nowrap; text-overflow: ellipsis; }
    """
    BINDINGS = [
        Binding("a", "apply", "Apply"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, event: LRFound) -> None:
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        e = self.event
        with Vertical():
            yield Static(f"LR finder · {len(e.lrs)} steps", classes="title")
            yield LRCurve()
            legend = Text.assemble(("│", _rgb(SUGGESTION_COLOR)), " suggested   ", ("│", _rgb(CURRENT_COLOR)),
                                   " current")
            yield Static(Text.assemble(lr_found_text(e), "\n", legend), id="lr-text")
            if e.path:
                yield Static(Text.assemble(("curve  ", "dim"), e.path), id="lr-path")
            yield Static(Text.assemble(("a", "bold"), f" apply {fmt_sci(e.suggestion)}   ", ("esc", "bold"),
                                       " close"), classes="keys")

    def on_mount(self) -> None:
        self.query_one(LRCurve).draw(self.event)

    def on_resize(self) -> None:
        refresh_below(self)

    def action_apply(self) -> None:
        self.dismiss(self.event.suggestion)

    def action_close(self) -> None:
        self.dismiss(None)
