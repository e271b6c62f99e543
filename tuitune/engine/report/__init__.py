"""The run told to the world outside its run directory: experiment trackers (`[report]`, `trackers.py`,
`backends.py`) and a webhook (`[notify]`, `webhook.py`), all sinks on the run's event stream fed by one worker
thread per run (`relay.py`), never by the training thread.

The session wraps its sink with `relayed`: every event goes to the run's record first, then to the relay; the
relay's warnings come back as `Warned` events through the record; the run's end waits (bounded) for the trackers
and the webhook to finish, so their warnings are recorded before it. Torch-free: the trackers' libraries load on
the relay's thread when a run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuitune.config import RunProfile
from tuitune.engine.events import Event, RunFailed, RunFinished, Warned
from tuitune.engine.report.relay import ENDS, Relay, Sink
from tuitune.engine.report.trackers import TrackerSink
from tuitune.engine.report.webhook import Webhook

__all__ = ["open_relay", "relayed"]

LOG = "report.log"  # what the trackers' libraries print during a run


def open_relay(profile: RunProfile, run_dir: Path) -> Relay | None:
    """The relay for the trackers and the webhook `profile` asks for (its thread started); None when it asks
    for none."""
    if not profile.report.to and not profile.notify.webhook:
        return None
    sinks: list[Sink] = [TrackerSink.named(name, profile, run_dir) for name in profile.report.to]
    if profile.notify.webhook:
        sinks.append(Webhook(profile.notify, profile.name, run_dir))
    return Relay(sinks, run_dir / LOG)


def relayed(inner: Callable[[Event], None], relay: Relay) -> Callable[[Event], None]:
    """`inner` (the record and the UI or console), then `relay`; the relay's warnings as `Warned` events."""

    def emit(event: Event) -> None:
        if type(event) in ENDS:
            assert isinstance(event, (RunFinished, RunFailed))
            for message in relay.finish(event):
                inner(_warned(message, relay))
            inner(event)
            return
        inner(event)
        relay(event)
        if relay.has_warnings:
            for message in relay.warnings():
                inner(_warned(message, relay))

    return emit


def _warned(message: str, relay: Relay) -> Warned:
    epoch, step = relay.position
    return Warned(message=message, epoch=epoch, global_step=step, kind="report")
