"""`tuitune train`, `demo` and `sweep`: a profile in, a run (or a sweep of runs) out, in the dashboard, headless,
on several ranks (`--nproc`, torchrun) or detached."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tuitune.errors import UserError
from tuitune.exits import ExitCode
from tuitune.profiles import PACKAGE_PROFILES


def cmd_demo(args: argparse.Namespace) -> int:
    args.profile, args.resume = str(PACKAGE_PROFILES / "demo.toml"), None
    return cmd_train(args)


def cmd_train(args: argparse.Namespace) -> int:
    from tuitune import multirank
    from tuitune.engine.record.runlog import new_run_dir

    if getattr(args, "branch", None):
        _start_branch(args)
    if args.resume == "auto":
        _resolve_auto(args)
    resume = Path(args.resume) if args.resume else None
    profile = _load_profile(args, resume)
    launched_dir = os.environ.get(multirank.ENV_RUN_DIR)  # the one rank of `--nproc 1`
    rank = multirank.under_torchrun()  # a rank: torchrun's, or one that `--nproc` started
    if not rank and not launched_dir and (resume or args.out):  # before anything in the folder is touched
        _refuse_owned(resume or Path(args.out), "--resume" if resume else "--out", args.force)
    if resume is not None and _finished(resume, profile.train.epochs):
        return 0
    if rank:
        return _train_rank(args, profile, resume)
    if resume is not None and not launched_dir:
        from tuitune.runs.damage import say_damage

        say_damage([resume], summary=False)  # a torn last line: the resumed run cuts it off and appends
    run_dir = resume or (Path(launched_dir) if launched_dir else new_run_dir(profile, args.out, args.force))
    if args.nproc:
        multirank.check_nproc(args.nproc)
        if not args.headless:  # the dashboard follows the ranks' launcher, started in a process of its own
            from tuitune.ui.launch import open_dashboard

            return open_dashboard(profile, run_dir, resume, ranks_argv=_train_argv(args, run_dir, launcher=True))
        return multirank.launch(_train_argv(args, run_dir, launcher=False), args.nproc, run_dir)
    if args.headless:
        from tuitune.headless import run_headless

        return run_headless(profile, run_dir, resume)
    from tuitune.ui.launch import open_dashboard

    return open_dashboard(profile, run_dir, resume, inline=args.inline)


def _resolve_auto(args: argparse.Namespace) -> None:
    """`--resume auto --out RUN_DIR`: resume RUN_DIR when it has a checkpoint, else start it fresh there (a run
    cut before its first save left nothing to keep). One command line for every start of a requeued job."""
    if not args.out:
        raise UserError("--resume auto: needs --out RUN_DIR (the run's folder, the same on every requeue)")
    if (Path(args.out) / "checkpoints" / "last.state.pt").exists():
        args.resume = args.out
    else:
        args.resume, args.force = None, True


def _start_branch(args: argparse.Namespace) -> None:
    """`--branch RUN_DIR[@last|@best|@EPOCH]`: make the branch's run directory (`--out`, else `RUN_DIR-branch-N`)
    from the parent's checkpoint, then train it as a resumed run with the parent's profile and the `--set`
    overrides. Everything is checked before the folder is made; the parent is only read."""
    from tuitune import multirank
    from tuitune.config import load_profile, read_toml
    from tuitune.engine.record.branch import default_out, find_branch_point, start_branch
    from tuitune.engine.record.runlog import new_run_dir

    if args.resume:
        raise UserError("--branch: starts a new run; --resume continues one (give one of them)")
    if multirank.under_torchrun():  # every rank would make its own branch
        raise UserError("--branch: under torchrun, make the branch with --nproc, or branch first and --resume it")
    point = find_branch_point(args.branch)
    out = Path(args.out) if args.out else default_out(point.parent)
    if out.resolve() == point.parent.resolve():
        raise UserError(f"{out}: --branch: the branch needs a folder of its own (--out), not its parent's")
    parent_profile = point.parent / "profile.toml"
    args.profile = args.profile or str(parent_profile)
    profile = load_profile(args.profile, args.overrides)
    if profile.train.epochs <= point.epoch:
        raise UserError(
            f"{args.branch}: --branch: the {point.tag} checkpoint is at epoch {point.epoch}; train.epochs = "
            f"{profile.train.epochs} leaves nothing to train (--set train.epochs=N, N > {point.epoch})"
        )
    _refuse_owned(out, "--out", args.force)
    run_dir = new_run_dir(profile, str(out), args.force)
    start_branch(point, run_dir, profile.train, read_toml(parent_profile).get("train", {}))
    print(f"{run_dir}: branch of {point.parent} at epoch {point.epoch} ({point.tag} checkpoint)", flush=True)
    args.resume, args.branch, args.out = str(run_dir), None, None


def _finished(run_dir: Path, epochs: int) -> bool:
    """A run that finished all `epochs` already: say so in one line, and how to train on (0: nothing failed, and
    a requeued job that finished ends cleanly). Nothing is appended to its record."""
    from tuitune.runs.status import read_json

    summary = read_json(run_dir / "summary.json") or {}
    done = summary.get("epochs")
    if summary.get("status") != "finished" or not isinstance(done, int) or done < epochs:
        return False
    print(
        f"{run_dir}: already finished ({done}/{epochs} epochs), nothing to train; to train on, add epochs: "
        f"tuitune train --resume {run_dir} --set train.epochs=N (N > {done})",
        flush=True,
    )
    return True


def _load_profile(args: argparse.Namespace, resume: Path | None):  # -> RunProfile
    """The profile named, or with `--resume` and none named, the one the run directory recorded."""
    from tuitune.config import load_profile

    if resume is not None:
        if not (resume / "checkpoints" / "last.state.pt").exists():
            raise UserError(f"{resume}: --resume: no checkpoints/last.state.pt in this run directory")
        return load_profile(args.profile or resume / "profile.toml", args.overrides)
    if not args.profile:
        raise UserError("train: a PROFILE is required (or --resume RUN_DIR)")
    return load_profile(args.profile, args.overrides)


def _train_rank(args: argparse.Namespace, profile, resume: Path | None) -> int:
    """One rank of several (torchrun's, or one that `--nproc` started): headless, in the process group."""
    from tuitune import multirank
    from tuitune.headless import run_headless

    if not args.headless:
        raise UserError("torchrun: ranks train headless (add --headless)")
    if args.nproc:
        raise UserError("--nproc: already running under torchrun; use torchrun's --nproc_per_node instead")
    dist, run_dir = multirank.worker_setup(profile, args.out, args.force, resume)
    try:
        return run_headless(profile, run_dir, resume, dist=dist, launched=bool(os.environ.get(multirank.ENV_LAUNCHED)))
    finally:
        dist.close()


def _refuse_owned(run_dir: Path, flag: str, force: bool) -> None:
    """One writer per run directory: a folder whose `process.json` names a live process is refused, naming its pid;
    one whose process runs on another host (a shared disk) may be live there: refused unless `--force`."""
    from tuitune.runs.process import PROCESS_FILE, other_host, process_alive, read_json

    record = read_json(run_dir / PROCESS_FILE)
    if record is None:
        return
    if process_alive(record):
        raise UserError(
            f"{run_dir}: {flag}: run process {record['pid']} is live and writes here; one writer per run "
            f"directory (tuitune attach {run_dir} brings it back)"
        )
    host = other_host(record)
    if host and not force:
        raise UserError(
            f"{run_dir}: {flag}: process.json names run process {record['pid']} on host {host}, which may still "
            "write here; run this there, or add --force once that run is over"
        )


def _train_argv(args: argparse.Namespace, run_dir: Path, *, launcher: bool) -> list[str]:
    """A `--nproc` command line (after `python -m tuitune`): each rank's, or (`launcher`) the headless launcher's
    that a dashboard starts in a process of its own."""
    out = ["train"] + ([str(args.profile)] if args.profile else []) + ["--headless"]
    out += ["--nproc", str(args.nproc)] if launcher else []
    if args.resume:
        out += ["--resume", str(run_dir)]
    elif launcher:
        out += ["--out", str(run_dir), "--force"]
    for override in args.overrides:
        out += ["--set", override]
    return out


def cmd_sweep(args: argparse.Namespace) -> int:
    from tuitune.sweep.runner import load_sweep, run_sweep, run_worker

    if (args.trials is not None and args.trials < 1) or args.workers < 1:
        raise UserError("sweep: --trials and --workers must be >= 1")
    sweep = load_sweep(args.profile, args.overrides)  # bad tables fail here, before any folder is made
    out = Path(args.out) if args.out else Path("runs") / f"{sweep.name}-sweep"
    if args.storage:  # checked (it opens) before the folder records it
        from tuitune.sweep.storage import check_storage, claim

        check_storage(args.storage)
        claim(out, args.storage, sweep.name)
    if args.worker:
        return run_worker(args.profile, args.overrides, out, args.trials or sweep.spec.trials)
    if args.headless:
        return run_sweep(args.profile, args.overrides, out, args.trials, args.workers)
    from tuitune.sweep.runner import start_detached
    from tuitune.ui.launch import open_sweep

    start_detached(args.profile, args.overrides, out, args.trials, args.workers)  # outlives this screen
    return open_sweep(out, f"sweep {sweep.name} -> {out}")


def cmd_recipe(args: argparse.Namespace) -> int:
    """`tuitune recipe`: headless in the foreground, or as a process of its own with the sweep's leaderboard."""
    from tuitune.config import load_profile
    from tuitune.sweep.recipe import CANDIDATES, run_recipe

    profile = load_profile(args.profile, args.overrides)  # a bad profile fails here, before any folder is made
    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise UserError(f"recipe: --candidates: unknown {unknown[0]!r} (one of {', '.join(CANDIDATES)})")
    if not args.budget > 0:
        raise UserError(f"recipe: --budget must be > 0, got {args.budget:g}")
    out = Path(args.out) if args.out else Path("runs") / f"{profile.name}-recipe"
    candidates = {n: CANDIDATES[n] for n in dict.fromkeys(["full", *names])}
    if args.headless:
        run_recipe(args.profile, args.overrides, out, budget=args.budget, candidates=candidates)
        return ExitCode.OK
    from tuitune.remote.spawn import spawn_detached
    from tuitune.ui.launch import open_sweep

    out.mkdir(parents=True, exist_ok=True)
    argv = ["tuitune", "recipe", args.profile, "--headless", "--out", str(out), "--budget", repr(args.budget)]
    argv += ["--candidates", ",".join(candidates), *(a for o in args.overrides for a in ("--set", o))]
    spawn_detached(argv, out / "recipe.log")  # outlives this screen
    return open_sweep(out, f"recipe {profile.name} -> {out}")
