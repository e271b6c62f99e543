"""Start a run in a process of its own that does not belong to the terminal.

`start_new_session=True` puts it in a new session (and process group): closing the terminal, `tmux
kill-session` or a dropped SSH link sends SIGHUP to the terminal's session, never to it (and it ignores SIGHUP
besides). Its stdin is /dev/null and its output goes to `RUN_DIR/run.log`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tuitune.config import RunProfile
from tuitune.remote.host import write_launch

LOG_FILE = "run.log"
# Run processes this process started: kept so their Popen objects are never collected while they run (they are
# meant to outlive us), and reaped by `poll()` when a client sees them end.
SPAWNED: list[subprocess.Popen] = []


def start_run_process(profile: RunProfile, run_dir: Path, *, resume: Path | None = None,
                      interactive: bool = True) -> subprocess.Popen:
    """Spawn `python -m tuitune.remote.host RUN_DIR`; it binds the control socket before importing torch."""
    run_dir = Path(run_dir)
    write_launch(run_dir, profile, resume, interactive)
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent.parent)  # this checkout first, as the parent runs it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env.pop("TEXTUAL", None)
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuitune.remote.host", str(run_dir)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env, cwd=os.getcwd())
    SPAWNED[:] = [p for p in SPAWNED if p.poll() is None] + [proc]
    return proc


def log_tail(run_dir: Path, lines: int = 3) -> str:
    """The last lines of run.log, on one line (why a run process ended before it could be attached to)."""
    try:
        text = (Path(run_dir) / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
