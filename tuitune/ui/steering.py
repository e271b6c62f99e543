"""The dashboard's keys and what they lead to: commands put on the engine's `Control`, the questions the engine
asks (the plateau prompt, the LR finder's curve) and leaving the run (detach, stop, exit code).

A mixin of `DashboardScreen` (tuitune/ui/dashboard.py), which holds the state and draws it: keys never change the
screen themselves; what they change arrives later as the engine's confirming events. `ui/keys.py` is the table of
keys; each entry's action is an `action_*` method here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    BadCommand,
    Command,
    Control,
    FindLR,
    Pause,
    Resume,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import LRFound, RunFinished, UnfreezeSuggested
from tuitune.ui.lrfinder import LRFinderScreen
from tuitune.ui.modals import ConfirmQuitScreen, LeaveRunScreen, PlateauPromptScreen
from tuitune.ui.reducer import DashboardState, reduce, requested
from tuitune.ui.widgets import LayerTable

if TYPE_CHECKING:
    from textual.screen import Screen
    from textual.worker import Worker

    _Screen = Screen[None]
else:
    _Screen = object

STOP_TIMEOUT_S = 2.0
LR_STEP = 1.5  # what `+` multiplies a group's LR by and `-` divides it by
EXIT_CODES = {"finished": 0, "stopped_early": 0, "interrupted": 130, "failed": 1}


class Steering(_Screen):
    """The keys' half of `DashboardScreen`: it reads the attributes below, which the screen sets and draws."""

    control: Control | None
    state: DashboardState
    detachable: bool
    detached: bool
    quitting: bool
    worker: Worker | None
    log_scale: bool
    whole_span: bool
    _prompt: PlateauPromptScreen | None
    _lr_screen: LRFinderScreen | None
    _held: list[Callable[[], None]] | None  # questions that came while "leave the run?" was open; None: not open
    _render_status: Callable[[], None]
    _render_plots: Callable[[], None]

    @property
    def live(self) -> bool:
        return self.control is not None and self.state.live and not self.quitting

    def _key_used(self) -> None:
        """The person found the keys: the hint line has done its work."""
        hint = self.query_one("#hint")
        if hint.display:
            hint.display = False

    def send(self, command: Command) -> bool:
        """Put a command on the engine's queue. Nothing on screen changes until the engine confirms it."""
        self._key_used()
        if not self.live or self.control is None:
            self.notify("No live run to steer.", severity="warning")
            return False
        try:
            self.control.put(command, "dashboard")  # checked there, as every entry point's commands are
        except BadCommand as e:
            self.notify(f"Refused: {e}", severity="error")
            return False
        self.state = requested(self.state, type(command).__name__)
        self._render_status()
        return True

    def action_unfreeze(self) -> None:
        if self.live and not self.state.can_unfreeze and self.state.num_phases:
            self.notify("Every layer group is already trainable.", severity="warning")
            return
        self.send(UnfreezeNext())

    def action_stop_early(self) -> None:
        self.send(StopEarly())

    def action_pause(self) -> None:
        self.send(Resume() if self.state.status == "paused" else Pause())

    def action_checkpoint(self) -> None:
        self.send(SaveCheckpoint())

    def action_find_lr(self) -> None:
        if self.live and "FindLR" in self.state.pending:
            self.notify("The LR finder is already running.", severity="warning")
            return
        self.send(FindLR())

    def action_toggle_group(self) -> None:
        """Freeze the selected group if the engine last said it trains, else unfreeze it."""
        group = self.query_one(LayerTable).selected
        row = next((layer for layer in self.state.layers if layer.name == group), None)
        if row is None:
            self.notify("Select a layer group first: up/down on the layer table.", severity="warning")
            return
        self.send(SetGroupTrainable(group=row.name, trainable=not row.trainable))

    def action_lr_up(self) -> None:
        self.send(ScaleGroupLR(group=self.query_one(LayerTable).selected, factor=LR_STEP))

    def action_lr_down(self) -> None:
        self.send(ScaleGroupLR(group=self.query_one(LayerTable).selected, factor=1 / LR_STEP))

    def action_adapt_bn(self) -> None:
        self.send(AdaptBatchNorm())

    def action_clear_selection(self) -> None:
        self.query_one(LayerTable).unselect()

    def action_log_scale(self) -> None:
        self._key_used()
        self.log_scale = not self.log_scale
        self._render_plots()

    def action_x_span(self) -> None:
        self._key_used()
        self.whole_span = not self.whole_span
        self._render_plots()

    def action_quit_run(self) -> None:
        self._key_used()
        if not self.live:
            self.app.leave_dashboard(self.exit_code())  # type: ignore[attr-defined]
            return
        self._held = self._held or []
        if self.detachable:

            def leave(answer: str | None) -> None:
                if answer == "detach":
                    self.app.call_later(self.detach_and_exit)
                elif answer == "stop":
                    self.app.call_later(self.stop_and_exit)
                else:
                    self._ask_held()

            self.app.push_screen(LeaveRunScreen(), leave)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.call_later(self.stop_and_exit)
            else:
                self._ask_held()

        self.app.push_screen(ConfirmQuitScreen(), answered)

    def _hold_while_leaving(self, ask: Callable[[], None]) -> bool:
        """A question that comes while "leave the run?" is open waits for its answer (it would take that dialog's
        keys); True when held."""
        if self._held is None:
            return False
        self._held.append(ask)
        return True

    def _ask_held(self) -> None:
        """The person stayed: the questions that came meanwhile are asked now."""
        held, self._held = self._held or [], None
        for ask in held:
            ask()

    def _ask_unfreeze(self, event: UnfreezeSuggested) -> None:
        if not self.live or self._prompt is not None or self._hold_while_leaving(lambda: self._ask_unfreeze(event)):
            return

        def answered(yes: bool | None) -> None:
            self._prompt = None
            if yes:
                self.send(UnfreezeNext())
            if event.waiting and self.live:  # the engine holds the run until it hears the answer
                self.send(Resume())

        self._prompt = PlateauPromptScreen(event, self.state.metric)
        self.call_after_refresh(self.app.push_screen, self._prompt, answered)

    def _show_lr_finder(self, event: LRFound) -> None:
        """Open the curve (live runs only: a replay has nobody to apply the LR to); `a` sends `ApplyLR`. A phase's
        sweep (`strategy.phase_lr = "find"`) waits for an answer: it replaces an `f` curve still open."""
        if not self.live or self._hold_while_leaving(lambda: self._show_lr_finder(event)):
            return
        if self._lr_screen is not None:
            if event.wait_s <= 0:
                return
            if self._lr_screen.is_current:
                self._lr_screen.dismiss(None)
            self._lr_screen = None

        screen = LRFinderScreen(event)

        def answered(lr: float | None) -> None:
            if self._lr_screen is screen:
                self._lr_screen = None
            if lr is not None:
                self.send(ApplyLR(lr=lr))

        self._lr_screen = screen
        self.call_after_refresh(self.app.push_screen, screen, answered)

    def _close_prompt(self) -> None:
        for screen in (self._prompt, self._lr_screen):
            if screen is not None and screen.is_current:
                screen.dismiss(None)
        self._prompt = self._lr_screen = None

    # ------------------------------------------------------------------------------------------- ending

    def exit_code(self) -> int:
        if self.control is None or self.detached:  # replay; or the run goes on without us
            return 0
        if self.state.live:
            return 130
        if self.state.failed is not None and self.state.failed.bad_input:
            return 2  # a profile / data / model the user can fix, as the CLI reports it
        return EXIT_CODES.get(self.state.status, 0)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Ask the engine to stop at its next step and wait (bounded) for the worker to end (a run process
        confirms over its socket after saving `last`: it gets longer)."""
        timeout = timeout if timeout is not None else STOP_TIMEOUT_S * (5 if self.detachable else 1)
        self.quitting = True
        if self.control is not None:
            self.control.request_stop()
        await self._wait_for_worker(timeout)
        if self.state.live:  # the engine did not confirm in time: end it on screen anyway
            self.state = reduce(
                self.state,
                RunFinished(
                    status="interrupted",
                    reason="quit from the dashboard",
                    epochs=self.state.epoch,
                    global_step=self.state.global_step,
                    best={},
                    final={},
                    test=None,
                    phases=(),
                    per_class_acc={},
                    samples_per_s=self.state.samples_per_s,
                    wall_s=self.state.elapsed_s,
                    checkpoints={},
                ),
            )

    def detach(self) -> None:
        """Leave a run process going: this screen stops steering it and its worker closes the connection (the
        one way to detach: the `d` answer, a lost terminal and an unmounted screen all come here)."""
        self.quitting = self.detached = True
        if self.control is not None:
            self.control.request_detach()  # type: ignore[attr-defined]

    async def detach_and_exit(self) -> None:
        """Leave the run going: close the connection (bounded wait for the worker), exit 0."""
        self.detach()
        await self._wait_for_worker(STOP_TIMEOUT_S)
        self.app.leave_dashboard(0)  # type: ignore[attr-defined]

    async def stop_and_exit(self) -> None:
        await self.shutdown()
        self.app.leave_dashboard(130)  # type: ignore[attr-defined]

    async def _wait_for_worker(self, timeout: float) -> None:
        """Until the engine worker has ended, or at most `timeout` seconds: quitting never hangs on a stuck engine."""
        deadline = time.monotonic() + timeout
        while self.worker is not None and not self.worker.is_finished and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
