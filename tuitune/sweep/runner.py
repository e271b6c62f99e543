"""Run a sweep: ask Optuna for a trial, run it as an ordinary headless run in `SWEEP_DIR/trial-NNN`, report each
epoch's metric to the pruner (a pruned trial's run is asked to stop at the next step, like Ctrl+C), tell the result;
until the sweep holds `trials` counted trials. `--workers K` starts K processes of this same loop on one study
(one GPU each through CUDA_VISIBLE_DEVICES when there are GPUs); `--storage URL` puts the study in a database that
workers on other machines join (`tuitune.sweep.storage`). At the end: `best.toml` and the `--set` line."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune.config import ProfileError, apply_overrides, dump_toml, profile_from_dict, profile_to_dict, read_toml
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, Event, RunFailed, RunFinished
from tuitune.engine.record.files import write_text_atomic
from tuitune.exits import ExitCode
from tuitune.sweep.board import format_board, read_board
from tuitune.sweep.space import SweepSpec, override_text, parse_sweep, set_line
from tuitune.sweep.storage import has_study


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed sweep: the profile table without `[sweep]`, where it came from, and the search space."""

    file: str
    base: Path
    table: dict[str, Any]
    spec: SweepSpec
    name: str
    seed: int


def load_sweep(path: str | Path, overrides: list[str]) -> Sweep:
    path = Path(path)
    table = apply_overrides(read_toml(path), overrides)
    spec, profile = parse_sweep(table, str(path), path.resolve().parent)
    rest = {k: v for k, v in table.items() if k != "sweep"}
    return Sweep(str(path), path.resolve().parent, rest, spec, profile.name, profile.train.seed)


def trial_profile(sweep: Sweep, params: dict[str, Any], number: int):  # -> RunProfile
    table = apply_overrides(sweep.table, [override_text(k, v) for k, v in params.items()])
    profile = profile_from_dict(table, sweep.file, sweep.base)
    return dataclasses.replace(profile, name=f"{sweep.name}-trial-{number:03d}")


class PruneFeeder:
    """The event sink of one trial: each epoch's metric goes to `trial.report`; when the pruner says so, the run is
    asked to stop (it saves `last` and ends as `interrupted`)."""

    def __init__(self, trial: Any, metric: str, control: Control) -> None:
        self.trial, self.metric, self.control = trial, metric, control
        self.pruned = False
        self.values: list[float] = []

    def __call__(self, event: Event) -> None:
        if not isinstance(event, EpochEnded) or self.pruned:
            return
        value = event.value(self.metric)
        if not math.isfinite(value):
            return
        self.values.append(value)
        self.trial.report(value, event.epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.trial.set_user_attr("pruned_at_epoch", event.epoch)
            self.control.request_stop()


def run_trial(sweep: Sweep, study: Any, trial: Any, sweep_dir: Path, control: Control) -> str:
    """Run one trial to its end and tell Optuna; the trial's status (done, pruned, failed, interrupted)."""
    from optuna.trial import TrialState

    from tuitune.remote.host import serve_run

    params = {p.key: p.suggest(trial) for p in sweep.spec.params}
    run_dir = sweep_dir / f"trial-{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    try:
        profile = trial_profile(sweep, params, trial.number)
    except ProfileError as e:  # checked at the bounds; a combination of values can still clash
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    feeder = PruneFeeder(trial, sweep.spec.metric, control)
    final = serve_run(profile, run_dir, feeder, control, interactive=False, mode="headless")
    if feeder.pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    if isinstance(final, RunFinished) and final.status == "interrupted":
        trial.set_user_attr("retry", True)
        trial.set_user_attr("error", "the sweep was interrupted while it ran; retried")
        study.tell(trial, state=TrialState.FAIL)
        return "interrupted"
    values = feeder.values
    if isinstance(final, RunFailed) or not values:
        trial.set_user_attr("error", final.message if isinstance(final, RunFailed) else "no epoch ended")
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    study.tell(trial, (max if sweep.spec.direction == "maximize" else min)(values))
    return "done"


class SweepStop:
    """Ctrl+C / SIGTERM for a whole sweep: no new trial, and the running one stops at its next step. (A pruned
    trial stops through its own Control, so pruning never stops the sweep.)"""

    def __init__(self) -> None:
        self.requested = False
        self.control: Control | None = None

    def trial_control(self) -> Control:
        self.control = Control()
        if self.requested:
            self.control.request_stop()
        return self.control

    def request(self) -> None:
        self.requested = True
        if self.control is not None:
            self.control.request_stop()


def work(sweep: Sweep, sweep_dir: Path, cap: int, stop: SweepStop, say: Callable[[str], None]) -> None:
    """This process's share of the sweep: trials until the cap (all processes together) or a stop."""
    from tuitune.sweep.study import ask, open_study

    study, storage = open_study(sweep_dir, sweep.spec, sweep.seed)
    study.set_user_attr("metric", sweep.spec.metric)
    while not stop.requested:
        trial = ask(study, storage, cap, sweep_dir)
        if trial is None:
            return
        status = run_trial(sweep, study, trial, sweep_dir, stop.trial_control())
        if sweep.spec.keep == "best":
            drop_losing_weights(study)
        say(f"trial {trial.number} {status}")
        if status == "interrupted":
            return


def drop_losing_weights(study: Any) -> None:
    """`keep = "best"`: the checkpoints and export of every ended trial but the best so far are deleted (a sweep
    of a 22M-parameter text model wrote 0.6 GB a trial); events, curves and summaries stay for the leaderboard and
    `tuitune compare`, and `best.toml` reproduces any trial. Idempotent, so workers may race on it."""
    import shutil

    from optuna.trial import TrialState

    try:
        best = study.best_trial.number
    except ValueError:  # no trial completed yet
        best = None
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or t.number == best or "run_dir" not in t.user_attrs:
            continue
        for folder in (Path(t.user_attrs["run_dir"]) / "checkpoints", Path(t.user_attrs["run_dir"]) / "export"):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)


