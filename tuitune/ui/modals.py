"""Small screens over the dashboard: quit confirmation, leaving a run process, and the failure report. (The engine's
questions are no dialogs: tuitune/ui/questions.py.)"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from tuitune.engine.events import RunFailed

MODAL_CSS_PATH = "modals.tcss"  # every dialog's look, LRFinderScreen's (lrfinder.py) too


def refresh_below(screen: Screen) -> None:
    """Textual relayouts background screens on resize but keeps their widgets' old renders: repaint them."""
    for below in screen.app.screen_stack[:-1]:
        for widget in below.query("*"):
            widget.refresh()


class YesNoScreen(ModalScreen[bool]):
    """A question answered with y or n (Enter = yes, Escape = no)."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, question: str) -> None:
        super().__init__()
        self.title_text = title
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            yield Static(Text(self.question), id="question")
            yield Static(Text.assemble(("y", "bold"), " yes   ", ("n", "bold"), " no"), classes="keys")

    def on_resize(self) -> None:
        refresh_below(self)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ConfirmQuitScreen(YesNoScreen):
    CSS_PATH = MODAL_CSS_PATH

    def __init__(self) -> None:
        super().__init__("Quit tuitune?", "A run is live. Stop it at the next step and quit? [y/n]")


class LeaveRunScreen(ModalScreen["str | None"]):
    """`q` on a run in its own process: leave it running (detach), stop it at the next step, or stay."""

    CSS_PATH = MODAL_CSS_PATH
    BINDINGS = [
        Binding("d,enter", "answer('detach')", "Detach"),
        Binding("s", "answer('stop')", "Stop the run"),
        Binding("c,escape", "answer(None)", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Leave the run?", classes="title")
            yield Static(
                Text(
                    "The run is live in its own process. Detach and let it go on (tuitune attach comes "
                    "back to it), or stop it at the next step?"
                ),
                id="question",
            )
            yield Static(
                Text.assemble(("d", "bold"), " detach   ", ("s", "bold"), " stop the run   ", ("c", "bold"), " cancel"),
                classes="keys",
            )

    def on_resize(self) -> None:
        refresh_below(self)

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)


FAILURE_TITLES = {
    "oom": "✖ Run failed: out of memory",
    "nonfinite": "✖ Run failed: the loss is not finite",
    "bad_input": "✖ Cannot run: fix the input",
    "error": "✖ Run failed: unexpected error",
}
FAILURE_HINTS = {
    "oom": "Out of memory: resume with a smaller batch size, or unfreeze fewer groups per phase.",
    "nonfinite": "The loss stopped being finite: try a lower lr, grad_clip, or fewer unfrozen groups.",
    "bad_input": "Fix the profile, data, model or checkpoint named above, then start again.",
    "error": "Not a known input problem: the full traceback is in the log above.",
}


def failure_kind(e: RunFailed) -> str:
    """The event's kind; older event logs only have `bad_input`."""
    return e.kind or ("bad_input" if e.bad_input else "")


class ErrorScreen(ModalScreen[None]):
    """The run failed: its one-line cause and where to look. The app stays alive."""

    CSS_PATH = MODAL_CSS_PATH
    BINDINGS = [
        Binding("escape,enter", "close", "Dashboard"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, event: RunFailed) -> None:
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        e = self.event
        with Vertical():
            kind = failure_kind(e)
            yield Static(FAILURE_TITLES.get(kind, "✖ Run failed"), classes="title")
            yield Static(Text(e.message), id="cause")
            where = Text.assemble(("run dir  ", "dim"), e.run_dir or "-")
            if e.log_path:
                where.append_text(Text.assemble(("\nlog      ", "dim"), e.log_path))
            if e.epoch or e.global_step:
                where.append_text(Text.assemble(("\nat       ", "dim"), f"epoch {e.epoch}, step {e.global_step}"))
            yield Static(where, id="where")
            hint = FAILURE_HINTS.get(kind, "")
            if hint and (kind != "error" or e.log_path):
                yield Static(Text(hint, "italic"), id="hint")
            yield Static(
                Text.assemble(("esc", "bold"), " back to the dashboard   ", ("q", "bold"), " quit"), classes="keys"
            )

    def on_resize(self) -> None:
        refresh_below(self)

    def action_close(self) -> None:
        self.dismiss(None)
