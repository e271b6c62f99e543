"""The Optuna study behind a sweep, kept in `SWEEP_DIR/journal.log` (Optuna's JournalStorage on a file), or in the
database `--storage URL` names (`tuitune.sweep.storage`), which workers on several machines share.

A file journal needs no server, is safe for several processes on one machine (Optuna locks it), and is the whole
state of the sweep: the same command on the same folder loads it (`load_if_exists`) and goes on. What the storage
cannot know is that a process was killed while its trial ran: that trial stays RUNNING. Each trial records the
process that runs it (`pid`, `host`); before a process asks for a new trial it marks every RUNNING trial of its own
machine whose process is gone as FAIL with `retry = true` ("killed"), so it is neither lost silently nor counted: the
cap counts finished, pruned, running and honestly failed trials, and a killed one is replaced by a new trial.

The cap is exact across machines too: a file lock keeps one process of a machine at a time between counting and
asking, and a trial asked at the same moment on another machine keeps its place only when fewer than the cap
counted trials were asked before it (the storage numbers trials in the order it creates them); one that comes too
late is given back at once (failed and marked `surplus`: neither counted nor shown).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuitune.runs.process import proc_start_ticks
from tuitune.sweep.space import SweepSpec
from tuitune.sweep.storage import STUDY_NAME, open_storage, place

__all__ = ["STUDY_NAME", "ask", "load_study", "open_study", "storage_for"]


def storage_for(sweep_dir: Path) -> Any:
    """The sweep's storage: its journal file, or the database its folder names (`tuitune.sweep.storage`)."""
    return open_storage(sweep_dir)


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(sweep_dir: Path, spec: SweepSpec, seed: int) -> tuple[Any, Any]:
    """Create or load the sweep's study. The sampler's seed moves with the trials already run and the process, so a
    resumed sweep or a second worker does not replay the first one's random start."""
    import optuna

    quiet_optuna()
    storage = storage_for(sweep_dir)
    pruner: Any = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }[spec.pruner]()
    study = optuna.create_study(
        study_name=place(sweep_dir).name,
        storage=storage,
        direction=spec.direction,
        pruner=pruner,
        load_if_exists=True,
    )
    study.sampler = optuna.samplers.TPESampler(
        seed=seed + 7919 * len(study.trials) + os.getpid() % 1000, n_startup_trials=max(spec.startup_trials, 2)
    )
    return study, storage


def load_study(sweep_dir: Path) -> Any:
    """A sweep's study, read-only use (the leaderboard)."""
    import optuna

    quiet_optuna()
    return optuna.load_study(study_name=place(sweep_dir).name, storage=storage_for(sweep_dir))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time between counting the trials and asking for a new one (so the cap is exact)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def alive(pid: Any) -> bool:
    """A recorded pid (None or junk in an old study reads as gone) that runs and is not a zombie."""
    return isinstance(pid, int) and proc_start_ticks(pid) is not None


def fail_orphans(study: Any, storage: Any) -> list[int]:
    """Mark RUNNING trials whose process (on this machine) is gone as failed and to be retried; their numbers."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == socket.gethostname() and not alive(t.user_attrs.get("pid")):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "retry", True)
            storage.set_trial_user_attr(trial_id, "error", "its process ended while it ran (killed); retried")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed.append(t.number)
    return failed


def counts(t: Any) -> bool:
    """Whether a trial counts toward the cap: all but the killed ones (those are retried), the ones given back
    (asked past the cap) and the ones enqueued and not started yet (`ask` takes those first)."""
    return not (t.user_attrs.get("retry") or t.user_attrs.get("surplus")) and t.state.name != "WAITING"


def counted(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def ask(study: Any, storage: Any, cap: int, sweep_dir: Path) -> Any:
    """A new trial owned by this process, or None once the cap is reached (counting every process's trials, on
    every machine: see the module)."""
    with locked(sweep_dir / "ask.lock"):
        fail_orphans(study, storage)
        if counted(study) >= cap:
            return None
        trial = study.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        before = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t))
        if before >= cap:  # another machine's worker asked first for the last place
            trial.set_user_attr("surplus", True)  # given back: not counted, not on the leaderboard
            study.tell(trial, state=_fail())
            return None
        return trial


def _fail() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL
