"""The dashboard screen: one run's status, curves, layer table and event log, and the keys that steer it.

State flows one way: the engine thread emits events -> `EngineEventReceived` messages -> `reduce` -> widgets.
Keys only put commands on the `Control` (their handlers: `KeyActions`, tuitune/ui/key_actions.py, which the screen
owns and gives itself as a `SteeredView`); what they change on screen arrives later as confirming events. The run
itself (control, worker, leaving it) is a `RunLink` (tuitune/ui/run_link.py) both are given.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from tuitune.engine.commands import Control
from tuitune.engine.events import (
    LayersChanged,
    LayersMeasured,
    LRFound,
    MetricsUpdated,
    RunFailed,
    RunFinished,
    RunStarted,
    SetupProgressed,
    SystemSampled,
    UnfreezeSuggested,
)
from tuitune.engine.record.history import Recorded
from tuitune.remote.client import HistoryChunk, HistoryEnded, HistoryStarted
from tuitune.ui.key_actions import KeyActions
from tuitune.ui.keys import DASHBOARD_KEYS, FIRST_RUN_HINT, LAYER_TABLE_HINT
from tuitune.ui.lrfinder import LRFinderScreen
from tuitune.ui.memory_view import layer_table_subtitle
from tuitune.ui.modals import ErrorScreen
from tuitune.ui.notify import notify_terminal
from tuitune.ui.plotdata import plot_inputs
from tuitune.ui.questions import QuestionBar
from tuitune.ui.reducer import reduce, requested
from tuitune.ui.run_link import RunLink
from tuitune.ui.runner import EngineEventReceived, LiveRun, paced, run_in_worker
from tuitune.ui.samples import SamplesPanel
from tuitune.ui.state import DashboardState
from tuitune.ui.summary import SummaryScreen
from tuitune.ui.system_panel import SystemPanel, shown_by_default
from tuitune.ui.widgets import EventLog, LayerTable, MetricPlot, RenderMeter, StatusBar

REDRAW_S = 0.25  # what metrics update (plots, status, table) redraws at most 4 times a second...
BACKOFF = 30.0  # ...and waits 30x its last redraw's CPU time: under ~3% of a core, however slow a frame is,
MAX_WAIT_S = 2.0  # ...but never longer than this: the curves stay live on a big terminal and a slow machine
COALESCE_S = 0.05  # a burst of events (MetricsUpdated, then LayersChanged) makes one frame, not two


class DashboardScreen(Screen[None]):
    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding(k.key, f"key('{k.action}')", k.footer, show=k.show, key_display=k.display or None)
        for k in DASHBOARD_KEYS
    ]

    def __init__(
        self,
        *,
        run: LiveRun | None = None,
        events: Sequence[Recorded] = (),
        speed: float = 0.0,
        control: Control | None = None,
    ) -> None:
        super().__init__()
        self.run = run
        self.link = RunLink(run, control)
        self.keys = KeyActions(self.link, self)
        self.in_history = False  # between HistoryStarted and HistoryEnded: the run's past, replayed on attach
        self.initial_events = list(events)
        self.speed = speed
        self.state = DashboardState()
        self.log_scale = False
        self.whole_span = False  # x axis: follow the run (False) or show every planned epoch (True)
        self.show_system: bool | None = None  # the system panel, as `m` left it; None: `shown_by_default`
        self._plots_dirty = False
        self._live_dirty = False  # status bar and layer table: behind the state by high-rate events
        self._drawn_at = -math.inf  # time.monotonic() of the last budgeted redraw (none yet)...
        self._draw_cpu = 0.0  # ...the UI thread's CPU seconds it took, frames not included...
        self._meter_mark = math.inf  # ...and RenderMeter.cpu then: the frames that followed count towards it
        self._draw_timer: Timer | None = None
        self._gc_frozen = False

    @property
    def detachable(self) -> bool:
        """A run in its own process: leaving may detach instead of stopping it."""
        return self.link.detachable

    def action_key(self, action: str) -> None:
        """Every dashboard key (`DASHBOARD_KEYS`): its `KeyActions` method."""
        getattr(self.keys, action)()

    # ------------------------------------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield SystemPanel()
        with Horizontal(id="plots"):
            yield MetricPlot("loss", id="loss-plot")
            yield MetricPlot("acc", id="acc-plot")
        yield SamplesPanel()  # a language model's latest generations (hidden until a run tells some)
        with Horizontal(id="bottom"):
            yield LayerTable()
            yield EventLog()
        yield QuestionBar(self.keys.tick, LRFinderScreen.TICK_S)  # the engine's open question, if any
        # what the keys do, for a newcomer: a live run only (a replay steers nothing), until the first key is used
        yield Static(FIRST_RUN_HINT, id="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#hint").display = self.run is not None
        self.query_one(LayerTable).border_title = "layers"
        self.query_one(LayerTable).border_subtitle = LAYER_TABLE_HINT
        self.query_one(EventLog).border_title = "events"
        self.query_one(SamplesPanel).border_subtitle = "g generate now"
        self._fit(self.app.size.width, self.app.size.height)
        if self.speed > 0 and self.initial_events:
            self.run_worker(self._replay_paced, thread=True, name="replay", exit_on_error=False)
        else:
            for event in self.initial_events:
                self._apply(event)
        self._render_all()
        if self.run is not None and self.link.control is not None:
            body = partial(run_in_worker, self.run, self._emit, self.link.control)
            self.link.worker = self.run_worker(body, thread=True, name="engine", group="engine", exit_on_error=False)

    def on_unmount(self) -> None:
        """However the app ends, an in-process engine is told to stop, so its thread never outlives the UI for
        long; a run in its own process is only detached from (a lost terminal is a detach)."""
        if self.link.detachable:
            self.link.detach()
        else:
            self.link.stop()
        if self._gc_frozen:
            gc.unfreeze()

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        self.set_class(width < 110 or height < 30, "narrow")
        self.set_class(height >= 50, "tall")
        if self.is_mounted:
            self.query_one(SamplesPanel).show(self.state, compact=self.has_class("narrow"))
            self._render_system()

    # ------------------------------------------------------------------------------------------- events in

    def _emit(self, event: Recorded) -> None:
        """The engine's `emit`, called in the worker thread: post, never touch widgets."""
        self.post_message(EngineEventReceived(event))

    def _replay_paced(self) -> None:
        for event in paced(self.initial_events, self.speed, lambda: self.link.quitting):
            self._emit(event)

    def on_engine_event_received(self, message: EngineEventReceived) -> None:
        if isinstance(message.event, HistoryChunk):  # an attach's history: many events in one message
            for event in message.event.events:
                self._receive(event)
        else:
            self._receive(message.event)

    def _receive(self, event: Recorded) -> None:
        if self._history_marker(event):
            return
        self._apply(event)
        if self.in_history and not isinstance(event, (RunFinished, RunFailed)):
            return  # the past, event by event: `HistoryEnded` draws it all once
        if isinstance(event, SetupProgressed) and not event.finished:
            self._render_status()  # one Static's text: cheap, and events come at most a few times a second
        elif isinstance(event, SystemSampled):
            self._render_system()  # every few seconds: the panel alone
        elif isinstance(event, (MetricsUpdated, LayersChanged, LayersMeasured)):
            self._live_dirty = True  # high rate: drawn within the redraw budget
        else:
            self._render_cheap()  # phase changes, commands, epochs, checkpoints: at once
        self._schedule_draw()

    def _history_marker(self, event: object) -> bool:
        """A (re)connection to a run process starts its history from scratch; its end makes the screen live."""
        if isinstance(event, HistoryStarted):
            self.in_history, self.state = True, DashboardState()
            self._plots_dirty = True
            return True
        if isinstance(event, HistoryEnded):
            self.in_history = False
            self._render_all()  # a question still open is on the question bar
            return True
        return False

    def _apply(self, event: Recorded) -> None:
        before = self.state
        self.state = reduce(before, event)
        if not self._plots_dirty:
            self._plots_dirty = any(a is not b for a, b in zip(plot_inputs(before), plot_inputs(self.state)))
        if isinstance(event, RunStarted) and self.run is not None and not self._gc_frozen:
            self._freeze_heap()
        if self.in_history and not isinstance(event, (RunFinished, RunFailed)):
            return  # the past: no questions, no LR finder screen, no bell
        if isinstance(event, UnfreezeSuggested):  # on the question bar (`_render_cheap`): it takes no key
            self._ring("plateau", f"{self.state.run_name}: the plateau trigger asks to unfreeze")
        elif isinstance(event, LRFound):
            self.keys.show_lr_finder(event)
        elif isinstance(event, (RunFinished, RunFailed)):
            if self.run is not None and not self.in_history and not self.link.quitting:
                what = "failed" if isinstance(event, RunFailed) else event.status.replace("_", " ")
                self._ring(what, f"{self.state.run_name}: run {what}")
            self.keys.close_questions()
            if not self.link.quitting:
                screen = (
                    SummaryScreen(event, self.state.metric) if isinstance(event, RunFinished) else ErrorScreen(event)
                )
                self.call_after_refresh(self.app.push_screen, screen)  # after this screen's layout

    def _ring(self, title: str, body: str) -> None:
        """The bell and a desktop notification (OSC 9 / OSC 777) on the terminal, for a person who looked away."""
        if self.run is not None:
            notify_terminal(self.app, f"tuitune: {title}", body)

    def _freeze_heap(self) -> None:
        """The engine has built its model and data: move that heap out of the cyclic GC's sight (`gc.freeze`).
        Otherwise the dashboard's short-lived objects (frames, texts) trigger full collections that walk every
        module, tensor and sample on the UI thread: 80-200 ms each, more than all its drawing (undone on unmount).
        A heap already frozen (by the engine's run, in this thread's process) is left to whoever froze it."""
        if gc.get_freeze_count():
            return
        gc.collect()
        gc.freeze()
        self._gc_frozen = True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that died without a terminal event still ends the run on screen, as a failure."""
        if event.worker is not self.link.worker or self.link.quitting or not self.state.live:
            return
        if event.state == WorkerState.ERROR:
            self._apply(RunFailed(message=f"engine crashed: {event.worker.error}", run_dir=self.state.run_dir))
        elif event.state == WorkerState.SUCCESS:
            lost = (
                (
                    f"lost the connection to the run process: `tuitune runs` says whether it lives, "
                    f"`tuitune attach {self.state.run_dir}` reattaches"
                )
                if self.link.detachable
                else ""
            )
            self._apply(RunFailed(message=lost or "the engine ended without a final event", run_dir=self.state.run_dir))
        else:
            return
        self._render_all()

    # ------------------------------------------------------------------------------------------- SteeredView

    def mark_requested(self, command: str) -> None:
        self.state = requested(self.state, command)
        self._render_status()

    def record(self, event: RunFinished) -> None:
        self.state = reduce(self.state, event)

    def key_used(self) -> None:
        """The person found the keys: the hint line has done its work."""
        hint = self.query_one("#hint")
        if hint.display:
            hint.display = False

    def selected_group(self) -> str | None:
        return self.query_one(LayerTable).selected

    def unselect_group(self) -> None:
        self.query_one(LayerTable).unselect()

    def toggle_plots(self, *, log_scale: bool = False, whole_span: bool = False) -> None:
        self.log_scale ^= log_scale
        self.whole_span ^= whole_span
        self._render_plots()

    def toggle_system(self) -> None:
        shown = self._system_shown()
        if not shown and self.state.system is None:
            self.notify("no system samples from this run (yet); train.system_every_s = 0 turns them off")
            return
        self.show_system = not shown
        self._render_system()

    def _system_shown(self) -> bool:
        return self.show_system if self.show_system is not None else shown_by_default(self.state)

    def notify_warning(self, message: str) -> None:
        self.notify(message, severity="warning")

    def open(self, screen: Screen[Any], answered: Callable[[Any], None], *, after_refresh: bool = True) -> None:
        if after_refresh:
            self.call_after_refresh(self.app.push_screen, screen, answered)
        else:
            self.app.push_screen(screen, answered)

    def later(self, callback: Callable[[], Any]) -> None:
        self.app.call_later(callback)

    def leave(self, code: int) -> None:
        self.app.leave_dashboard(code)  # type: ignore[attr-defined]  # self.app is TuituneApp (typed App)

    def question_changed(self) -> None:
        self.query_one(QuestionBar).show(self.keys.question(), self.state.metric)

    # ------------------------------------------------------------------------------------------- rendering

    def _render_status(self) -> None:
        self.query_one(StatusBar).show(self.state)

    def _render_system(self) -> None:
        self.query_one(SystemPanel).show(self.state, self._system_shown(), self.has_class("narrow"))

    def _render_cheap(self) -> None:
        self._render_status()
        self._render_system()
        self.question_changed()
        self.query_one(LayerTable).show(self.state)
        self.query_one(LayerTable).border_subtitle = layer_table_subtitle(self.state)
        self.query_one(EventLog).show(self.state)
        self.set_class(self.state.samples is not None, "with-samples")
        self.query_one(SamplesPanel).show(self.state, compact=self.has_class("narrow"))

    def _render_plots(self) -> None:
        self._plots_dirty = False
        for plot in self.query(MetricPlot):
            plot.show(self.state, self.log_scale, self.whole_span)

    def _render_all(self) -> None:
        self._live_dirty = False
        self._render_cheap()
        self._render_plots()

    def _next_draw(self) -> float:
        """When the next budgeted redraw may start: `REDRAW_S` after the last one, or `BACKOFF` times its CPU cost
        (the code that asked for it plus the frames that followed) after it, whichever is later, capped at
        `MAX_WAIT_S` (every render since the last redraw counts, so without a cap a busy screen could starve it)."""
        cost = self._draw_cpu + max(RenderMeter.cpu - self._meter_mark, 0.0)
        return self._drawn_at + min(MAX_WAIT_S, max(REDRAW_S, BACKOFF * cost))

    def _schedule_draw(self) -> None:
        """Draw what is behind the state once the budget allows (one timer at a time: events coalesce)."""
        if self._draw_timer is None and (self._plots_dirty or self._live_dirty):
            delay = max(self._next_draw() - time.monotonic(), COALESCE_S)
            self._draw_timer = self.set_timer(delay, self._draw_budgeted, name="dashboard-redraw")

    def _draw_budgeted(self) -> None:
        self._draw_timer = None
        now = time.monotonic()
        if now < self._next_draw() - 1e-3:  # the frames that followed the last redraw were slow: wait longer
            self._schedule_draw()
            return
        cpu = time.thread_time()
        if self._live_dirty:
            self._live_dirty = False
            self._render_status()
            self.query_one(LayerTable).show(self.state)
        if self._plots_dirty:
            self._render_plots()
        self._drawn_at, self._draw_cpu, self._meter_mark = now, time.thread_time() - cpu, RenderMeter.cpu
