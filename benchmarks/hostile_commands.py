"""Hostile input on a live run's control socket: a real demo run (`tuitune demo --headless`, in a temp folder)
gets each input below over its socket, then a proper client unfreezes and stops it. Prints a table: the input,
the reply its sender got, what the run did (from its own events) and the steps it trained meanwhile.

    PYTHONPATH=$PWD python benchmarks/hostile_commands.py [--keep]

Exit status 0 when the run trained through every input, refused every bad one and obeyed the proper client."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tuitune.engine.commands import UnfreezeNext  # noqa: E402
from tuitune.remote import attached  # noqa: E402
from tuitune.remote import server as server_mod  # noqa: E402
from tuitune.remote.client import RunClient  # noqa: E402
from tuitune.runs.process import socket_path  # noqa: E402

WINDOW_S = 2.0  # how long each input is watched for


class RunLog:
    """The run's own record (`events.jsonl`, flushed at every event), read as it grows: the step it reached, its
    LRs and what it did about commands. Independent of any client: what the run did, not what a viewer saw."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.step, self.lrs, self.ended = 0, (), ""

    def read(self) -> list[str]:
        """What happened since the last read (command events, the end), as short texts."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        did = []
        for line in whole.splitlines():
            e = json.loads(line)
            kind = e["type"]
            self.step = max(self.step, int(e.get("global_step", 0) or 0))
            if kind == "MetricsUpdated":
                self.lrs = tuple(e["lrs"])
            elif kind == "CommandRefused":
                did.append(f"CommandRefused ({e['reason'][:60]})")
            elif kind == "CommandApplied":
                did.append(f"{e['command']} applied" + (f" ({e['detail'][:50]})" if e["detail"] else ""))
            elif kind in ("RunFinished", "RunFailed"):
                self.ended = f"{kind} {e.get('status', '')}: {e.get('reason', e.get('message', ''))}"
        return did

    def mark(self) -> tuple[int, tuple]:
        self.read()
        return self.step, self.lrs

    def since(self, mark: tuple[int, tuple]) -> tuple[int, str]:
        """Steps trained since `mark`, and what the run did meanwhile (its command events, its LRs, its end)."""
        did = self.read()
        step, lrs = mark
        did.append("LRs unchanged" if self.lrs == lrs else f"LRs {lrs} -> {self.lrs}")
        return self.step - step, "; ".join([*did, self.ended] if self.ended else did)


def replies(sock: socket.socket, until: float) -> str:
    """What this connection was told about its input: its `Refused` lines (or, for a well-formed command the
    engine refused, the `CommandRefused` event every viewer gets), skipping its greeting, history and other
    events; and whether the run hung up on it."""
    sock.settimeout(0.2)
    buf, live, said, events, end = b"", False, [], [], ""
    while time.monotonic() < until and not end:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError as e:
            end = f"then {e.strerror}"
            break
        if not data:
            end = "then the run hung up"
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            live = live or line.startswith(b'{"type":"Live"')
            if line.startswith(b'{"type":"Refused"'):
                said.append(f"Refused: {json.loads(line)['reason']}")
            elif live and line.startswith(b'{"type":"CommandRefused"'):
                events.append(f"(event) CommandRefused: {json.loads(line)['reason']}")
    said = said or events
    text = said[0] + (f" (and {len(said) - 1} more)" if len(said) > 1 else "") if said else "(no reply)"
    return f"{text}; {end}" if end else text


def send_one(path: Path, payload: bytes) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    sock.settimeout(30)
    err, sent = "", 0
    try:
        for sent in range(0, len(payload), 1 << 16):  # as a client would stream it
            sock.sendall(payload[sent : sent + (1 << 16)])
    except OSError as e:
        err = f"its send failed ({e.strerror}) at {sent >> 10} KiB; "
    out = err + replies(sock, time.monotonic() + WINDOW_S)
    sock.close()
    return out


def idle_connections(path: Path, n: int) -> tuple[str, list[socket.socket]]:
    held, accepted, refused = [], 0, 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.settimeout(2.0)
        try:
            first = s.recv(256).split(b"\n")[0]
        except TimeoutError:
            first = b""
        if b'"Refused"' in first:
            refused += 1
            s.close()
        else:
            accepted += 1
            held.append(s)  # reads nothing more: idle
    return f"{accepted} accepted (at most {server_mod.MAX_CLIENTS} clients), {refused} refused with a line", held


def wait_dropped(held: list[socket.socket], limit: float) -> str:
    """Wait (reading nothing: a read would make them not idle) until the run hangs up on the held connections."""
    start = time.monotonic()
    poller = select.poll()
    for s in held:
        poller.register(s, 0)  # POLLHUP is always reported
    left = len(held)
    while left and time.monotonic() - start < limit:
        time.sleep(0.5)
        left = len(held) - sum(1 for _, ev in poller.poll(0) if ev & select.POLLHUP)
    for s in held:
        s.close()
    return f"{len(held) - left} of {len(held)} idle ones dropped after {time.monotonic() - start:.0f} s"


def main() -> int:
    keep = "--keep" in sys.argv
    tmp = Path(tempfile.mkdtemp(prefix="tuitune-hostile-"))
    run_dir = tmp / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "tuitune", "demo", "--headless", "--out", str(run_dir)]
    argv += ["--set", "train.epochs=5000", "--set", "train.log_every=1", "--set", "strategy.every_epochs=1000"]
    argv += ["--set", "strategy.trigger=epochs"]
    with open(tmp / "console.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return _drive(proc, run_dir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"\nrun directory: {run_dir}" if keep else "")
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _drive(proc: subprocess.Popen, run_dir: Path) -> int:
    deadline = time.monotonic() + 120
    while (path := socket_path(run_dir)) is None or not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            print("the run did not open its socket", file=sys.stderr)
            return 1
        time.sleep(0.1)
    log = RunLog(run_dir / "events.jsonl")
    while log.mark()[0] < 5:  # training, not setting up
        time.sleep(0.1)
    head = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])["layers"][-1]["name"]
    rng = random.Random(0)
    bad: list[tuple[str, Any]] = [
        ("factor NaN", f'{{"type":"ScaleGroupLR","group":"{head}","factor":NaN}}\n'.encode()),
        ("factor Infinity", f'{{"type":"ScaleGroupLR","group":"{head}","factor":Infinity}}\n'.encode()),
        ("factor -5", f'{{"type":"ScaleGroupLR","group":"{head}","factor":-5}}\n'.encode()),
        ("factor 0", f'{{"type":"ScaleGroupLR","group":"{head}","factor":0}}\n'.encode()),
        ("factor 1e9", f'{{"type":"ScaleGroupLR","group":"{head}","factor":1e9}}\n'.encode()),
        ('factor "2" (a string)', f'{{"type":"ScaleGroupLR","group":"{head}","factor":"2"}}\n'.encode()),
        ("ApplyLR lr -1", b'{"type":"ApplyLR","lr":-1}\n'),
        ("unknown group", b'{"type":"ScaleGroupLR","group":"nope","factor":2}\n'),
        ("unknown command type", b'{"type":"FormatDisk"}\n'),
        ("4 KB of garbage bytes", bytes(rng.randrange(256) for _ in range(4096)) + b"\n"),
        ("invalid JSON", b'{"type":"Pause",\n'),
        ("1,000 nested brackets", b"[" * 1000 + b"]" * 1000 + b"\n"),
        ("100,000 nested brackets", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        ("64 MB line, no newline", b"x" * (64 << 20)),
    ]
    rows = []
    for name, payload in bad:
        mark = log.mark()
        reply = send_one(path, payload)
        time.sleep(0.5)
        steps, did = log.since(mark)
        rows.append((name, reply, did, steps))
    mark = log.mark()
    said, held = idle_connections(path, 200)
    dropped = wait_dropped(held, attached.IDLE_S + 20)
    steps, did = log.since(mark)
    rows.append(("200 idle connections", said, f"{dropped}; {did}", steps))
    mark = log.mark()
    proper = RunClient(path)
    proper.send(UnfreezeNext())
    time.sleep(WINDOW_S)
    proper.stop_run()
    code = proc.wait(timeout=120)
    proper.close()
    time.sleep(0.5)
    steps, did = log.since(mark)
    rows.append(("proper UnfreezeNext, then Stop", "(none: accepted)", f"{did}; exit {code}", steps))
    print_table(rows)
    refused_all = all("Refused" in r[1] or "CommandRefused" in r[2] for r in rows[: len(bad)])
    trained = all(r[3] > 0 for r in rows[:-1])
    return 0 if refused_all and trained and code in (0, 130) and "UnfreezeNext applied" in rows[-1][2] else 1


def print_table(rows: list[tuple[str, str, str, int]]) -> None:
    header = ("input", "reply to its sender", "what the run did", "steps meanwhile")
    cells = [(a, b[:100], c[:120], str(d)) for a, b, c, d in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print(line(r))


if __name__ == "__main__":
    raise SystemExit(main())
