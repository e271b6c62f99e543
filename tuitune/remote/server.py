"""The control socket's server, in the run process beside the engine: an event sink and a source of commands.

`RunServer(event)` is called by the engine's thread for every event, after the run recorder has written it to
`events.jsonl`; all it does there is count it and offer it to each attached client (`tuitune/remote/attached.py`:
a bounded queue, a sender and a reader thread per client), so a slow or stuck viewer never slows training. Commands
from whichever client go to the engine's `Control` in the order they arrive.

Input is bounded: at most `MAX_CLIENTS` connections (more are refused with a line); the per-client bounds (line
length, unfinished lines, idle and stuck readers) are `attached.py`'s. Every line is checked by the engine's
`commands` module (JSON depth and constants, types, finite values, ranges): a refused one is answered with one
`Refused` line to its sender and noted on the `Control` for the run's log (`CommandRefused`); the run is unchanged;
more than `MAX_REFUSED` from one client drops it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

from tuitune.engine.commands import BadCommand, Control, command_from_dict, load_json_line
from tuitune.engine.events import Event
from tuitune.remote import protocol
from tuitune.remote.attached import STALL_S, AttachedClient, Outgoing
from tuitune.remote.confirm import BadId, Pending, take_id, take_sender

MAX_CLIENTS = 32  # connections at once; one more is refused with a line
MAX_REFUSED = 20  # refused lines from one client before it is dropped (each is one event in the run's log)


class RunServer:
    """Listen on the run's control socket; broadcast events; put clients' commands on `control`."""

    def __init__(self, run_dir: Path, control: Control, *, resumed: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.control = control
        self.path = protocol.socket_path_for(self.run_dir)
        self.lock = threading.Lock()
        self.clients: list[AttachedClient] = []
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
        out = Outgoing(event)
        with self.lock:
            self.count += 1
            out.seq = self.base + self.count
            clients = list(self.clients)
        for client in clients:
            client.offer(out)
        self._reply(event)

    def _reply(self, event: Event) -> None:
        """The engine's answer to a command sent with an id: a `Reply` line to its sender, after the event."""
        answer = self.pending.answer(event)
        if answer is not None:
            client, line = answer
            # `client` is the AttachedClient that sent it (`Pending` keeps it untyped)
            client.offer(Outgoing(event, line))  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- clients
    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(STALL_S)  # a send that makes no progress for this long drops the client
            if not protocol.peer_allowed(sock):
                self.refused += 1
                self.log(f"refused a connection from uid {protocol.peer_uid(sock)}")
                _refuse(sock, "another user's run")
                continue
            with self.lock:
                full = len(self.clients) >= MAX_CLIENTS
            if full:
                self.refused += 1
                if self.refused % 100 == 1:  # run.log stays bounded under a flood of connections
                    self.log(f"refused a connection: {MAX_CLIENTS} clients already ({self.refused} refused so far)")
                _refuse(sock, f"too many clients (at most {MAX_CLIENTS})")
                continue
            with self.lock:
                self.accepted += 1
                # Registered under the same lock the sink counts under: it gets every event after `history`.
                client = AttachedClient(self, sock, self.base + self.count, self.accepted)
                self.clients.append(client)
            for target, name in ((client.send_loop, "send"), (client.read_loop, "read")):
                threading.Thread(target=target, name=f"tuitune-client{client.number}-{name}", daemon=True).start()

    def handle(self, raw: bytes, client: AttachedClient) -> bool:
        """One line from a client. False: the client leaves (it detached, or is dropped)."""
        sender = f"socket client {client.number}"
        try:
            data = load_json_line(raw)
        except BadCommand as e:
            self.control.refuse(e.command, str(e), sender)
            return self._refused(client, e)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == protocol.DETACH:
            return False
        if kind == protocol.HISTORY:
            client.ask(data)
            return True
        if kind == protocol.STOP:
            self.commands.append(protocol.STOP)
            self.log(f"client {client.number}: stop the run")
            self.control.request_stop()
            return True
        request_id = None
        with self.lock:  # one order for all clients: the engine's queue (and its answers, remembered first)
            try:
                request_id = take_id(data) if isinstance(data, dict) else None
                tag = take_sender(data) if isinstance(data, dict) else ""
                sender = f"{tag} ({sender})" if tag else sender
                command = command_from_dict(data)  # checked: types, finite values, ranges
            except (BadCommand, BadId) as e:
                error = e if isinstance(e, BadCommand) else BadCommand("command", str(e))
                self.control.refuse(error.command, str(error), sender)  # noted for the run's log
                return self._refused(client, error, request_id)
            self.pending.add(command, client, request_id)
            self.control.put(command, sender)
            self.commands.append(type(command).__name__)
        return True

    def _refused(self, client: AttachedClient, error: BadCommand, request_id: str | int | None = None) -> bool:
        """One `Refused` line back to the sender (with its `id`, when it gave one); a client that keeps sending bad
        lines is dropped."""
        client.refused += 1
        self.log(f"client {client.number}: refused: {error}")
        drop = f"more than {MAX_REFUSED} refused lines" if client.refused > MAX_REFUSED else ""
        said = {"id": request_id} if request_id is not None else {}
        client.reply(protocol.message(protocol.REFUSED, command=error.command, reason=str(error), **said), drop=drop)
        return not drop

    def forget(self, client: AttachedClient) -> None:
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
        sock.settimeout(1.0)  # never hold up the accept loop
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
