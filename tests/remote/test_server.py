"""The control socket in this process: its mode, who it refuses, how it treats a viewer that does not read."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from tests.remote.conftest import wait_for
from tuitune.engine.commands import Control, Pause, UnfreezeNext
from tuitune.engine.events import CommandApplied, MetricsUpdated, Warned
from tuitune.remote import attached, protocol
from tuitune.remote.client import RunClient, RunRefused
from tuitune.remote.server import RunServer


def metrics(i: int) -> MetricsUpdated:
    return MetricsUpdated(
        epoch=1,
        step=i,
        global_step=i,
        train_loss=1.0,
        train_score=0.5,
        lrs=(0.1,),
        samples_per_s=1.0,
        elapsed_s=float(i),
    )


@pytest.fixture
def served(tmp_path: Path):
    control = Control()
    (tmp_path / "events.jsonl").write_text("")
    srv = RunServer(tmp_path, control)
    yield srv, control
    srv.close(drain_s=0.5)


def test_socket_is_0600_and_commands_keep_their_order(served) -> None:
    srv, control = served
    mode = stat.S_IMODE(os.stat(srv.path).st_mode)
    assert stat.S_ISSOCK(os.stat(srv.path).st_mode) and mode == 0o600
    a, b = RunClient(srv.path), RunClient(srv.path)
    assert a.read() == {"type": "Live"} and b.read() == {"type": "Live"}
    a.send(Pause())
    wait_for(lambda: srv.commands == ["Pause"], 10, "first command")
    b.send(UnfreezeNext())
    wait_for(lambda: len(srv.commands) == 2, 10, "second command")
    assert control.drain() == [Pause(), UnfreezeNext()]
    srv(CommandApplied(command="Pause", epoch=1, global_step=3))  # what the engine confirms, every client sees
    assert a.read()["command"] == b.read()["command"] == "Pause"
    a.close(), b.close()


def test_long_socket_paths_move_to_a_short_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    path = protocol.socket_path_for(deep)
    assert len(str(path)) <= protocol.MAX_SUN_PATH and path.parent != deep
    assert protocol.socket_path_for(tmp_path) == tmp_path.resolve() / "control.sock"


def as_nobody(path: Path) -> str:
    """Fork; the child becomes uid/gid 65534 (nobody), connects to `path` and reports the first line it reads."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls from here on, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            try:
                s.connect(str(path))
                out = s.recv(4096).split(b"\n")[0]
            except OSError as e:
                out = f"connect failed {e.errno}".encode()
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_peer_check_refuses_another_uid(tmp_path: Path) -> None:
    """A real process running as `nobody` connects (the socket is made world-writable for the test, as a
    misconfigured umask might): the server refuses it by SO_PEERCRED. With the real mode 0600 it cannot even
    connect."""
    if os.getuid() != 0:
        pytest.skip("needs root to start a process as another user")
    folder = Path("/tmp") / f"tuitune-peer-{os.getpid()}"
    folder.mkdir(mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    (folder / "events.jsonl").write_text("")
    srv = RunServer(folder, Control())
    try:
        assert as_nobody(srv.path).startswith("connect failed 13")  # EACCES: mode 0600
        os.chmod(srv.path, 0o666)
        answer = as_nobody(srv.path)
        assert '"type":"Refused"' in answer and srv.refused == 1 and srv.accepted == 0
        a, b = socket.socketpair(socket.AF_UNIX)
        assert protocol.peer_uid(a) == 0 and protocol.peer_allowed(a)
        a.close(), b.close()
    finally:
        srv.close(drain_s=0.1)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def test_peer_check_refuses_a_uid_other_than_the_runs(served, monkeypatch) -> None:
    """Any user can run this one: the run's own uid is made another (the server compares the peer's SO_PEERCRED
    uid with `os.getuid()`), so this process, connecting as itself, is another user's client: refused, with the
    reason, and it reaches nothing. Back to the real uid, the same client is accepted."""
    srv, _ = served
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    with pytest.raises(RunRefused, match="another user's run"):
        RunClient(srv.path)
    wait_for(lambda: srv.refused == 1, 10, "the refusal counted")
    assert srv.accepted == 0 and srv.clients == []
    monkeypatch.setattr(os, "getuid", lambda: real)
    client = RunClient(srv.path)
    assert client.hello["type"] == "Hello" and srv.accepted == 1
    client.close()


def test_a_viewer_that_never_reads_never_blocks_the_engine(served, monkeypatch) -> None:
    """A connected client that reads nothing: metric updates coalesce (its queue stays tiny), the engine's emit
    never waits on it, and once it is more than MAX_QUEUE other events behind it is dropped."""
    srv, _ = served
    monkeypatch.setattr(attached, "MAX_QUEUE", 50)
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(srv.path))
    wait_for(lambda: srv.clients, 10, "client registered")
    client = srv.clients[0]
    done = threading.Event()

    def engine() -> None:
        for i in range(1, 20001):
            srv(metrics(i))
        done.set()

    t = threading.Thread(target=engine)
    t.start()
    t.join(timeout=120)
    assert done.is_set() and not client.closed
    assert len(client.queue) <= 1  # 20000 updates, at most one waiting: the newest
    for i in range(60):
        srv(Warned(message=f"w{i}"))
    assert client.closed and "behind" in client.dropped and srv.clients == []
    stuck.close()


def test_remote_imports_neither_textual_nor_torch() -> None:
    """The run process binds its socket before torch loads, and the package never needs Textual."""
    from tests.engine.test_imports import _modules_after

    loaded = _modules_after(
        "import tuitune.remote.host, tuitune.remote.client, tuitune.remote.spawn, tuitune.runs.status, "
        "tuitune.runs.process, tuitune.runs.compare, tuitune.remote.queue_process, tuitune.runs.queue_file"
    )
    assert not {"torch", "timm", "transformers", "textual"} & loaded
