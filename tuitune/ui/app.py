"""The Textual application: picker -> dashboard (live run or replay), with the same actions in the palette."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tuitune.config import RunProfile
from tuitune.engine.commands import Control
from tuitune.engine.record.history import Recorded
from tuitune.exits import ExitCode
from tuitune.ui.compose import ComposeScreen
from tuitune.ui.keys import DASHBOARD_KEYS
from tuitune.ui.runner import DetachedRunner, LiveRun, RunDirMaker, Runner, default_run_dir, default_runner

if TYPE_CHECKING:
    from tuitune.ui.dashboard import DashboardScreen
    from tuitune.ui.sweep import Loader


PREEMPT_WAIT_S = 60.0  # how long a preempted in-process run may take to save `last` (SLURM's KillWait: 30 s)


class TuituneApp(App[None]):
    """`mode` is "picker", "train", "attach" (`run_dir`: a live run process) or "replay". `runner` and
    `make_run_dir` are injectable for tests; `DetachedRunner()` trains in a run process that outlives the app,
    the default runner in this process (`--inline`). `runs_dir`: where the picker looks for live runs."""

    TITLE = "tuitune"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(
        self,
        mode: str = "picker",
        *,
        profile_dirs: Sequence[Path] = (),
        overrides: Sequence[str] = (),
        out: str | None = None,
        profile: RunProfile | None = None,
        run_dir: Path | None = None,
        resume: Path | None = None,
        events: Sequence[Recorded] = (),
        speed: float = 0.0,
        runner: Runner = default_runner,
        make_run_dir: RunDirMaker = default_run_dir,
        control: Control | None = None,
        runs_dir: Path | None = None,
        sweep: tuple[Loader, str] | None = None,
    ) -> None:
        super().__init__()
        self.sweep = sweep  # mode "sweep": (loader of the leaderboard rows, title)
        self.runs_dir = runs_dir
        self.mode = mode
        self.profile_dirs = list(profile_dirs)
        self.overrides = list(overrides)
        self.out = out
        self.profile = profile
        self.run_dir = run_dir
        self.resume = resume
        self.events = list(events)
        self.speed = speed
        self.runner = runner
        self.make_run_dir = make_run_dir
        self.control = control
        self.dashboard: DashboardScreen | None = None

    def on_mount(self) -> None:
        if self.mode == "picker":
            from tuitune.ui.picker import PickerScreen

            self.push_screen(
                PickerScreen(
                    self.profile_dirs, self.overrides, self.start_run, runs_dir=self.runs_dir, attach=self.attach_run
                )
            )
        elif self.mode == "train":
            assert self.profile is not None
            self.start_run(self.profile, self.run_dir)
        elif self.mode == "sweep":
            from tuitune.ui.sweep import SweepScreen

            assert self.sweep is not None
            load, title = self.sweep
            self.push_screen(SweepScreen(load, title, open_trial=self.open_trial))
        elif self.mode == "attach":
            assert self.run_dir is not None
            self.attach_run(self.run_dir)
        else:
            self.open_dashboard(events=self.events, speed=self.speed, control=self.control)

    def start_run(self, profile: RunProfile, run_dir: Path | None = None) -> None:
        run = LiveRun(
            profile=profile,
            run_dir=run_dir,
            out=self.out,
            resume=self.resume,
            runner=self.runner,
            make_run_dir=self.make_run_dir,
        )
        self.open_dashboard(run=run, control=self.control)

    def attach_run(self, run_dir: Path) -> None:
        """Follow a live run process: its history, then live events; every key steers it."""
        self.open_dashboard(run=LiveRun(profile=None, run_dir=run_dir, runner=DetachedRunner(attach_only=True)))

    def open_trial(self, run_dir: str) -> None:
        """A sweep's trial: the live one's dashboard (attach), an ended one's record (replay)."""
        from tuitune.engine.record.history import read_history
        from tuitune.runs.status import run_status

        if run_status(Path(run_dir)) == "live":
            self.attach_run(Path(run_dir))
        else:
            self.open_dashboard(events=read_history(Path(run_dir)), speed=0.0)

    def leave_dashboard(self, code: int) -> None:
        """The dashboard is done (quit, detach, stop): back to a sweep's leaderboard under it, else exit."""
        from tuitune.ui.sweep import SweepScreen

        if self.dashboard is not None and any(isinstance(s, SweepScreen) for s in self.screen_stack):
            self.dashboard = None
            while not isinstance(self.screen, SweepScreen):  # the dashboard, and its summary when on top
                self.pop_screen()
            return
        self.exit(return_code=code)

    def open_dashboard(self, **kwargs: Any) -> None:
        """`kwargs`: DashboardScreen's (`run`, `events`, `speed`, `control`)."""
        from tuitune.ui.dashboard import DashboardScreen  # plotext loads here, after the picker's first frame

        self.dashboard = DashboardScreen(**kwargs)
        self.push_screen(self.dashboard)
        if self.dashboard.detachable:
            self._watch_hangup()
        if self.dashboard.run is not None:
            self._watch_preemption()

    def _watch_hangup(self) -> None:
        """A lost terminal (SIGHUP: the SSH link dropped, the tmux session was killed) is a detach: the run
        process goes on. Exiting writes to a terminal that is gone, so a timer makes sure this process ends."""
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread / no signals here
            pass

    def _watch_preemption(self) -> None:
        """SIGTERM / SIGUSR1 (a scheduler's preemption or time-limit warning): a run in this process (`--inline`)
        saves `last` and ends `preempted`, and the app exits 75; a run process of its own is only detached from
        (it gets the scheduler's signal itself)."""
        from tuitune.preempt import PREEMPT_SIGNALS

        try:
            loop = asyncio.get_running_loop()
            for s in PREEMPT_SIGNALS:
                loop.add_signal_handler(s, self.preempt_run, s)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread / no signals here
            pass

    def preempt_run(self, signum: int) -> None:
        dashboard = self.dashboard
        if dashboard is None or not dashboard.keys.live or dashboard.detachable:
            self.hang_up()
            return
        from tuitune.preempt import preempt

        assert dashboard.link.control is not None
        preempt(dashboard.link.control, signum)
        self.run_worker(self._end_preempted(dashboard), name="preempted", exclusive=True)

    async def _end_preempted(self, dashboard: DashboardScreen) -> None:
        await dashboard.keys.shutdown(timeout=PREEMPT_WAIT_S)  # its stop request keeps the status preempt() gave
        self.exit(return_code=dashboard.keys.exit_code())

    def hang_up(self) -> None:
        dashboard = self.dashboard
        if dashboard is not None and dashboard.detachable:
            dashboard.link.detach()
        timer = threading.Timer(3.0, os._exit, (ExitCode.OK,))
        timer.daemon = True
        timer.start()
        self.exit(return_code=ExitCode.OK)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        dashboard = self.dashboard
        if dashboard is not None and screen is dashboard:
            for k in DASHBOARD_KEYS:
                yield SystemCommand(k.title, k.palette_help, getattr(dashboard.keys, k.action))
        if isinstance(screen, ComposeScreen):
            yield SystemCommand(
                "Start the composed run", "Train the profile as composed here (ctrl+r)", screen.action_start
            )
            yield SystemCommand(
                "Save as profile", "Write the composed profile as a new file (ctrl+s)", screen.action_save
            )
        elif (start := getattr(screen, "action_start", None)) is not None:
            yield SystemCommand("Start profile", "Train the highlighted profile (enter)", start)
        if (compose_run := getattr(screen, "action_compose", None)) is not None:
            yield SystemCommand(
                "Compose a run",
                "The highlighted profile with another strategy, LR, epochs or batch "
                "size; start it or save it as a new profile (e)",
                compose_run,
            )

    async def action_quit(self) -> None:
        """Quit from anywhere: a live run is stopped at its next step first (bounded wait), never left hanging."""
        dashboard = self.dashboard
        if dashboard is None:
            self.exit(return_code=ExitCode.OK)
            return
        code = dashboard.keys.exit_code()
        if dashboard.keys.live and dashboard.detachable:  # ask: detach, stop the run, or stay
            dashboard.keys.quit_run()
            return
        if dashboard.keys.live:
            await dashboard.keys.shutdown()
            code = ExitCode.INTERRUPTED
        self.leave_dashboard(code)
