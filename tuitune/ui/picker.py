"""The profile picker: a list of profiles and a detail pane. Enter starts the highlighted one.

Imports stay light (no plotext, no torch): this is the first frame of `tuitune`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from tuitune.config import RunProfile
from tuitune.runs.queue_file import Entry, waiting_entries
from tuitune.runs.status import RunInfo, clock, live_runs
from tuitune.ui.profiles import ProfileEntry, detail_rows, discover
from tuitune.ui.views import run_label


def entry_label(entry: ProfileEntry) -> Text:
    mark = ("● ", "green") if entry.ok else ("✖ ", "bold red")
    label = Text.assemble(mark, (entry.name, "bold" if entry.ok else "red"), (f"  {entry.source}", "dim"))
    label.no_wrap, label.overflow = True, "ellipsis"
    return label


def queued_label(entry: Entry) -> Text:
    """A waiting entry of the runs folder's queue: shown under the live runs, not selectable (no run to attach to
    yet; `tuitune queue` lists and removes entries)."""
    label = Text.assemble(("⧗ ", "yellow"), (f"#{entry.number} {entry.name}", "bold"), ("  queued · waiting", "dim"))
    label.no_wrap, label.overflow = True, "ellipsis"
    return label


def run_detail(run: RunInfo) -> Group:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    status = f"live (pid {run.pid})" + (
        f", {run.held}: enter to answer" if run.held.startswith("waiting") else f", {run.held}" if run.held else ""
    )
    for label, value in (
        ("run dir", run.path),
        ("status", status),
        ("phase", run.phase),
        ("epoch", run.epoch),
        ("best", run.best),
        ("started", clock(run.started)),
    ):
        table.add_row(label, Text(value))
    return Group(
        Text(f"{run.name}: a live run", "bold underline"), Text("enter attaches to it", "italic"), Text(), table
    )


def entry_detail(entry: ProfileEntry) -> Group | Text:
    if entry.profile is None:
        return Text.assemble(
            ("✖ broken profile\n\n", "bold red"),
            (entry.error, "red"),
            ("\n\nFix the file and press r to reload.", "dim"),
        )
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("file", Text(str(entry.path), "dim"))
    for label, value in detail_rows(entry.profile):
        table.add_row(label, Text(value, "bold red" if label == "warning" else ""))
    title = Text(entry.profile.name, "bold underline")
    if entry.profile.description:
        title.append_text(Text("\n" + entry.profile.description, "italic"))
    return Group(title, Text(), table)


class PickerScreen(Screen[None]):
    CSS_PATH = "picker.tcss"
    BINDINGS = [
        Binding("enter", "start", "Start", priority=True),
        Binding("e", "compose", "Compose"),
        Binding("r", "reload", "Reload"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(
        self,
        dirs: list[Path],
        overrides: list[str],
        start: Callable[[RunProfile], None],
        *,
        runs_dir: Path | None = None,
        attach: Callable[[Path], None] | None = None,
    ) -> None:
        super().__init__()
        self.dirs = dirs
        self.overrides = overrides
        self.start = start
        self.runs_dir = runs_dir  # live runs under it are listed first, to attach to
        self.attach = attach
        self.entries: list[ProfileEntry] = []
        self.runs: list[RunInfo] = []
        self.queued: list[Entry] = []  # the queue's waiting entries, listed under the live runs

    def compose(self) -> ComposeResult:
        yield Static("tuitune · pick a profile", id="title")
        with Horizontal(id="body"):
            yield OptionList(id="profiles")
            with VerticalScroll(id="detail-scroll"):
                yield Static(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#profiles", OptionList).border_title = "profiles"
        self.query_one("#detail-scroll").border_title = "details"
        self.action_reload()

    def action_reload(self) -> None:
        self.entries = discover(self.dirs, self.overrides)
        runs_dir = self.runs_dir if self.attach is not None else None  # runs are listed only to attach to
        self.runs = live_runs(runs_dir) if runs_dir is not None else []
        self.queued = waiting_entries(runs_dir) if runs_dir is not None else []
        options = self.query_one("#profiles", OptionList)
        options.clear_options()
        options.add_options([Option(run_label(r), id=f"run{i}") for i, r in enumerate(self.runs)])
        options.add_options(
            [Option(queued_label(e), id=f"queued{i}", disabled=True) for i, e in enumerate(self.queued)]
        )
        options.add_options([Option(entry_label(e), id=str(i)) for i, e in enumerate(self.entries)])
        n = self.first_profile
        first = next((n + i for i, e in enumerate(self.entries) if e.ok), n) if self.entries else None
        options.highlighted = first
        self._show_detail(first)
        options.focus()

    @property
    def first_profile(self) -> int:
        """The option index of the first profile: the live runs and the queue's waiting entries come before."""
        return len(self.runs) + len(self.queued)

    @property
    def highlighted(self) -> ProfileEntry | None:
        index = self.query_one("#profiles", OptionList).highlighted
        index = None if index is None else index - self.first_profile
        return self.entries[index] if index is not None and 0 <= index < len(self.entries) else None

    @property
    def highlighted_run(self) -> RunInfo | None:
        index = self.query_one("#profiles", OptionList).highlighted
        return self.runs[index] if index is not None and 0 <= index < len(self.runs) else None

    def _show_detail(self, index: int | None) -> None:
        detail = self.query_one("#detail", Static)
        if index is not None and index < len(self.runs):
            detail.update(run_detail(self.runs[index]))
            return
        index = None if index is None else index - self.first_profile
        if index is None or not 0 <= index < len(self.entries):
            folders = ", ".join(str(d) for d in self.dirs) or "-"
            detail.update(Text(f"No profiles found.\n\nLooked in: {folders}\nAdd --profiles DIR.", "dim"))
            return
        detail.update(entry_detail(self.entries[index]))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_detail(event.option_index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_start()

    def action_start(self) -> None:
        run = self.highlighted_run
        if run is not None and self.attach is not None:
            self.attach(Path(run.path))
            return
        entry = self.highlighted
        if entry is None:
            return
        if entry.profile is None:
            self.notify(entry.error, title="Broken profile", severity="error")
            return
        self.start(entry.profile)

    def action_compose(self) -> None:
        """The highlighted profile into the composing screen (strategy, LR, epochs, batch size; start or save)."""
        entry = self.highlighted
        if entry is None or entry.profile is None:
            self.notify(
                entry.error if entry else "Highlight a profile to compose a run from it.",
                title="Nothing to compose",
                severity="warning",
            )
            return
        from tuitune.ui.compose import ComposeScreen

        self.app.push_screen(ComposeScreen(entry.profile, self.start, entry.source), lambda _: self.action_reload())
