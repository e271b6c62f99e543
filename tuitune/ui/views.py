"""The summary's pictures of the last validation: a confusion-matrix heatmap with the top confusions beside it, and
the worst errors as thumbnails drawn with half-block characters (`▀`: the upper pixel is the foreground colour, the
lower one the background), so a person sees *what* the model got wrong without leaving the terminal. And
`run_label`: one run folder as a list entry (the picker's live runs, the compare screen's run list)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.color import Color
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from tuitune.runs.status import RunInfo

MAX_CLASSES = 12  # more classes: the heatmap shows the ones with the most errors (fits 80 columns)
TOP = 5  # confusions listed beside the heatmap
PER_ROW = 4  # thumbnails per row (4 x 18 columns fit 80)
_DARK, _GREEN, _RED = (32, 32, 32), (46, 160, 67), (218, 54, 51)


def _blend(low: tuple[int, int, int], high: tuple[int, int, int], f: float) -> Color:
    return Color.from_rgb(*(round(a + (b - a) * min(max(f, 0.0), 1.0)) for a, b in zip(low, high)))


def _shown(conf: Sequence[Sequence[int]]) -> list[int]:
    """The classes the heatmap shows: all, or the MAX_CLASSES with the most errors (as true or predicted)."""
    k = len(conf)
    if k <= MAX_CLASSES:
        return list(range(k))
    errors = [sum(conf[i]) - conf[i][i] + sum(conf[r][i] for r in range(k)) - conf[i][i] for i in range(k)]
    return sorted(sorted(range(k), key=lambda i: -errors[i])[:MAX_CLASSES])


def heatmap(conf: Sequence[Sequence[int]], names: Sequence[str]) -> Table:
    """Rows: true class; columns: predicted (numbered, the row labels give the numbers). Each cell's colour is its
    share of the true class: green on the diagonal, red off it, dark when empty."""
    shown = _shown(conf)
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    for _ in shown:
        table.add_column(justify="right", min_width=3, no_wrap=True)
    table.add_row(Text("true\\pred", "dim"), *(Text(str(c), "dim") for c in shown))
    for r in shown:
        total = max(sum(conf[r]), 1)
        cells = []
        for c in shown:
            n = conf[r][c]
            bg = _blend(_DARK, _GREEN if r == c else _RED, n / total if n else 0.0)
            cells.append(Text(f"{n:>3}", Style(color="white" if n else "grey50", bgcolor=bg)))
        table.add_row(Text(f"{r:>2} {names[r][:7]:<7}", "dim"), *cells)
    return table


def top_confusions(conf: Sequence[Sequence[int]], names: Sequence[str], n: int = TOP) -> RenderableType:
    """The largest off-diagonal counts: which true class went to which prediction, and its share of the class."""
    pairs = sorted(
        ((conf[r][c], r, c) for r in range(len(conf)) for c in range(len(conf)) if r != c and conf[r][c]),
        key=lambda t: (-t[0], t[1], t[2]),
    )[:n]
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_row(Text("top confusions", "bold"), Text("n", "dim"), Text("of", "dim"))
    if not pairs:
        table.add_row(Text("none", "dim"), "", "")
    for count, r, c in pairs:
        table.add_row(
            Text(f"{names[r][:8]} → {names[c][:8]}"),
            Text(str(count), "red"),
            Text(f"{count / max(sum(conf[r]), 1):.0%}", "dim"),
        )
    return table


def confusion_view(conf: Sequence[Sequence[int]], names: Sequence[str]) -> RenderableType:
    names = list(names) if len(names) == len(conf) else [str(i) for i in range(len(conf))]
    layout = Table.grid(padding=(0, 2))
    layout.add_column(no_wrap=True)
    layout.add_column(no_wrap=True)
    layout.add_row(heatmap(conf, names), top_confusions(conf, names))
    return layout


def thumbnail(rgb_hex: str, size: int) -> Text:
    """size x size RGB pixels (hex of row-major uint8 triples) as size/2 lines of `▀`: two pixel rows a line."""
    data = bytes.fromhex(rgb_hex)
    text = Text(no_wrap=True)
    for y in range(0, size - 1, 2):
        if y:
            text.append("\n")
        for x in range(size):
            top, bottom = 3 * (y * size + x), 3 * ((y + 1) * size + x)
            text.append(
                "▀",
                Style(color=Color.from_rgb(*data[top : top + 3]), bgcolor=Color.from_rgb(*data[bottom : bottom + 3])),
            )
    return text


def _caption(item: dict[str, Any], width: int) -> Text:
    return Text.assemble(
        ("true ", "dim"),
        (str(item.get("true", "?"))[: width - 5], "green"),
        "\n",
        ("pred ", "dim"),
        (str(item.get("pred", "?"))[: width - 5], "red"),
        "\n",
        (f"loss {item.get('loss', 0):.2f}", "dim"),
    )


def misclassified_view(items: Sequence[dict[str, Any]]) -> RenderableType:
    """The worst errors, PER_ROW to a row, each a thumbnail over its true and predicted labels and its loss."""
    rows = []
    for start in range(0, len(items), PER_ROW):
        chunk = items[start : start + PER_ROW]
        size = max(int(i.get("size", 16)) for i in chunk)
        grid = Table.grid(padding=(0, 2))
        for _ in chunk:
            grid.add_column(width=size, no_wrap=True)
        grid.add_row(*(thumbnail(i["rgb"], int(i.get("size", 16))) for i in chunk))
        grid.add_row(*(_caption(i, size) for i in chunk))
        rows.append(grid)
    return Group(*rows)


def run_label(run: RunInfo) -> Text:
    """One run in a list (the picker's live runs, the run folders `tuitune runs DIR --compare` lists): a live run
    marked, its status and epoch, what it waits for, its best score."""
    label = Text.assemble(
        ("▶ ", "bold cyan") if run.status == "live" else "",
        (run.name, "bold"),
        (f"  {run.status} · epoch {run.epoch}", "dim"),
        (f" · {run.held}" if run.held else "", "bold yellow"),
        (f"  {run.best}" if run.best else "", "dim"),
    )
    label.no_wrap, label.overflow = True, "ellipsis"
    return label
