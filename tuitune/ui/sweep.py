"""The sweep screen: the leaderboard of the trials, their validation curves overlaid, and a trial's dashboard one
key away (`enter`: the selected trial, live through attach, or its record through replay).

It renders only what the loader gives (rows read from the sweep's journal, `tuitune.sweep.board`), polled every
second in a thread worker (the journal's reads stay off the event loop) and redrawn only when the rows changed;
tests give it stored rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, get_current_worker

from tuitune.sweep.board import TrialRow, params_text
from tuitune.ui.curves import OverlayPlot

Loader = Callable[[], "tuple[list[TrialRow], str]"]  # (rows best first, metric name)
COLORS = ("cyan", "green", "orange", "magenta", "yellow", "blue", "red", "white")
STATUS_STYLE = {
    "running": "bold cyan",
    "paused": "cyan",
    "done": "green",
    "pruned": "yellow",
    "failed": "red",
    "killed": "red",
    "waiting": "dim",
}


class CurvesPlot(OverlayPlot):
    """Each trial's metric per epoch, overlaid; the trials' numbers in the legend."""

    def __init__(self) -> None:
        super().__init__(COLORS)

    def show(self, rows: list[TrialRow], metric: str) -> None:
        self.overlay(
            f"{metric} per epoch, by trial" if metric else "no trial has reported yet",
            [
                (row.number, f"#{row.number}", [e for e, _ in row.curve], [v for _, v in row.curve])
                for row in sorted(rows, key=lambda r: r.number)
                if row.curve
            ],
        )
        self.plt.xlabel("epoch")
        self.refresh()


class SweepScreen(Screen[None]):
    BINDINGS = [Binding("enter", "open_trial", "Trial dashboard"), Binding("q", "app.quit", "Quit (sweep goes on)")]
    CSS_PATH = "sweep.tcss"

    def __init__(
        self, load: Loader, title: str, open_trial: Callable[[str], None] | None = None, refresh_s: float = 1.0
    ) -> None:
        super().__init__()
        self.load, self.title_text, self.open_trial, self.refresh_s = load, title, open_trial, refresh_s
        self.rows: list[TrialRow] = []

    def compose(self) -> ComposeResult:
        yield Static(self.title_text, id="title")
        table: DataTable = DataTable(cursor_type="row", zebra_stripes=True)
        table.add_columns("trial", "status", "best", "epochs", "time", "parameters")
        table.border_title = "best first"
        yield table
        yield CurvesPlot()
        yield Footer()

    class RowsLoaded(Message):
        """The loader's answer, from the reload worker's thread to the screen."""

        def __init__(self, rows: list[TrialRow], metric: str) -> None:
            super().__init__()
            self.rows, self.metric = rows, metric

    def on_mount(self) -> None:
        self._shown: tuple[list[TrialRow], str] | None = None
        self._worker: Worker[None] | None = None
        self.reload()
        if self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.reload)

    def reload(self) -> None:
        """Ask the loader in a thread worker; a poll while the last one still reads is skipped."""
        if self._worker is None or self._worker.is_finished:
            self._worker = self.run_worker(self._load, thread=True, group="sweep-reload")

    def _load(self) -> None:
        rows, metric = self.load()
        if not get_current_worker().is_cancelled:
            self.post_message(self.RowsLoaded(rows, metric))

    def on_sweep_screen_rows_loaded(self, message: RowsLoaded) -> None:
        if self._shown == (message.rows, message.metric):
            return  # nothing changed since the last redraw
        self._shown = (message.rows, message.metric)
        self.show(message.rows, message.metric)

    def show(self, rows: list[TrialRow], metric: str) -> None:
        """The table (the cursor kept on the same trial), the title's counts and the curves."""
        table = self.query_one(DataTable)
        selected = self.rows[table.cursor_row].number if self.rows and table.cursor_row < len(self.rows) else None
        self.rows = rows
        table.clear()
        for r in rows:
            best = "-" if r.best is None else f"{r.best:.4f}"
            table.add_row(
                f"#{r.number}",
                f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]",
                best,
                str(r.epochs),
                f"{r.time_s:.0f}s",
                params_text(r.params),
                key=str(r.number),
            )
        if selected is not None and any(r.number == selected for r in rows):
            table.move_cursor(row=[r.number for r in rows].index(selected))
        done = sum(r.status in ("done", "pruned") for r in rows)
        running = sum(r.status == "running" for r in rows)
        self.query_one("#title", Static).update(
            f"{self.title_text} · {len(rows)} trials: {done} ended, {running} running · enter: its dashboard"
        )
        self.query_one(CurvesPlot).show(rows, metric)
        # the header is drawn before the idle pass that widens the columns to the new rows: draw it again after
        self.call_after_refresh(table.refresh)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """`enter` on the table (the table takes the key before the screen's binding)."""
        event.stop()
        self.action_open_trial()

    def action_open_trial(self) -> None:
        """The trial under the cursor (the live one first: running trials sort right after the ended ones)."""
        table = self.query_one(DataTable)
        if not self.rows or self.open_trial is None:
            return
        row = self.rows[min(table.cursor_row, len(self.rows) - 1)]
        if row.run_dir and Path(row.run_dir, "events.jsonl").exists():
            self.open_trial(row.run_dir)
        else:
            self.notify(f"trial #{row.number} has no run record yet")
