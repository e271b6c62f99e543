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
from tuitune.runs.process import LOG_FILE

# Run processes this process started: kept so their Popen objects are never collected while they run (they are
# meant to outlive us), and reaped by `poll()` when a client sees them end.
SPAWNED: list[subprocess.Popen] = []


def spawn_detached(args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m *args` in a session of its own (see above), stdin /dev/null, output appended to `log`, with this
    checkout first on PYTHONPATH (as the parent runs it), `extra_env` set (the queue pins a run to its GPU) and no
    TEXTUAL driver setting; kept in `SPAWNED`."""
    env = {**os.environ, **(extra_env or {})}
    here = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env.pop("TEXTUAL", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=os.getcwd(),
        )
    SPAWNED[:] = [p for p in SPAWNED if p.poll() is None] + [proc]
    return proc


def start_run_process(
    profile: RunProfile,
    run_dir: Path,
    *,
    resume: Path | None = None,
    interactive: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Spawn `python -m tuitune.remote.host RUN_DIR`; it binds the control socket before importing torch."""
    run_dir = Path(run_dir)
    write_launch(run_dir, profile, resume, interactive)
    return spawn_detached(["tuitune.remote.host", str(run_dir)], run_dir / LOG_FILE, extra_env)


def start_ranks_process(argv: list[str], run_dir: Path) -> subprocess.Popen:
    """Spawn `python -m tuitune *argv` (`train ... --headless --nproc N`: the launcher of a multi-rank run) the
    same way: its own session, output to run.log. Its rank 0 opens the control socket once the ranks met."""
    return spawn_detached(["tuitune", *argv], Path(run_dir) / LOG_FILE)
