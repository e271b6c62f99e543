"""Multi-rank runs: `tuitune train PROFILE --nproc N` and plain `torchrun ... -m tuitune train PROFILE --headless`.

`launch` is what `--nproc` runs in the process a person started: it creates the run directory, then starts N
ranks through torch's own launcher API (`torch.distributed.launcher.api.elastic_launch`, what `torchrun` runs), each
one `python -m tuitune train ... --headless` with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), and
waits. Why the launcher and not hand-rolled processes: elastic starts every rank in its own session (so the
terminal's Ctrl+C reaches the launcher alone, which passes one SIGINT to each rank: a graceful stop everywhere),
notices a dead rank at once and ends the others (SIGTERM, then SIGKILL after 30 s) instead of letting them hang.

When a rank dies, the ranks that lost it exit with `ExitCode.RANK_LOST` and write nothing; the launcher knows from
elastic which rank it was and records the run's end in the run directory: one `RunFailed` naming the rank (and
`summary.json`).

`worker_setup` is the rank side, for both launch paths: join the process group (NCCL on CUDA, gloo on CPU) and
agree on the run directory, which rank 0 owns.

Torch-free at import: `tuitune --help` must stay fast.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from tuitune.errors import UserError
from tuitune.exits import ExitCode, run_exit_code

ENV_RUN_DIR = "TUITUNE_RUN_DIR"  # the run directory `launch` created (rank 0 records there)
ENV_LAUNCHED = "TUITUNE_LAUNCHED"  # set by `launch`: a lost peer is the launcher's to report
# The signals torch's launcher catches and passes on to every rank as they came. Its default leaves SIGUSR1 out,
# and SIGUSR1 (SLURM's time-limit warning) would end the launcher at once; with it, each rank saves and ends
# `preempted`. Plain `torchrun` reads the same variable: the README's batch script sets it.
ELASTIC_SIGNALS = "TORCHELASTIC_SIGNALS_TO_HANDLE"
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(worker_args: list[str], nproc: int, run_dir: Path) -> int:
    """Run `python -m tuitune *worker_args` as `nproc` ranks on this machine; the exit code is the one of the run's
    recorded end (`run_exit_code` of its last event: FAILED when none was recorded)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a failure: our one line says it
    os.environ[ENV_RUN_DIR], os.environ[ENV_LAUNCHED] = str(run_dir), "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # as torchrun does
    os.environ.setdefault(ELASTIC_SIGNALS, FORWARDED_SIGNALS)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"tuitune-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "tuitune", *worker_args)
    except ChildFailedError as e:
        record_rank_failure(run_dir, e.failures, nproc)
    except SignalException:  # Ctrl+C / SIGTERM / SIGUSR1: every rank got the same signal and stopped at its next step
        pass
    events = recorded_events(run_dir)
    return run_exit_code(events[-1] if events else None)


def culprit(failures: dict[int, Any]) -> tuple[int, Any] | None:
    """The rank that failed by itself: not one that only lost a peer (RANK_LOST), nor one the launcher ended with
    SIGTERM after a peer's death; a killed one before one that exited with an error."""
    own = {r: f for r, f in failures.items() if f.exitcode != ExitCode.RANK_LOST}
    if not own:
        return None
    rank = min(own, key=lambda r: (own[r].exitcode == -signal.SIGTERM, own[r].exitcode >= 0, r))
    return rank, own[rank]


def record_rank_failure(run_dir: Path, failures: dict[int, Any], nproc: int) -> None:
    """Record the run's end naming the failed rank, unless rank 0 already recorded one (bad input, its own
    error), so events.jsonl keeps one terminal event."""
    from tuitune.engine.events import EpochEnded, MetricsUpdated, RunFailed, RunFinished, RunStarted
    from tuitune.engine.record.runlog import RunRecorder

    events = recorded_events(run_dir)
    if events and isinstance(events[-1], (RunFinished, RunFailed)):
        return
    found = culprit(failures)
    rank, failure = found if found is not None else (min(failures), failures[min(failures)])
    how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    log = run_dir / f"error.rank{rank}.log" if rank else run_dir / "error.log"
    why = _last_line(log)
    position = next((e for e in reversed(events) if isinstance(e, (MetricsUpdated, EpochEnded))), None)
    epoch, step = (position.epoch, position.global_step) if position is not None else (0, 0)
    last = run_dir / "checkpoints" / "last.safetensors"
    note = (
        f"the last checkpoint ({last}) is intact; continue with: tuitune train --resume {run_dir} "
        f"--nproc {nproc} --headless"
        if last.exists()
        else "no checkpoint was saved yet"
    )
    message = f"rank {rank} died ({how}{': ' + why if why else ''}) near epoch {epoch}, step {step}; {note}"
    started = next((e for e in events if isinstance(e, RunStarted)), None)
    recorder = RunRecorder(run_dir, append=True, started=started)
    recorder(
        RunFailed(
            message=message,
            run_dir=str(run_dir),
            log_path=str(log) if why else "",
            epoch=epoch,
            global_step=step,
            kind="rank_lost",
        )
    )
    print(f"tuitune: error: {message}", file=sys.stderr, flush=True)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def recorded_events(run_dir: Path) -> list[Any]:
    """The run's events so far; none before rank 0 wrote any (it may have died first)."""
    from tuitune.engine.record.runlog import read_events

    return read_events(run_dir) if (run_dir / "events.jsonl").exists() else []


def worker_setup(profile: Any, out: str | None, force: bool, resume: Path | None) -> tuple[Any, Path]:
    """A rank under torchrun (or `launch`): join the process group, then the run directory: `launch`'s, the
    resumed one, or one rank 0 creates and tells the others."""
    from tuitune.engine.record.runlog import new_run_dir
    from tuitune.engine.train.distributed import from_env

    dist = from_env(profile.train.device, profile.train.dist_timeout_s)
    if resume is not None:
        return dist, resume
    if os.environ.get(ENV_RUN_DIR):
        return dist, Path(os.environ[ENV_RUN_DIR])
    made = str(new_run_dir(profile, out, force)) if dist.is_main else None
    return dist, Path(dist.broadcast(made))


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UserError(f"--nproc: {nproc} is not a number of ranks (1 or more)")
