"""What the dashboard's keys do: commands put on the engine's `Control`, the answers to the questions the engine asks
(the plateau's and a phase's LR, on the dashboard's question bar: tuitune/ui/questions.py), the LR finder's curve and
leaving the run (detach, stop, exit code). An open question takes no key: every key works while it waits.

`KeyActions` is owned by `DashboardScreen` (tuitune/ui/dashboard.py) and given what it uses: the `RunLink` (the control
and how the screen is leaving the run) and the screen as a `SteeredView` (the state it reads, the windows it opens).
Keys never change the screen themselves; what they change arrives later as the engine's confirming events.
`ui/keys.py` is the table of keys; each entry's action is a method here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    BadCommand,
    Command,
    FindLR,
    GenerateSamples,
    Pause,
    Resume,
    RollBackPhase,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import LRFound, RunFinished
from tuitune.exits import ExitCode
from tuitune.ui.lrfinder import LRFinderScreen
from tuitune.ui.modals import ConfirmQuitScreen, LeaveRunScreen
from tuitune.ui.questions import PLATEAU, Question, open_question
from tuitune.ui.run_link import STOP_TIMEOUT_S, RunLink
from tuitune.ui.state import DashboardState

if TYPE_CHECKING:
    from textual.screen import Screen

LR_STEP = 1.5  # what `+` multiplies a group's LR by and `-` divides it by


class SteeredView(Protocol):
    """What the keys need from the screen they steer."""

    @property
    def state(self) -> DashboardState: ...

    def mark_requested(self, command: str) -> None:
        """A command went to the engine: show it as pending until the engine confirms it."""

    def record(self, event: RunFinished) -> None:
        """Fold an event into the state (the end the engine did not confirm in time)."""

    def key_used(self) -> None: ...

    def selected_group(self) -> str | None: ...

    def unselect_group(self) -> None: ...

    def toggle_plots(self, *, log_scale: bool = False, whole_span: bool = False) -> None: ...

    def toggle_system(self) -> None: ...

    def notify_warning(self, message: str) -> None: ...

    def open(self, screen: Screen[Any], answered: Callable[[Any], None], *, after_refresh: bool = True) -> None:
        """Push a modal; `answered` gets its result. `after_refresh`: once this screen has laid out."""

    def later(self, callback: Callable[[], Any]) -> None:
        """Run `callback` (a coroutine function too) once the app has handled what it is doing now."""

    def leave(self, code: int) -> None:
        """The dashboard is done: the app exits with `code` (or goes back to a sweep's leaderboard)."""

    def question_changed(self) -> None:
        """The open question was answered here, or its countdown moved: draw the question bar again."""


class KeyActions:
    def __init__(self, link: RunLink, view: SteeredView) -> None:
        self.link = link
        self.view = view
        self.lr_screen: LRFinderScreen | None = None
        self.answered: object | None = None  # the question (its event) answered here: its confirmation is on the way
        self.lr_counting: LRFound | None = None  # the phase's LR question `lr_left` counts down for
        self.lr_left = 0
        self.held: list[Callable[[], None]] | None = None  # questions that came while "leave the run?" was open

    @property
    def live(self) -> bool:
        return self.link.live(self.view.state)

    def send(self, command: Command) -> bool:
        """Put a command on the engine's queue. Nothing on screen changes until the engine confirms it."""
        self.view.key_used()
        if not self.live or self.link.control is None:
            self.view.notify_warning("No live run to steer.")
            return False
        try:
            self.link.control.put(command, "dashboard")  # checked there, as every entry point's commands are
        except BadCommand as e:
            self.view.notify_warning(f"Refused: {e}")
            return False
        self.view.mark_requested(type(command).__name__)
        return True

    # ------------------------------------------------------------------------------------------- keys

    def unfreeze(self) -> None:
        """`u`: the next phase; while the plateau asks for just that, a yes to it (the waiting run resumes too)."""
        question = self.question()
        if question is not None and question.kind == PLATEAU:
            self.answer(True)
            return
        state = self.view.state
        if self.live and not state.can_unfreeze and state.num_phases:
            self.view.notify_warning("Every layer group is already trainable.")
            return
        self.send(UnfreezeNext())

    def stop_early(self) -> None:
        self.send(StopEarly())

    def pause(self) -> None:
        self.send(Resume() if self.view.state.status == "paused" else Pause())

    def checkpoint(self) -> None:
        self.send(SaveCheckpoint())

    def find_lr(self) -> None:
        """`f`: sweep the LR now; while a phase's LR question is open, its curve (the sweep just made)."""
        question = self.question()
        if question is not None and isinstance(question.event, LRFound):  # a phase's LR question
            self.view.key_used()
            self._open_curve(question.event)
            return
        if self.live and "FindLR" in self.view.state.pending:
            self.view.notify_warning("The LR finder is already running.")
            return
        self.send(FindLR())

    def toggle_group(self) -> None:
        """Freeze the selected group if the engine last said it trains, else unfreeze it."""
        group = self.view.selected_group()
        row = next((layer for layer in self.view.state.layers if layer.name == group), None)
        if row is None:
            self.view.notify_warning("Select a layer group first: up/down on the layer table.")
            return
        self.send(SetGroupTrainable(group=row.name, trainable=not row.trainable))

    def lr_up(self) -> None:
        self.send(ScaleGroupLR(group=self.view.selected_group(), factor=LR_STEP))

    def lr_down(self) -> None:
        self.send(ScaleGroupLR(group=self.view.selected_group(), factor=1 / LR_STEP))

    def adapt_bn(self) -> None:
        self.send(AdaptBatchNorm())

    def generate(self) -> None:
        """`g`: samples now (a run that generates no text says so in its log)."""
        self.send(GenerateSamples())

    def roll_back(self) -> None:
        self.send(RollBackPhase())

    def clear_selection(self) -> None:
        self.view.unselect_group()

    def log_scale(self) -> None:
        self.view.key_used()
        self.view.toggle_plots(log_scale=True)

    def x_span(self) -> None:
        self.view.key_used()
        self.view.toggle_plots(whole_span=True)

    def system_panel(self) -> None:
        self.view.key_used()
        self.view.toggle_system()

    def quit_run(self) -> None:
        self.view.key_used()
        if not self.live:
            self.view.leave(self.exit_code())
            return
        self.held = self.held or []
        if self.link.detachable:

            def leave(answer: str | None) -> None:
                if answer == "detach":
                    self.view.later(self.detach_and_exit)
                elif answer == "stop":
                    self.view.later(self.stop_and_exit)
                else:
                    self._ask_held()

            self.view.open(LeaveRunScreen(), leave, after_refresh=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.view.later(self.stop_and_exit)
            else:
                self._ask_held()

        self.view.open(ConfirmQuitScreen(), answered, after_refresh=False)

    # ------------------------------------------------------------------------------------------- questions

    def _hold_while_leaving(self, ask: Callable[[], None]) -> bool:
        """A question that comes while "leave the run?" is open waits for its answer (it would take that dialog's
        keys); True when held."""
        if self.held is None:
            return False
        self.held.append(ask)
        return True

    def _ask_held(self) -> None:
        """The person stayed: the questions that came meanwhile are asked now."""
        held, self.held = self.held or [], None
        for ask in held:
            ask()

    def question(self) -> Question | None:
        """The question open now and not yet answered here (`questions.open_question`), a phase's LR with the
        seconds its countdown has left."""
        question = open_question(self.view.state) if self.live else None
        if question is None or question.event is self.answered:
            return None
        if isinstance(question.event, LRFound):  # a phase's LR question
            if question.event is not self.lr_counting:  # a new sweep: its countdown starts at its `wait_s`
                self.lr_counting, self.lr_left = question.event, question.left
            return dataclasses.replace(question, left=self.lr_left)
        return question

    def answer_yes(self) -> None:
        self.answer(True)

    def answer_no(self) -> None:
        self.answer(False)

    def answer(self, yes: bool) -> None:
        """`y` / `n`: the plateau's yes sends `UnfreezeNext` (and `Resume` when the run waits: a no sends only that);
        a phase's LR: its suggestion, or the LR the phase started with, as `ApplyLR`."""
        self.view.key_used()
        question = self.question()
        if question is None:
            self.view.notify_warning("No question to answer.")
            return
        event = question.event
        if isinstance(event, LRFound):
            self._answer_lr(event, event.suggestion if yes else event.current_lr)
            return
        self.answered = event
        if yes:
            self.send(UnfreezeNext())
        if event.waiting:  # the engine holds the run until it hears the answer
            self.send(Resume())
        self.view.question_changed()

    def _answer_lr(self, event: LRFound, lr: float) -> None:
        if self.answered is event:  # the curve's answer and the countdown's end: only the first counts
            return
        if self.send(ApplyLR(lr=lr)):  # a refused answer (out of range) leaves the question open
            self.answered = event
        self.view.question_changed()

    def tick(self) -> None:
        """One second of a phase's LR countdown (the question bar's clock); at zero the suggestion applies. Held
        while the curve is open: its own countdown answers then (it paused when the person started typing)."""
        question = self.question()
        if question is None or not isinstance(question.event, LRFound) or self.lr_screen is not None:
            return  # no phase LR question (the plateau's has no clock), or its curve is open
        self.lr_left -= 1
        if self.lr_left <= 0:
            self._answer_lr(question.event, question.event.suggestion)
        else:
            self.view.question_changed()

    def show_lr_finder(self, event: LRFound) -> None:
        """An `f` sweep's curve opens at once (live runs only: a replay has nobody to apply the LR to); `a` sends
        `ApplyLR`. A phase's sweep (`strategy.phase_lr = "find"`, `wait_s` > 0) is a question on the bar instead:
        `f` opens its curve."""
        if event.wait_s > 0 or not self.live or self._hold_while_leaving(lambda: self.show_lr_finder(event)):
            return
        if self.lr_screen is None:
            self._open_curve(event)

    def _open_curve(self, event: LRFound) -> None:
        if self.lr_screen is not None:
            return
        left = self.lr_left if event is self.lr_counting else None
        screen = LRFinderScreen(event, remaining=left)

        def answered(lr: float | None) -> None:
            if self.lr_screen is screen:
                self.lr_screen = None
            if lr is not None and event.wait_s > 0:
                self._answer_lr(event, lr)
            elif lr is not None:
                self.send(ApplyLR(lr=lr))

        self.lr_screen = screen
        self.view.open(screen, answered)

    def close_questions(self) -> None:
        """The run ended: an open LR curve has nothing left to answer (the question bar follows the state)."""
        if self.lr_screen is not None and self.lr_screen.is_current:
            self.lr_screen.dismiss(None)
        self.lr_screen = None

    # ------------------------------------------------------------------------------------------- ending

    def exit_code(self) -> int:
        return self.link.exit_code(self.view.state)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Ask the engine to stop at its next step and wait (bounded) for the worker to end (a run process
        confirms over its socket after saving `last`: it gets longer)."""
        timeout = timeout if timeout is not None else STOP_TIMEOUT_S * (5 if self.link.detachable else 1)
        self.link.stop()
        await self.link.wait_for_worker(timeout)
        if self.link.worker_ended:  # its last event is posted to this screen: on a busy box still in the queue
            await self.link.wait_until(lambda: not self.view.state.live, STOP_TIMEOUT_S)
        state = self.view.state
        if state.live:  # the engine did not confirm in time: end it on screen anyway
            self.view.record(
                RunFinished(
                    status="interrupted",
                    reason="quit from the dashboard",
                    epochs=state.epoch,
                    global_step=state.global_step,
                    best={},
                    final={},
                    test=None,
                    phases=(),
                    per_class_acc={},
                    samples_per_s=state.samples_per_s,
                    wall_s=state.elapsed_s,
                    checkpoints={},
                )
            )

    async def detach_and_exit(self) -> None:
        """Leave the run going: close the connection (bounded wait for the worker), exit 0."""
        self.link.detach()
        await self.link.wait_for_worker(STOP_TIMEOUT_S)
        self.view.leave(ExitCode.OK)

    async def stop_and_exit(self) -> None:
        await self.shutdown()
        self.view.leave(ExitCode.INTERRUPTED)
