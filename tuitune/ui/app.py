"""The Textual application: picker -> dashboard (live run or replay), with the same actions in the palette."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tuitune.config import RunProfile
from tuitune.engine.commands import Control
from tuitune.engine.events import Event
from tuitune.ui.runner import LiveRun, RunDirMaker, Runner, default_run_dir, default_runner

if TYPE_CHECKING:
    from tuitune.ui.dashboard import DashboardScreen

DASHBOARD_COMMANDS = (
    ("Unfreeze next phase", "Make the next layer group(s) trainable now (u)", "unfreeze"),
    ("Stop early", "Save a checkpoint, evaluate and show the summary (s)", "stop_early"),
    ("Pause / resume", "Pause or resume training at the next step (p)", "pause"),
    ("Save checkpoint", "Save a checkpoint now (c)", "checkpoint"),
    ("Find LR", "Sweep the learning rate from the current weights, then offer the suggestion (f)", "find_lr"),
    ("Toggle log scale", "Log scale for the loss plot (l)", "log_scale"),
    ("Toggle x span", "The plots' x axis: follow the run, or show every planned epoch (x)", "x_span"),
    ("Quit", "Stop the run (asks first) and quit (q)", "quit_run"),
)


class TuituneApp(App[None]):
    """`mode` is "picker", "train" or "replay". `runner` and `make_run_dir` are injectable for tests."""

    TITLE = "tuitune"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(self, mode: str = "picker", *, profile_dirs: Sequence[Path] = (), overrides: Sequence[str] = (),
                 out: str | None = None, profile: RunProfile | None = None, run_dir: Path | None = None,
                 resume: Path | None = None, events: Sequence[Event] = (), speed: float = 0.0,
                 runner: Runner = default_runner, make_run_dir: RunDirMaker = default_run_dir,
                 control: Control | None = None) -> None:
        super().__init__()
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

            self.push_screen(PickerScreen(self.profile_dirs, self.overrides, self.start_run))
        elif self.mode == "train":
            assert self.profile is not None
            self.start_run(self.profile, self.run_dir)
        else:
            self.open_dashboard(events=self.events, speed=self.speed, control=self.control)

    def start_run(self, profile: RunProfile, run_dir: Path | None = None) -> None:
        run = LiveRun(profile=profile, run_dir=run_dir, out=self.out, resume=self.resume, runner=self.runner,
                      make_run_dir=self.make_run_dir)
        self.open_dashboard(run=run, control=self.control)

    def open_dashboard(self, **kwargs: object) -> None:
        from tuitune.ui.dashboard import DashboardScreen  # plotext loads here, after the picker's first frame

        self.dashboard = DashboardScreen(**kwargs)  # type: ignore[arg-type]
        self.push_screen(self.dashboard)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        dashboard = self.dashboard
        if dashboard is not None and screen is dashboard:
            for title, help_text, action in DASHBOARD_COMMANDS:
                yield SystemCommand(title, help_text, getattr(dashboard, f"action_{action}"))
        if getattr(screen, "action_start", None) is not None:
            yield SystemCommand("Start profile", "Train the highlighted profile (enter)", screen.action_start)

    async def action_quit(self) -> None:
        """Quit from anywhere: a live run is stopped at its next step first (bounded wait), never left hanging."""
        dashboard = self.dashboard
        if dashboard is None:
            self.exit(return_code=0)
            return
        code = dashboard.exit_code()
        if dashboard.live:
            await dashboard.shutdown()
            code = 130
        self.exit(return_code=code)
