"""One client attached to the run's control socket, as the server sees it: its queue, its two threads, its bounds.

The server (`tuitune/remote/server.py`) accepts connections, counts events and puts commands on the engine's
`Control`; everything about one connection lives here. `AttachedClient.offer` is called by the engine's thread for
every event: a lock and a deque append, so a slow or stuck viewer never slows training. The client's sender thread
sends the history from `events.jsonl` (full or condensed as the client asks: `backlog`), then its queue from the
first event the history did not hold; its reader thread passes each line to the server's `handle`. A client that
falls behind has its queued metric and layer updates coalesced (latest wins); one more than `MAX_QUEUE` events
behind, or stuck for `STALL_S`, is dropped (it may reattach and gets the whole history again). A line longer than
`MAX_LINE` bytes, or begun and left unfinished for `LINE_S`, drops its client; so does not reading what was sent to
it for `IDLE_S` (a viewer that reads and never writes stays).
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
from pathlib import Path
from typing import Protocol

from tuitune.engine.events import Event, LayersChanged, LayersMeasured, MetricsUpdated, to_json
from tuitune.remote import backlog, protocol

MAX_QUEUE = 5000  # events a client may lag behind (after coalescing) before it is dropped
STALL_S = 30.0  # a client whose socket accepted nothing for this long, with events waiting, is dropped
COALESCED = (MetricsUpdated, LayersChanged, LayersMeasured)
CHUNK = 1 << 16  # bytes read from a client at a time
MAX_LINE = 64 * 1024  # bytes in one line from a client (a command is a few dozen): longer drops the client
LINE_S = 30.0  # a line begun and not finished in this long (a stuck or hostile writer) drops the client
IDLE_S = 30.0  # a client that has not read what was sent to it for this long is dropped (as STALL_S)
REPLY_S = 5.0  # how long a dropped client's last reply may take to go out before the socket is closed anyway
POLL_MS = 500  # how often a client's reader wakes to check the bounds above


class Server(Protocol):
    """What a client needs of the server that accepted it (`RunServer`), passed in explicitly."""

    run_dir: Path

    def handle(self, raw: bytes, client: AttachedClient) -> bool: ...

    def forget(self, client: AttachedClient) -> None: ...

    def log(self, text: str) -> None: ...


class Outgoing:
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


class AttachedClient:
    """One connection to the control socket: its queue, its sender and reader threads, and its bounds."""

    def __init__(self, server: Server, sock: socket.socket, history: int, number: int) -> None:
        self.server, self.sock, self.history, self.number = server, sock, history, number
        self.cond = threading.Condition()
        self.queue: collections.deque[Outgoing] = collections.deque()
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
    def offer(self, out: Outgoing) -> None:
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
            self.queue.append(Outgoing(None, line))
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
        if now - self.progress > IDLE_S and unread_bytes(self.sock):
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


def unread_bytes(sock: socket.socket) -> int:
    """Bytes sent to the peer that it has not read yet (Linux `SIOCOUTQ`; 0 when it cannot be told)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])
