"""The dashboard's line to its run: the `Control` commands go on, the worker that runs (or follows) the engine, and
whether the screen is leaving it (stopping, or detaching from a run process that goes on).

One object that the dashboard screen and its key actions (tuitune/ui/key_actions.py) are both given, so neither
reads the other's attributes. No Textual here beyond the worker it waits for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tuitune.engine.commands import Control
from tuitune.exits import ExitCode, run_exit_code
from tuitune.remote.client import ClientControl
from tuitune.ui.runner import LiveRun, is_detachable
from tuitune.ui.state import DashboardState

if TYPE_CHECKING:
    from textual.worker import Worker

STOP_TIMEOUT_S = 2.0


class RunLink:
    """`control` is None for a replay (nothing to steer). A run in its own process (`detachable`): the worker is its
    client, and leaving may detach instead of stopping it."""

    def __init__(self, run: LiveRun | None, control: Control | None) -> None:
        self.detachable = run is not None and is_detachable(run.runner)
        if control is None and run is not None:
            control = ClientControl() if self.detachable else Control()
        self.control = control
        self.worker: Worker | None = None
        self.quitting = False
        self.detached = False

    def live(self, state: DashboardState) -> bool:
        """Whether keys steer anything: a run, still going, that this screen is not leaving."""
        return self.control is not None and state.live and not self.quitting

    def exit_code(self, state: DashboardState) -> int:
        if self.control is None or self.detached:  # replay; or the run goes on without us
            return ExitCode.OK
        if state.live:
            return ExitCode.INTERRUPTED
        return run_exit_code(state.failed or state.finished)  # as the command line reports the same end

    def stop(self) -> None:
        """Ask the engine to stop at its next step; from now on the screen is leaving."""
        self.quitting = True
        if self.control is not None:
            self.control.request_stop()

    def detach(self) -> None:
        """Leave a run process going: the screen stops steering it and its worker closes the connection (the one way
        to detach: the `d` answer, a lost terminal and an unmounted screen all come here)."""
        self.quitting = self.detached = True
        if isinstance(self.control, ClientControl):  # a run process's client (the only kind one detaches from)
            self.control.request_detach()

    async def wait_for_worker(self, timeout: float) -> None:
        """Until the engine worker has ended, or at most `timeout` seconds: quitting never hangs on a stuck engine."""
        await self.wait_until(lambda: self.worker_ended, timeout)

    @property
    def worker_ended(self) -> bool:
        return self.worker is None or self.worker.is_finished

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Until `done()`, or at most `timeout` seconds, letting the event loop run meanwhile."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
