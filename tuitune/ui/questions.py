"""The questions the engine asks a person, on a bar docked in the dashboard, never a dialog that takes the keys.

Two questions: the plateau trigger's (`UnfreezeSuggested`: unfreeze the next groups?) and a phase's LR sweep
(`strategy.phase_lr = "find"`: `LRFound` with `wait_s` > 0, apply its suggestion?). The state says which is open
(`DashboardState.suggestion`, `.lr_question`): it stays until answered here, or until the engine moves on (a phase
change, a Resume that ends a waiting plateau, an applied LR, the run's end). While it is open every dashboard key
still works; `y`/`n` answer it (`u` is a yes to the plateau, `f` opens a phase's curve). What the keys send is
`KeyActions`' (tuitune/ui/key_actions.py); this module only says what is asked and draws it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.timer import Timer
from textual.widgets import Static

from tuitune.engine.events import LRFound, UnfreezeSuggested
from tuitune.fmt import fmt_sci
from tuitune.ui.event_text import lr_found_text, suggestion_text
from tuitune.ui.state import DashboardState

PLATEAU, PHASE_LR = "plateau", "phase_lr"


@dataclass(frozen=True)
class Question:
    kind: str  # PLATEAU or PHASE_LR
    event: UnfreezeSuggested | LRFound
    left: int = 0  # PHASE_LR: seconds until the suggestion applies itself


def open_question(state: DashboardState) -> Question | None:
    """The question the engine asks now (a phase's LR first: the run waits on it), or None. A run that ended
    asks nothing."""
    if not state.live:
        return None
    if state.lr_question is not None:
        return Question(PHASE_LR, state.lr_question, math.ceil(state.lr_question.wait_s))
    if state.suggestion is not None:
        return Question(PLATEAU, state.suggestion)
    return None


def question_text(question: Question, metric: str = "acc") -> Text:
    """One line (wrapped on a narrow screen): what is asked, then its keys."""
    key = "bold"
    if isinstance(question.event, UnfreezeSuggested):
        e = question.event
        wait = "  the run waits for the answer" if e.waiting else ""
        return Text.assemble(
            ("Plateau ", "bold"),
            suggestion_text(e, metric),
            (wait, "italic"),
            "  ",
            ("y", key),
            "/",
            ("u", key),
            " yes · ",
            ("n", key),
            " no",
        )
    lr = question.event
    return Text.assemble(
        (f"LR for phase {lr.phase + 1} ", "bold"),
        lr_found_text(lr),
        (f"  applies {fmt_sci(lr.suggestion)} by itself in {question.left} s", "italic"),
        "  ",
        ("y", key),
        f" apply {fmt_sci(lr.suggestion)} · ",
        ("n", key),
        f" keep {fmt_sci(lr.current_lr)} · ",
        ("f", key),
        " curve",
    )


class QuestionBar(Static):
    """The open question above the key hints (hidden when none), and the clock of a phase's LR countdown: while one
    is shown, `tick` is called every `tick_s` seconds (the countdown's second: `LRFinderScreen.TICK_S`, which
    tests set, so no snapshot depends on the clock)."""

    def __init__(self, tick: Callable[[], None], tick_s: float) -> None:
        super().__init__(id="question-bar")
        self._tick, self._tick_s = tick, tick_s
        self._timer: Timer | None = None
        self._shown: tuple[Question | None, str] | None = None

    def show(self, question: Question | None, metric: str) -> None:
        self.display = question is not None
        counting = question is not None and question.kind == PHASE_LR
        if counting and self._timer is None:
            self._timer = self.set_interval(self._tick_s, self._tick)
        elif not counting and self._timer is not None:
            self._timer.stop()
            self._timer = None
        if question is not None and (question, metric) != self._shown:
            self.update(question_text(question, metric))
        self._shown = (question, metric)
