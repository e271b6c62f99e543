"""A plotext figure's cells straight into a Rich `Text`, without the ANSI round trip.

`PlotextPlot.render` asks plotext for an ANSI string (`matrix.set_canvas`, one string concatenation per cell) and
parses it back (`Text.from_ansi`): two thirds of a plot's render time for nothing. `canvas_text` walks the same
cell matrix and gives the `Text` that round trip gives, span for span: one span per run of cells whose colours
are equal (where plotext emits its codes, then a reset), styled as Rich's decoder styles those codes.
"""

from __future__ import annotations

from typing import Any

from rich.ansi import AnsiDecoder
from rich.style import Style
from rich.text import Text

_STYLES: dict[tuple[Any, Any, Any], Style | None] = {}


def _style(fullground: Any, style: Any, background: Any) -> Style | None:
    """The style Rich decodes from plotext's codes for these colours (after a reset: plotext ends every run so)."""
    key = (fullground, style, background)
    if key not in _STYLES:
        from plotext._utility import colors_to_ansi

        line = AnsiDecoder().decode_line(colors_to_ansi(fullground, style, background) + "x")
        style = line.spans[0].style if line.spans else None  # a Style from the decoder (a span may hold a name)
        _STYLES[key] = Style.parse(style) if isinstance(style, str) else style
    return _STYLES[key]


def _line(markers: list[str], fullground: list[Any], style: list[Any], background: list[Any]) -> Text:
    text = Text()
    start, cols = 0, len(markers)
    for col in range(1, cols + 1):
        if col == cols or (fullground[col], style[col], background[col]) != (
            fullground[start],
            style[start],
            background[start],
        ):
            text.append("".join(markers[start:col]), _style(fullground[start], style[start], background[start]))
            start = col
    return text


def canvas_text(matrix: Any) -> Text:
    """`Text.from_ansi(matrix.set_canvas())` for a built plotext `matrix_class`, rows top to bottom."""
    lines = [
        _line(matrix.marker[row], matrix.fullground[row], matrix.style[row], matrix.background[row])
        for row in matrix.Rows[::-1]
    ]
    return Text("\n", end="\n").join([*lines, Text()])  # every row ends in "\n": Rich decodes one more, empty


def render_figure(figure: Any) -> Text:
    """What `figure.build()` then `Text.from_ansi` give, for a plotext figure already sized and themed."""
    figure._set_sizes()
    figure._build_matrix()
    if figure.monitor.fast_plot:  # plotext keeps the last canvas: nothing to walk
        return Text.from_ansi(figure.monitor.matrix.get_canvas())
    return canvas_text(figure.monitor.matrix)
