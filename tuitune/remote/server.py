"""The control socket's server, in the run process beside the engine: an event sink and a source of commands.

`RunServer(event)` is called by the engine's thread for every event, after the run recorder has written it to
`events.jsonl`; all it does there is count it and hand it to each client's bounded queue (a lock and a deque
append per client), so a slow or stuck viewer never slows training. Each client has two threads of its own: a
sender (the history from `events.jsonl`, then its queue) and a reader (commands -> the engine's `Control`, in the
order they arrive, from whichever client). A client that falls behind has its queued metric and layer updates
coalesced (latest wins); one more than `MAX_QUEUE` events behind, or stuck for `STALL_S`, is dropped (it may
reattach and gets the whole history again).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from tuitune.engine.commands import Control
from tuitune.engine.events import Event, LayersChanged, LayersMeasured, MetricsUpdated, to_json
from tuitune.remote import protocol
from tuitune.remote.confirm import BadId, Pending, reply_line, take_id

MAX_QUEUE = 5000  # events a client may lag behind (after coalescing) before it is dropped
STALL_S = 30.0  # a client whose socket accepted nothing for this long, with events waiting, is dropped
COALESCED = (MetricsUpdated, LayersChanged, LayersMeasured)
CHUNK = 1 << 16


class _Out:
    """An event on its way to the clients, serialised once, lazily, by the first sender that needs it."""

    __slots__ = ("_line", "event")

    def __init__(self, event: Event | None, line: bytes | None = None) -> None:
        self.event = event  # with `line`: that line goes out instead of the event's (a reply to one client)
        self._line = line

    @property
    def line(self) -> bytes:
        if self._line is None:
            self._line = (to_json(self.event) + "\n").encode()  # type: ignore[arg-type]
        return self._line


class _Client:
    def __init__(self, server: RunServer, sock: socket.socket, history: int, number: int) -> None:
        self.server, self.sock, self.history, self.number = server, sock, history, number
        self.cond = threading.Condition()
        self.queue: collections.deque[_Out] = collections.deque()
        self.closed = False
        self.dropped = ""
        self.sending = False
        self.live = False  # its history is sent: from here on it sees events as they happen
        self._threads = 2  # the sender and the reader: the last one out closes the socket
        self.progress = time.monotonic()

    # ---------------------------------------------------------------- called by the engine's thread
    def offer(self, out: _Out) -> None:
        with self.cond:
            if self.closed:
                return
            now = time.monotonic()
            if self.queue and now - self.progress > STALL_S:
                return self._drop(f"stuck for {STALL_S:.0f} s")
            if isinstance(out.event, COALESCED):
                self._coalesce(type(out.event))
            if len(self.queue) >= MAX_QUEUE:
                return self._drop(f"more than {MAX_QUEUE} events behind")
            self.queue.append(out)
            self.cond.notify()

    def _coalesce(self, kind: type) -> None:
        """Drop a queued, unsent event of `kind` from the trailing run of coalescible ones (order is kept)."""
        for i in range(len(self.queue) - 1, -1, -1):
            queued = self.queue[i].event
            if not isinstance(queued, COALESCED):
                return
            if type(queued) is kind:
                del self.queue[i]
                return

    def _drop(self, why: str) -> None:
        self.dropped = why
        self.server.log(f"client {self.number} dropped: {why}")
        self._close_locked()

    # ---------------------------------------------------------------- the client's own threads
    def send_loop(self) -> None:
        try:
            self.sock.sendall(
                protocol.message(
                    protocol.HELLO,
                    version=protocol.PROTOCOL_VERSION,
                    pid=os.getpid(),
                    run_dir=str(self.server.run_dir),
                    history=self.history,
                )
            )
            self._send_history()
            self.sock.sendall(protocol.message(protocol.LIVE))
            self.live = True
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        return
                    batch = list(self.queue)
                    self.queue.clear()
                    self.sending = True
                self.sock.sendall(b"".join(out.line for out in batch))
                self.progress, self.sending = time.monotonic(), False
        except OSError:
            pass
        finally:
            self._leave()

    def _send_history(self) -> None:
        """The first `history` lines of events.jsonl, as written (the recorder wrote them before we counted)."""
        left = self.history
        if not left:
            return
        with open(self.server.run_dir / "events.jsonl", "rb") as f:
            while left > 0:
                data = f.read(CHUNK)
                if not data:
                    break
                lines = data.count(b"\n")
                if lines >= left:
                    cut = 0
                    for _ in range(left):
                        cut = data.index(b"\n", cut) + 1
                    data, lines = data[:cut], left
                left -= lines
                self.sock.sendall(data)
                self.progress = time.monotonic()

    def read_loop(self) -> None:
        try:
            for raw in self.sock.makefile("rb"):
                if not self.server.handle(raw, self):
                    break
        except (OSError, ValueError):
            pass
        finally:
            self._leave()

    def _leave(self) -> None:
        with self.cond:
            self._close_locked()
            self._threads -= 1
            last = self._threads == 0
        if last:
            self.sock.close()

    def close(self) -> None:
        with self.cond:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.forget(self)

    def drained(self) -> bool:
        with self.cond:
            return self.closed or not (self.queue or self.sending)


class RunServer:
    """Listen on the run's control socket; broadcast events; put clients' commands on `control`."""

    def __init__(self, run_dir: Path, control: Control, *, resumed: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.control = control
        self.path = protocol.socket_path_for(self.run_dir)
        self.lock = threading.Lock()
        self.clients: list[_Client] = []
        self.base = _complete_lines(self.run_dir / "events.jsonl") if resumed else 0
        self.count = 0
        self.accepted = 0
        self.refused = 0
        self.commands: list[str] = []  # what clients sent, in the order put on the queue (tests, run.log)
        self.pending = Pending()  # those commands until the engine answers each (a `Reply` to a sender that gave an id)
        self._closing = threading.Event()
        self.listener = self._bind()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tuitune-accept", daemon=True)
        self._acceptor.start()

    def _bind(self) -> socket.socket:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a killed run (bind would fail with EADDRINUSE)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the file is created 0600 at bind time: no window where others may connect
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.settimeout(0.2)
        return listener

    # ---------------------------------------------------------------- the engine's side
    def __call__(self, event: Event) -> None:
        out = _Out(event)
        with self.lock:
            self.count += 1
            clients = list(self.clients)
        for client in clients:
            client.offer(out)
        self._reply(event)

    def _reply(self, event: Event) -> None:
        """The engine's answer to a command sent with an id: a `Reply` line to its sender, after the event."""
        answer = self.pending.answer(event)
        if answer is not None:
            client, line = answer
            client.offer(_Out(event, line))  # type: ignore[attr-defined]  # `client` is the _Client that sent it

    # ---------------------------------------------------------------- clients
    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            if not protocol.peer_allowed(sock):
                self.refused += 1
                self.log(f"refused a connection from uid {protocol.peer_uid(sock)}")
                _refuse(sock, "another user's run")
                continue
            with self.lock:
                self.accepted += 1
                # Registered under the same lock the sink counts under: it gets every event after `history`.
                client = _Client(self, sock, self.base + self.count, self.accepted)
                self.clients.append(client)
            for target, name in ((client.send_loop, "send"), (client.read_loop, "read")):
                threading.Thread(target=target, name=f"tuitune-client{client.number}-{name}", daemon=True).start()

    def handle(self, raw: bytes, client: _Client) -> bool:
        """One line from a client. False: the client leaves."""
        try:
            data = json.loads(raw)
            kind = data.get("type") if isinstance(data, dict) else None
        except ValueError:
            return True
        if kind == protocol.DETACH:
            return False
        if kind == protocol.STOP:
            self.commands.append(protocol.STOP)
            self.log(f"client {client.number}: stop the run")
            self.control.request_stop()
            return True
        request_id = None
        try:
            request_id = take_id(data)
            command = protocol.command_from_dict(data)
        except (ValueError, TypeError, AttributeError) as e:
            self.log(f"client {client.number}: ignored {raw[:200]!r}")
            if request_id is not None or isinstance(e, BadId):  # a sender that waits for an answer gets one
                client.offer(_Out(None, reply_line(request_id if request_id is not None else "", False, reason=str(e))))
            return True
        with self.lock:  # one order for all clients: the engine's queue (and its answers, remembered first)
            self.commands.append(type(command).__name__)
            self.pending.add(command, client, request_id)
            self.control.put(command)
        return True

    def forget(self, client: _Client) -> None:
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] control: {text}", file=sys.stderr, flush=True)

    def close(self, drain_s: float = 5.0) -> None:
        """Stop accepting, give clients up to `drain_s` to receive what is queued (the final event), then close."""
        self._closing.set()
        self._acceptor.join(timeout=1.0)
        try:
            self.listener.close()
        finally:
            if self.path.exists():
                self.path.unlink()
        deadline = time.monotonic() + drain_s
        with self.lock:
            clients = list(self.clients)
        while time.monotonic() < deadline and not all(c.drained() for c in clients):
            time.sleep(0.02)
        for client in clients:
            client.close()


def _refuse(sock: socket.socket, reason: str) -> None:
    try:
        sock.sendall(protocol.message(protocol.REFUSED, reason=reason))
    except OSError:
        pass
    finally:
        sock.close()


def _complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n
