"""The summary's pictures: half-block thumbnails take their colours from the real pixels; the top confusions."""

from __future__ import annotations

from rich.color import Color
from rich.console import Console

from tuitune.ui.views import confusion_view, thumbnail, top_confusions


def test_a_thumbnail_draws_two_pixel_rows_a_line_in_their_colours() -> None:
    # 4 pixel rows of 2 colours each (red green / blue white / black yellow / cyan magenta), each pixel doubled
    # across to make a 4x4 image
    rows = [
        [(255, 0, 0), (0, 255, 0)],
        [(0, 0, 255), (255, 255, 255)],
        [(0, 0, 0), (255, 255, 0)],
        [(0, 255, 255), (255, 0, 255)],
    ]
    wide = [[px for px in row for _ in range(2)] for row in rows]
    hex_ = bytes(v for row in wide for px in row for v in px).hex()
    text = thumbnail(hex_, 4)
    assert text.plain == "▀▀▀▀\n▀▀▀▀"
    spans = [(text.plain[s.start : s.end], s.style) for s in text.spans]
    cells = [style for char, style in spans if char == "▀"]
    assert len(cells) == 8
    first, second, third = cells[0], cells[2], cells[4]
    assert (first.color, first.bgcolor) == (Color.from_rgb(255, 0, 0), Color.from_rgb(0, 0, 255))
    assert (second.color, second.bgcolor) == (Color.from_rgb(0, 255, 0), Color.from_rgb(255, 255, 255))
    assert (third.color, third.bgcolor) == (Color.from_rgb(0, 0, 0), Color.from_rgb(0, 255, 255))


def _render(renderable, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_top_confusions_list_the_largest_off_diagonal_counts_with_their_share() -> None:
    conf = [[8, 2, 0], [5, 5, 0], [0, 1, 9]]
    lines = _render(top_confusions(conf, ["cat", "dog", "bird"]), 40).splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["dog", "→", "cat", "5", "50%"],
        ["cat", "→", "dog", "2", "20%"],
        ["bird", "→", "dog", "1", "10%"],
    ]


def test_a_ten_class_heatmap_and_its_list_fit_in_76_columns() -> None:
    conf = [[10 if r == c else (3 if c == (r + 1) % 10 else 0) for c in range(10)] for r in range(10)]
    out = _render(confusion_view(conf, [f"class-{i}" for i in range(10)]), 76)
    assert all(len(line.rstrip()) <= 76 for line in out.splitlines())
    assert "class-0 → class-1" in out and len(out.splitlines()) == 11