def run_sweep(
    path: str,
    overrides: list[str],
    sweep_dir: Path,
    trials: int | None,
    workers: int,
    say: Callable[[str], None] = print,
) -> int:
    """The `tuitune sweep` command: this process works alone (`workers` 1) or starts `workers` processes and
    prints the leaderboard as their trials end. Exit code: OK done, INTERRUPTED interrupted (the same command
    resumes it)."""
    import signal

    sweep = load_sweep(path, overrides)
    cap = trials or sweep.spec.trials
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if live_sweep_pid(sweep_dir) is None:  # a leaderboard screen opened on this folder follows this process
        (sweep_dir / "sweep.pid").write_text(f"{os.getpid()}\n", encoding="utf-8")
    stop = SweepStop()
    previous = {s: signal.signal(s, lambda *_: stop.request()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if workers <= 1:

            def after_trial(line: str) -> None:
                say(line)
                say(_board_text(sweep_dir))

            work(sweep, sweep_dir, cap, stop, after_trial)
        else:
            _run_workers(path, overrides, sweep_dir, cap, workers, stop, say)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if live_sweep_pid(sweep_dir) == os.getpid():
            (sweep_dir / "sweep.pid").unlink()
    if stop.requested:
        say(f"sweep interrupted; the same command resumes it ({sweep_dir})")
        return ExitCode.INTERRUPTED
    say(write_best(sweep, overrides, sweep_dir))
    return ExitCode.OK


def run_worker(path: str, overrides: list[str], sweep_dir: Path, cap: int) -> int:
    """One of `--workers K` processes (started by `run_sweep`): the trial loop, one line per trial on stdout."""
    import signal

    sweep = load_sweep(path, overrides)
    stop = SweepStop()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.request())
    work(sweep, sweep_dir, cap, stop, lambda line: print(line, flush=True))
    return ExitCode.INTERRUPTED if stop.requested else ExitCode.OK


def _board_text(sweep_dir: Path) -> str:
    rows, metric, _ = read_board(sweep_dir)
    return format_board(rows, metric)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run_workers(
    path: str,
    overrides: list[str],
    sweep_dir: Path,
    cap: int,
    workers: int,
    stop: SweepStop,
    say: Callable[[str], None],
) -> None:
    """K worker processes on one study; their output goes to `worker-I.log`; the leaderboard here when a trial
    ends. Ctrl+C / SIGTERM is passed on to them (each stops its trial at the next step)."""
    gpus = _gpu_count()
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        cmd = [
            sys.executable,
            "-m",
            "tuitune",
            "sweep",
            path,
            "--out",
            str(sweep_dir),
            "--trials",
            str(cap),
            "--worker",
            *(a for o in overrides for a in ("--set", o)),
        ]
        with open(sweep_dir / f"worker-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    seen: set[int] = set()
    try:
        while any(p.poll() is None for p in procs):
            if stop.requested:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            time.sleep(1.0)
            seen = _print_when_ended(sweep_dir, seen, say)
        _print_when_ended(sweep_dir, seen, say)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()


def _print_when_ended(sweep_dir: Path, seen: set[int], say: Callable[[str], None]) -> set[int]:
    if not has_study(sweep_dir):
        return seen
    try:
        rows, metric, _ = read_board(sweep_dir)
    except KeyError:  # a --storage sweep whose study the workers have not created yet
        return seen
    ended = {r.number for r in rows if r.status not in ("running", "waiting")}
    if ended - seen:
        say(format_board(rows, metric))
    return ended


def write_best(sweep: Sweep, overrides: list[str], sweep_dir: Path) -> str:
    """`best.toml` (the winning trial's whole profile, paths absolute) and the `--set` line that reproduces it from
    the profile; the line to print."""
    from optuna.trial import TrialState

    from tuitune.sweep.study import load_study

    study = load_study(sweep_dir)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return f"no trial finished; nothing to write ({sweep_dir})"
    best = study.best_trial
    profile = dataclasses.replace(trial_profile(sweep, best.params, best.number), name=sweep.name)
    cli = " ".join(f"--set {o}" for o in overrides)
    line = f"tuitune train {sweep.file} {cli + ' ' if cli else ''}{set_line(best.params)}"
    header = (
        f"# best of sweep {sweep_dir}: trial {best.number}, {sweep.spec.metric} {best.value:.6g}\n# reproduce: {line}\n"
    )
    write_text_atomic(sweep_dir / "best.toml", header + dump_toml(profile_to_dict(profile)))
    (sweep_dir / "best_set.txt").write_text(line + "\n", encoding="utf-8")
    return (
        f"best: trial {best.number}, {sweep.spec.metric} {best.value:.4f} -> {sweep_dir / 'best.toml'}\n"
        f"reproduce: {line}"
    )


def live_sweep_pid(sweep_dir: Path) -> int | None:
    """The process `sweep.pid` names, when it still runs: the sweep that owns the folder."""
    from tuitune.sweep.study import alive

    text = (sweep_dir / "sweep.pid").read_text().strip() if (sweep_dir / "sweep.pid").exists() else ""
    return int(text) if text.isdigit() and alive(int(text)) else None


def start_detached(path: str, overrides: list[str], sweep_dir: Path, trials: int | None, workers: int) -> int:
    """The sweep as a process of its own (its own session: it outlives the leaderboard screen and the terminal),
    output in `sweep.log`; unless the one `sweep.pid` names still runs (then the screen just follows it)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    running = live_sweep_pid(sweep_dir)
    if running is not None:
        return running
    from tuitune.remote.spawn import spawn_detached

    args = [
        "tuitune",
        "sweep",
        path,
        "--headless",
        "--out",
        str(sweep_dir),
        "--workers",
        str(workers),
        *(["--trials", str(trials)] if trials else []),
        *(a for o in overrides for a in ("--set", o)),
    ]
    proc = spawn_detached(args, sweep_dir / "sweep.log")
    (sweep_dir / "sweep.pid").write_text(f"{proc.pid}\n", encoding="utf-8")
    return proc.pid
