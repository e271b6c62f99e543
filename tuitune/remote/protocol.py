"""The wire format of the control socket: newline-delimited JSON, one object per line, in both directions.

Out (run -> client): a `Hello` line, the run's events so far, a `Live` line, then live events as the engine
emits them (`engine.events.to_json`), each event once: the history and the live stream meet exactly. In (client ->
run): first, after `Hello`, `{"type": "History", "mode": "full" | "condensed"}`; then the engine's own command
types, serialised like events (`{"type": "UnfreezeNext"}`), plus `Stop` (stop the run at the next step, what
Ctrl+C does) and `Detach`. The history is, in `full` mode (also a client that asks nothing within
`HISTORY_REQUEST_S`), the lines of `events.jsonl`, byte for byte; in `condensed` mode (a dashboard's first frame,
in time that does not grow with the run: `tuitune.engine.record.history`) the lines a plot or the layer table
needs, as written, and `{"type": "Skipped", "readings": R, "lines": L}` where lines were passed over.

The socket lives in the run directory (or, when that path is too long for `sun_path`, under $XDG_RUNTIME_DIR or
/tmp, recorded in `process.json`), mode 0600, and refuses peers whose uid differs from the run's (`SO_PEERCRED`):
it is never reachable over the network. Each command line is checked by the engine's own
`commands.load_json_line` and `command_from_dict`; a refused one is answered with one `Refused` line (`command`,
`reason`), and the server's bounds (`server.py`) cap line length, clients and idle time.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
SOCKET_NAME = "control.sock"
MAX_SUN_PATH = 100  # Linux allows 107 bytes plus NUL; stay clear of the edge
STOP, DETACH, HELLO, LIVE, REFUSED = "Stop", "Detach", "Hello", "Live", "Refused"
HISTORY, SKIPPED = "History", "Skipped"
FULL, CONDENSED = "full", "condensed"  # the history modes a client may ask for
HISTORY_REQUEST_S = 1.0  # how long the run waits for a client's History line before it sends the full history


def message(kind: str, **fields: Any) -> bytes:
    """One control line (not an event): Hello, Live, Refused, Skipped, History, Stop, Detach."""
    return (json.dumps({"type": kind, **fields}, separators=(",", ":")) + "\n").encode()


def socket_path_for(run_dir: Path) -> Path:
    """`RUN_DIR/control.sock` when its absolute path fits in `sun_path`; else a short path named by a hash of the
    run directory under $XDG_RUNTIME_DIR (per user, mode 0700 by definition) or a 0700 folder in /tmp."""
    path = Path(os.path.abspath(run_dir)) / SOCKET_NAME
    if len(os.fsencode(str(path))) <= MAX_SUN_PATH:
        return path
    digest = hashlib.sha1(os.fsencode(str(path))).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and len(runtime) < 60:
        return Path(runtime) / f"tuitune-{digest}.sock"
    folder = Path(tempfile.gettempdir()) / f"tuitune-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user")
    os.chmod(folder, 0o700)
    return folder / f"{digest}.sock"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (Linux `SO_PEERCRED`)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def peer_allowed(sock: socket.socket) -> bool:
    """Only the run's own user may watch or steer it (root included only when the run is root's)."""
    return peer_uid(sock) == os.getuid()
