"""The control socket's input, bounded and checked (a real server on a real Unix socket, in this process): a bad
command is one `Refused` line to its sender and one refusal noted for the run's log, nothing queued; lines have a
maximum length and a deadline, clients a cap and an idle timeout; a proper client still steers afterwards."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.remote.conftest import wait_for
from tuitune.engine.commands import Control, Pause, ScaleGroupLR
from tuitune.remote import attached
from tuitune.remote import server as server_mod
from tuitune.remote.client import RunClient, RunRefused
from tuitune.remote.server import RunServer


@pytest.fixture
def served(tmp_path: Path):
    control = Control()
    (tmp_path / "events.jsonl").write_text("")
    srv = RunServer(tmp_path, control)
    yield srv, control
    srv.close(drain_s=0.5)


def viewer(srv: RunServer) -> RunClient:
    client = RunClient(srv.path)
    assert client.read() == {"type": "Live"}
    return client


def closed(client: RunClient) -> bool:
    return client.read() is None


def test_bad_commands_are_refused_one_line_each_and_change_nothing(served) -> None:
    srv, control = served
    a = viewer(srv)
    lines = [
        b'{"type":"ScaleGroupLR","group":"head","factor":NaN}',
        b'{"type":"ScaleGroupLR","group":"head","factor":-5}',
        b'{"type":"Reboot"}',
        b"\x00\xff\xfe garbage",
        b'{"type":"Pause"',
        b"[" * 1000 + b"]" * 1000,
    ]
    for line in lines:
        a.send_raw(line + b"\n")
    replies = [a.read() for _ in lines]
    assert [r["type"] for r in replies] == ["Refused"] * len(lines)
    assert replies[0]["reason"] == "ScaleGroupLR: 'factor' must be a finite number, got NaN"
    assert replies[0]["command"] == "ScaleGroupLR" and "'factor' must be in (0, 100]" in replies[1]["reason"]
    assert "unknown command type" in replies[2]["reason"] and "nested deeper" in replies[5]["reason"]
    assert control.drain() == [] and srv.commands == []
    noted = control.drain_refusals()
    assert [n.reason for n in noted] == [r["reason"] for r in replies]
    assert {n.sender for n in noted} == {"socket client 1"}
    a.send(ScaleGroupLR("head", 1.5))  # the same client, still connected, steers
    wait_for(lambda: srv.commands == ["ScaleGroupLR"], 10, "a good command")
    assert control.drain() == [ScaleGroupLR("head", 1.5)]
    a.close()


def test_a_line_too_long_drops_its_client_and_others_steer_on(served) -> None:
    srv, control = served
    a = viewer(srv)
    a.send_raw(b"x" * (attached.MAX_LINE + 1000))  # no newline: refused once it is past the limit
    reply = a.read()
    assert reply["type"] == "Refused" and f"longer than {attached.MAX_LINE} bytes" in reply["reason"]
    assert closed(a)
    b = viewer(srv)
    b.send_raw(b'{"type":"Pause"}\n{"x":"' + b"y" * (attached.MAX_LINE + 10) + b'"}\n')
    assert "longer than" in b.read()["reason"] and closed(b)
    assert control.drain() == [Pause()]  # the line before it was taken
    c = viewer(srv)
    c.send(Pause())
    wait_for(lambda: srv.commands == ["Pause", "Pause"], 10, "a proper client's command")


def test_slow_and_idle_clients_are_dropped_but_a_reading_viewer_stays(served, monkeypatch) -> None:
    srv, _ = served
    monkeypatch.setattr(attached, "LINE_S", 0.5)
    monkeypatch.setattr(attached, "IDLE_S", 1.0)
    monkeypatch.setattr(attached, "POLL_MS", 50)
    reading = viewer(srv)
    slow = viewer(srv)
    slow.send_raw(b'{"type":')  # and never the rest
    reply = slow.read()
    assert reply["type"] == "Refused" and "unfinished" in reply["reason"] and closed(slow)
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(srv.path))  # reads nothing, not even its greeting
    wait_for(lambda: len(srv.clients) == 2, 10, "the idle client registered")
    wait_for(lambda: len(srv.clients) == 1, 20, "the idle client dropped")
    assert srv.clients[0].dropped == "" and not srv.clients[0].closed
    time.sleep(1.5)  # past IDLE_S: the viewer that read what it was sent is not idle
    assert len(srv.clients) == 1 and not srv.clients[0].closed
    reading.send(Pause())
    wait_for(lambda: srv.commands == ["Pause"], 10, "the viewer's command")
    idle.close()


def test_the_number_of_clients_is_capped(served, monkeypatch) -> None:
    srv, _ = served
    monkeypatch.setattr(server_mod, "MAX_CLIENTS", 3)
    clients = [viewer(srv) for _ in range(3)]
    with pytest.raises(RunRefused, match="too many clients"):
        RunClient(srv.path)
    clients.pop().close()
    wait_for(lambda: len(srv.clients) == 2, 10, "a place freed")
    clients.append(viewer(srv))
    clients[-1].send(Pause())
    wait_for(lambda: srv.commands == ["Pause"], 10, "the new client's command")
    for c in clients:
        c.close()


def test_a_client_that_keeps_sending_bad_lines_is_dropped(served, monkeypatch) -> None:
    srv, control = served
    monkeypatch.setattr(server_mod, "MAX_REFUSED", 3)
    a = viewer(srv)
    for _ in range(10):
        a.send_raw(b"nonsense\n")
    replies = list(a.messages())
    assert len(replies) == 4 and all(r["type"] == "Refused" for r in replies)
    assert len(control.drain_refusals()) == 4
    assert replies[-1]["reason"].startswith("command: not JSON")


def test_a_dropped_client_that_reads_gets_its_reason_even_mid_history(tmp_path: Path, monkeypatch) -> None:
    """A run with a long history: a client sends a line past the limit before reading anything, then reads at a
    modest pace. The history is cut at a line's end so its `Refused` line comes within REPLY_S, then the end."""
    monkeypatch.setattr(attached, "REPLY_S", 1.5)
    line = b'{"type":"Warned","message":"' + b"w" * 200 + b'"}\n'
    (tmp_path / "events.jsonl").write_bytes(line * (8_000_000 // len(line)))  # 8 MB of history
    srv = RunServer(tmp_path, Control(), resumed=True)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(srv.path))
        sock.settimeout(10)
        try:
            sock.sendall(b"x" * (attached.MAX_LINE + 1))
        except OSError:
            pass
        got = b""
        while data := sock.recv(16384):  # about 3 MB/s: the whole history would take longer than REPLY_S
            got += data
            time.sleep(0.005)
        last = got.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        assert last.startswith(b'{"type":"Refused"') and b"longer than" in last
        assert len(got) < 2_000_000
        sock.close()
    finally:
        srv.close(drain_s=0.5)
