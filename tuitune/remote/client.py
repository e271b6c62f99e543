"""Attach to a run process: read its history and live events, send it commands.

`RunClient` is the socket; `follow` is the body of a dashboard's worker thread when the engine runs elsewhere:
it emits the run's events (history first, between `HistoryStarted` and `HistoryEnded` markers: condensed, with
`LinesSkipped` where readings no plot keeps were passed over, so the first frame of a long run comes in time that
does not grow with it; then every live event) and forwards what the dashboard puts on its `ClientControl`
(commands; `request_stop`: stop the run; `request_detach`: leave it running). A connection lost while the run
lives (this viewer was dropped for falling behind) is re-made, and the history comes again.
Plain Python: no Textual, no torch.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.engine.commands import Command, Control
from tuitune.engine.events import RunFailed, RunFinished, event_from_dict, to_json
from tuitune.engine.record.history import LinesSkipped
from tuitune.errors import UserError
from tuitune.remote import protocol
from tuitune.runs.process import log_tail, socket_path
from tuitune.runs.status import last_event_time, run_status

CONNECT_TIMEOUT_S = 60.0  # a fresh run process binds its socket before importing torch: this is generous
RECONNECTS = 3
HISTORY_CHUNK = 1024  # history events emitted together: a first frame is a few messages to the UI, not thousands


@dataclass(frozen=True)
class HistoryStarted:
    """A (re)connection: what follows until `HistoryEnded` is the run's recorded past, not news."""

    pid: int
    history: int


@dataclass(frozen=True)
class HistoryChunk:
    """Consecutive events of the history, emitted as one (posting each to a UI costs more than folding it)."""

    events: tuple[Any, ...]


@dataclass(frozen=True)
class HistoryEnded:
    """Everything after this marker happens now."""


class RunRefused(ConnectionRefusedError):
    """The run process answered and turned this connection down (its reason in the message): no use retrying."""


class ClientControl(Control):
    """The dashboard's `Control` when the engine runs in another process: `request_stop` stops the run there;
    `request_detach` only closes this connection (the run goes on)."""

    def __init__(self) -> None:
        super().__init__()
        self._detach = threading.Event()

    def request_detach(self) -> None:
        self._detach.set()
        self._wake.set()

    @property
    def detach_requested(self) -> bool:
        return self._detach.is_set()


class RunClient:
    """One connection to a run's control socket. `history`: the run's past as every line of events.jsonl
    (`protocol.FULL`, for scripts) or condensed for a first frame (`protocol.CONDENSED`)."""

    def __init__(self, path: str | Path, timeout: float = 5.0, history: str = protocol.FULL) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.sock.settimeout(None)
        self._lines = self.sock.makefile("rb")
        self._send_lock = threading.Lock()
        first = self.read()
        if first is None or first.get("type") != protocol.HELLO:
            reason = (first or {}).get("reason", "no greeting")
            self.close()
            raise RunRefused(f"the run refused the connection: {reason}")
        self.hello = first
        self.send_raw(protocol.message(protocol.HISTORY, mode=history))

    def read(self) -> dict[str, Any] | None:
        """The next line as a dict; None at the end of the connection."""
        try:
            raw = self._lines.readline()
        except (OSError, ValueError):
            return None
        if not raw:
            return None
        return json.loads(raw)

    def messages(self) -> Iterator[dict[str, Any]]:
        while (data := self.read()) is not None:
            yield data

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send(self, command: Command) -> None:
        # a command serializes as an event does: {"type": its class name, its fields...}
        self.send_raw((to_json(command) + "\n").encode())

    def stop_run(self) -> None:
        self.send_raw(protocol.message(protocol.STOP))

    def close(self) -> None:
        for close in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self._lines.close, self.sock.close):
            try:
                close()
            except OSError:
                pass


def connect(
    run_dir: Path,
    *,
    process: subprocess.Popen | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
    history: str = protocol.FULL,
) -> RunClient:
    """Connect to the run in `run_dir`, waiting (up to `timeout`) for a starting run process to open its socket.
    A `process` we just spawned that exits first is reported with the end of its run.log. `history`: as
    `RunClient`'s."""
    deadline = time.monotonic() + timeout
    while True:
        path = socket_path(run_dir)
        if path is not None and path.exists():
            try:
                return RunClient(path, history=history)
            except RunRefused as e:
                raise UserError(f"{run_dir}: {e}") from None
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # the socket is not listening yet (or any more): wait below
        if process is not None and process.poll() is not None:
            raise UserError(
                f"{run_dir}: the run process exited ({process.returncode}) before it could be attached "
                f"to: {log_tail(run_dir) or 'see run.log'}"
            )
        if process is None and (status := run_status(run_dir)) != "live":
            raise UserError(f"{run_dir}: the run is not live ({status})")
        if time.monotonic() > deadline:
            raise UserError(f"{run_dir}: no control socket after {timeout:.0f} s (see {run_dir}/run.log)")
        time.sleep(0.05)


Emit = Callable[[Any], None]


def follow(run_dir: Path, emit: Emit, control: Control, *, process: subprocess.Popen | None = None) -> str:
    """Attach and pump until the run ends ("ended"), the dashboard detaches ("detached") or the run dies
    ("lost"). Commands on `control` go to the run in order; a stop request is sent once."""
    client = connect(run_dir, process=process, history=protocol.CONDENSED)
    reconnects = 0
    while True:
        outcome = _pump(client, emit, control)
        if outcome != "lost" or reconnects >= RECONNECTS:
            return outcome
        status = run_status(run_dir)
        if status != "live":
            if process is not None:
                process.poll()  # reap our own child, so its pid reads as gone
                if _launcher_ending(run_dir, process, emit):
                    return "ended"
            if status == "dead":
                last_event = last_event_time(run_dir) or 0
                emit(
                    RunFailed(
                        message=f"the run process died without a summary (last event at "
                        f"{time.strftime('%H:%M:%S', time.localtime(last_event))})",
                        run_dir=str(run_dir),
                        kind="error",
                    )
                )
            return outcome
        reconnects += 1
        time.sleep(0.2)
        try:
            client = connect(run_dir, timeout=10.0, history=protocol.CONDENSED)
        except UserError:
            return "lost"


def _launcher_ending(run_dir: Path, process: subprocess.Popen, emit: Emit) -> bool:
    """A multi-rank run whose rank 0 went away without its end (another rank died): the launcher we started
    records the end, naming the rank, once every rank is gone. Wait for it and show that end."""
    from tuitune.engine.record.runlog import read_events

    try:
        process.wait(timeout=90)
        last = read_events(run_dir)[-1]
    except (subprocess.TimeoutExpired, UserError, IndexError):
        return False
    if isinstance(last, RunFailed) and last.kind == "rank_lost":
        emit(last)
        return True
    return False


def _pump(client: RunClient, emit: Emit, control: Control) -> str:
    done = threading.Event()
    forwarder = threading.Thread(target=_forward, args=(client, control, done), name="tuitune-forward", daemon=True)
    forwarder.start()
    ended = False
    past: list[Any] | None = []  # the history's events not emitted yet; None once it has ended
    try:
        emit(HistoryStarted(pid=int(client.hello.get("pid", 0)), history=int(client.hello.get("history", 0))))
        for data in client.messages():
            try:
                event = _MARKERS.get(data.get("type"), event_from_dict)(data)
            except (KeyError, TypeError, ValueError):
                continue  # a newer run's event this version does not know
            ended = ended or isinstance(event, (RunFinished, RunFailed))
            if past is not None and not isinstance(event, HistoryEnded):
                past.append(event)
                if len(past) >= HISTORY_CHUNK:
                    emit(HistoryChunk(tuple(past)))
                    past.clear()
                continue
            if past:
                emit(HistoryChunk(tuple(past)))
            past = None
            emit(event)
        if past:  # the connection ended inside the history (a run ending, a dropped viewer): what came of it
            emit(HistoryChunk(tuple(past)))
    finally:
        done.set()
        client.close()
        forwarder.join(timeout=1.0)
    if ended:
        return "ended"
    detach = getattr(control, "detach_requested", False)
    return "detached" if detach else "lost"


_MARKERS: dict[Any, Callable[[dict[str, Any]], Any]] = {  # the protocol's own lines among the events
    protocol.LIVE: lambda data: HistoryEnded(),
    protocol.SKIPPED: lambda data: LinesSkipped(readings=int(data["readings"]), lines=int(data["lines"])),
}


def _forward(client: RunClient, control: Control, done: threading.Event) -> None:
    stop_sent = False
    while not done.is_set():
        control.wait(0.1)
        try:
            for command in control.drain():
                client.send(command)
            if control.stop_requested and not stop_sent:
                stop_sent = True
                client.stop_run()
            if getattr(control, "detach_requested", False):
                client.send_raw(protocol.message(protocol.DETACH))
                client.close()
                return
        except OSError:
            return
