"""A language model's samples (`SamplesGenerated`): greedy generations for fixed validation prompts beside their
references, one line each, on the dashboard's samples panel and in the run's summary.

What differs between the prompts is what a person needs to see: a text the prompts all begin with (an instruction
repeated in every row, "Is this message spam? Answer yes or no.") is left out, once, and named in the panel's title
instead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tuitune.ui.state import DashboardState
from tuitune.ui.widgets import Metered

MIN_PREFIX = 12  # a shared start shorter than this is not worth leaving out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def shared_start(prompts: Sequence[str]) -> str:
    """The start every prompt has, cut at a word boundary ("" when shorter than MIN_PREFIX or for one prompt)."""
    if len(prompts) < 2:
        return ""
    texts = [_one_line(p) for p in prompts]
    end = 0
    while end < min(map(len, texts)) and all(t[end] == texts[0][end] for t in texts):
        end += 1
    common = texts[0][:end]
    if len(common) < MIN_PREFIX:
        return ""
    return common[: common.rfind(" ") + 1] if " " in common else ""


def samples_table(samples: Sequence[dict[str, Any]], header: bool = True) -> Table:
    """A mark (match or not), the output, the reference, the prompt (its shared start left out); cut, not wrapped."""
    start = shared_start([s.get("prompt", "") for s in samples])
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1), expand=True, show_header=header)
    table.add_column("", no_wrap=True, width=1)
    table.add_column("output", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("reference", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("prompt" + (" (…)" if start else ""), no_wrap=True, overflow="ellipsis", ratio=5)
    for s in samples:
        match = bool(s.get("match"))
        prompt = _one_line(s.get("prompt", ""))[len(start) :]
        table.add_row(
            Text("✓" if match else "×", "bold green" if match else "bold red"),
            Text(_one_line(s.get("output", "")) or "(nothing)", "green" if match else ""),
            Text(_one_line(s.get("reference", "")), "dim"),
            Text(prompt, "dim"),
        )
    return table


def samples_title(samples: Sequence[dict[str, Any]], where: str) -> str:
    hits = sum(bool(s.get("match")) for s in samples)
    start = shared_start([s.get("prompt", "") for s in samples])
    shared = f" · prompts after “{start.strip()[:40]}”" if start else ""
    return f"samples {where}: {hits}/{len(samples)} match{shared}"


class SamplesPanel(Metered, Static):
    """The latest samples; hidden until a run has told some (a classifier never does). `compact` (a small
    terminal): no header row, so three samples fit the event log's place, which they take."""

    DEFAULT_CSS = """
    SamplesPanel { height: auto; max-height: 6; padding: 0 1; display: none; }
    """

    def __init__(self) -> None:
        super().__init__(id="samples")
        self._shown: tuple[object, bool] | None = None

    def show(self, state: DashboardState, compact: bool = False) -> None:
        event = state.samples
        if (event, compact) == self._shown:
            return
        self._shown = (event, compact)
        self.display = event is not None
        if event is None:
            return
        where = f"at {event.global_step / max(state.steps_per_epoch, 1):.1f}ep" + (
            " (asked)" if event.reason == "asked" else ""
        )
        self.border_title = samples_title(event.samples, where)
        self.update(samples_table(event.samples, header=not compact))
