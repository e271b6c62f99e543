"""The control socket's server, in the run process beside the engine: an event sink and a source of commands.

`RunServer(event)` is called by the engine's thread for every event, after the run recorder has written it to
`events.jsonl`; all it does there is count it and hand it to each client's bounded queue (a lock and a deque
append per client), so a slow or stuck viewer never slows training. Each client has two threads of its own: a
sender (the history from `events.jsonl`, full or condensed as the client asks: `backlog`; then its queue, from the
first event the history did not hold) and a reader (commands -> the engine's `Control`, in the order they arrive,
from whichever client). A client that falls behind has its queued metric and layer updates
coalesced (latest wins); one more than `MAX_QUEUE` events behind, or stuck for `STALL_S`, is dropped (it may
reattach and gets the whole history again).

Input is bounded: at most `MAX_CLIENTS` connections (more are refused with a line); a line longer than `MAX_LINE`
bytes, or begun and left unfinished for `LINE_S`, drops its client; a client that has not read what was sent to it
for `IDLE_S` is dropped (a viewer that reads and never writes stays). Every line is checked by the engine's
`commands` module (JSON depth and constants, types, finite values, ranges): a refused one is answered with one
`Refused` line to its sender and noted on the `Control` for the run's log (`CommandRefused`); the run is unchanged.
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import socket
import struct
import sys
import termios
import threading
import time
from pathlib import Path

from tuitune.engine.commands import BadCommand, Control, command_from_dict, load_json_line
from tuitune.engine.events import Event, LayersChanged, LayersMeasured, MetricsUpdated, to_json
from tuitune.remote import backlog, protocol
from tuitune.remote.confirm import BadId, Pending, take_id, take_sender

MAX_QUEUE = 5000  # events a client may lag behind (after coalescing) before it is dropped
STALL_S = 30.0  # a client whose socket accepted nothing for this long, with events waiting, is dropped
COALESCED = (MetricsUpdated, LayersChanged, LayersMeasured)
CHUNK = 1 << 16  # bytes read from a client at a time
MAX_CLIENTS = 32  # connections at once; one more is refused with a line
MAX_LINE = 64 * 1024  # bytes in one line from a client (a command is a few dozen): longer drops the client
LINE_S = 30.0  # a line begun and not finished in this long (a stuck or hostile writer) drops the client
IDLE_S = 30.0  # a client that has not read what was sent to it for this long is dropped (as STALL_S)
MAX_REFUSED = 20  # refused lines from one client before it is dropped (each is one event in the run's log)
REPLY_S = 5.0  # how long a dropped client's last reply may take to go out before the socket is closed anyway
POLL_MS = 500  # how often a client's reader wakes to check the bounds above


class _Out:
    """An event on its way to the clients, serialised once, lazily, by the first sender that needs it."""

    __slots__ = ("_line", "event", "seq")

    def __init__(self, event: Event | None, line: bytes | None = None) -> None:
        self.event = event  # with `line`: that line goes out instead of the event's (a reply to one client)
        self._line = line
        self.seq = 0  # its line number in events.jsonl (set when the server counts it; 0: a reply, no line)

    @property
    def line(self) -> bytes:
        if self._line is None:
            self._line = (to_json(self.event) + "\n").encode()  # type: ignore[arg-type]  # no line: an event
        return self._line


class _Client:
    def __init__(self, server: RunServer, sock: socket.socket, history: int, number: int) -> None:
        self.server, self.sock, self.history, self.number = server, sock, history, number
        self.cond = threading.Condition()
        self.queue: collections.deque[_Out] = collections.deque()
        self.closed = False
        self.dropped = ""
        self.finishing = ""  # why it is dropped once its last reply is sent
        self.refused = 0  # lines refused from it
        self.sending = False
        self.live = False  # its history is sent: from here on it sees events as they happen
        self.mode = protocol.FULL  # the history it asked for (protocol.HISTORY)...
        self.asked = threading.Event()  # ...once it has asked
        self.sent_through = history  # the last line of events.jsonl its history held: later events go live
        self._threads = 2  # the sender and the reader: the last one out closes the socket
        self.progress = time.monotonic()

    # ---------------------------------------------------------------- called by the engine's thread
    def offer(self, out: _Out) -> None:
        with self.cond:
            if self.closed or self.finishing:
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

    def reply(self, line: bytes, drop: str = "") -> None:
        """A line to this client alone, after what is queued before it; `drop`: then drop it, saying why."""
        with self.cond:
            if self.closed or self.finishing:
                return
            self.queue.append(_Out(None, line))
            self.finishing = drop
            self.cond.notify_all()  # the sender (the reader may wait on it too: see `_finish`)

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
                    # events its history held already stay out; replies to this client alone (seq 0) always go
                    batch = [out for out in self.queue if out.seq == 0 or out.seq > self.sent_through]
                    self.queue.clear()
                    self.sending, finishing = True, self.finishing
                self.sock.sendall(b"".join(out.line for out in batch))
                self.progress, self.sending = time.monotonic(), False
                if finishing:
                    with self.cond:
                        return self._drop(finishing)
        except TimeoutError:  # the socket's timeout (STALL_S): the client took nothing in all that time
            with self.cond:
                if not self.closed:
                    self._drop(f"stuck for {STALL_S:.0f} s")
        except OSError:
            pass
        finally:
            self._leave()

    def _send_history(self) -> None:
        """The first `history` lines of events.jsonl (the recorder wrote them before we counted), in the mode the
        client asks for within `HISTORY_REQUEST_S` (a client that asks nothing gets them in full, as written); cut
        short, at a line's end, once the client is being dropped (its last reply goes out next)."""
        self.asked.wait(protocol.HISTORY_REQUEST_S)
        path = self.server.run_dir / "events.jsonl"
        past = (
            backlog.condensed(path, self.history)
            if self.mode == protocol.CONDENSED
            else backlog.full(path, self.history)
        )
        ended = True  # the last byte sent ended a line
        for data in past.chunks:
            if self.finishing:  # being dropped: end the line in progress, then no more history
                if ended:
                    break
                cut = data.find(b"\n")
                data, ended = (data, False) if cut < 0 else (data[: cut + 1], True)
            self.sock.sendall(data)
            ended = data.endswith(b"\n")
            self.progress = time.monotonic()
        with self.cond:
            self.sent_through = past.lines  # a snapshot newer than our count: its lines are not sent again

    def ask(self, data: dict) -> None:
        """The client's History line: the mode it wants (an unknown one gets the full history)."""
        if data.get("mode") == protocol.CONDENSED:
            self.mode = protocol.CONDENSED
        self.asked.set()

    def read_loop(self) -> None:
        """Lines in, within the bounds (the module says which); wakes every POLL_MS to check them."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        buf, begun = bytearray(), 0.0
        try:
            while not (self.closed or self.finishing):
                ready = poller.poll(POLL_MS)
                now = time.monotonic()
                if ready:
                    data = self.sock.recv(CHUNK)
                    if not data:
                        return
                    begun = begun if buf else now
                    buf += data
                why = ""
                while not why and (end := buf.find(b"\n")) >= 0:
                    line, begun = bytes(buf[:end]), now
                    del buf[: end + 1]
                    if len(line) > MAX_LINE:
                        why = f"a line longer than {MAX_LINE} bytes"
                    elif not self.server.handle(line, self):
                        return  # it detached, or was dropped
                why = why or self._out_of_bounds(buf, begun, now)
                if why:
                    self.reply(protocol.message(protocol.REFUSED, reason=why), drop=why)
        except (OSError, ValueError):
            pass
        finally:
            if self.finishing:
                self._finish()
            self._leave()

    def _finish(self) -> None:
        """The client is being dropped: its writes fail from now on; the sender has REPLY_S to deliver the last
        reply (then it drops the client), or it is dropped now (a client that reads nothing cannot be told)."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
            while self.sock.recv(CHUNK, socket.MSG_DONTWAIT):  # what it sent already: a writer blocked on a full
                pass  # buffer wakes up to its error and can read its reply
        except OSError:
            pass
        deadline = time.monotonic() + REPLY_S
        with self.cond:
            while not self.closed and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            if not self.closed:
                self._drop(f"{self.finishing} (its last reply not taken)")

    def _out_of_bounds(self, buf: bytearray, begun: float, now: float) -> str:
        """Why this client must go now ("" while it keeps within the bounds)."""
        if len(buf) > MAX_LINE:
            return f"a line longer than {MAX_LINE} bytes"
        if buf and now - begun > LINE_S:
            return f"a line left unfinished for {LINE_S:.0f} s"
        if now - self.progress > IDLE_S and _unread(self.sock):
            return f"read nothing for {IDLE_S:.0f} s"
        return ""

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
                client = _Client(self, sock, self.base + self.count, self.accepted)
                self.clients.append(client)
            for target, name in ((client.send_loop, "send"), (client.read_loop, "read")):
                threading.Thread(target=target, name=f"tuitune-client{client.number}-{name}", daemon=True).start()

    def handle(self, raw: bytes, client: _Client) -> bool:
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

    def _refused(self, client: _Client, error: BadCommand, request_id: str | int | None = None) -> bool:
        """One `Refused` line back to the sender (with its `id`, when it gave one); a client that keeps sending bad
        lines is dropped."""
        client.refused += 1
        self.log(f"client {client.number}: refused: {error}")
        drop = f"more than {MAX_REFUSED} refused lines" if client.refused > MAX_REFUSED else ""
        said = {"id": request_id} if request_id is not None else {}
        client.reply(protocol.message(protocol.REFUSED, command=error.command, reason=str(error), **said), drop=drop)
        return not drop

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


def _unread(sock: socket.socket) -> int:
    """Bytes sent to the peer that it has not read yet (Linux `SIOCOUTQ`; 0 when it cannot be told)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


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
