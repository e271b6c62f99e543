"""Curves of several runs overlaid in one plotext figure, a colour per run: the compare screen's (each run's val
loss / val score) and the sweep screen's (each trial's metric). Each screen keeps its own colours (its snapshots)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from textual_plotext import PlotextPlot

Curve = tuple[int, str, Sequence[float], Sequence[float]]  # (colour index, legend label or "", xs, ys)


class OverlayPlot(PlotextPlot):
    """`overlay` draws the figure's curves; the screen's subclass adds its axes and calls `refresh`."""

    def __init__(self, colors: Sequence[Any], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.palette = colors  # cycled: curve i gets palette[i % len] (`colors` is taken: a Widget property)

    def color(self, i: int) -> Any:
        return self.palette[i % len(self.palette)]

    def overlay(self, title: str, curves: Iterable[Curve], scatter: bool = False) -> None:
        """A fresh figure: `title`, then each curve (braille line, `scatter`: its points marked too)."""
        plt = self.plt
        plt.clear_figure()
        plt.theme("pro")
        plt.title(title)
        for i, label, xs, ys in curves:
            legend = {"label": label} if label else {}
            plt.plot(xs, ys, marker="braille", color=self.color(i), **legend)
            if scatter:
                plt.scatter(xs, ys, marker="●", color=self.color(i))
