"""`tuitune queue`: runs that wait in line. `queue add PROFILE [--set ...]` checks the profile and its overrides as
`tuitune train` does (bad input: one line naming the key, exit 2, the queue untouched), queues it and starts the
folder's queue process if none runs (`tuitune.remote.queue_process`); `queue` lists the entries and their status;
`queue rm N` takes a waiting (or ended) entry out; `queue start` restarts the process for entries left waiting."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tuitune.errors import UserError
from tuitune.exits import ExitCode


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    queue = sub.add_parser(
        "queue",
        help="runs that wait in line: add, list (no subcommand), rm; a queue process runs them one after another",
        description="With no subcommand: the queue's entries and their status.",
    )
    _add_runs_dir(queue, argparse.SUPPRESS)  # `queue --runs-dir DIR` lists; the subcommands take it too
    queue.add_argument("--json", action="store_true", help="the list as one JSON object (process, entries)")
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    add = actions.add_parser("add", help="queue a profile (checked now); starts the queue process if none runs")
    add.add_argument("profile", help="a profile .toml")
    add.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile key, e.g. --set train.epochs=1 (repeatable)",
    )
    _add_runs_dir(add, argparse.SUPPRESS)
    rm = actions.add_parser("rm", help="take entry N out of the queue (a waiting or ended one; never a running one)")
    rm.add_argument("number", type=int, metavar="N", help="the entry's number (tuitune queue lists them)")
    _add_runs_dir(rm, argparse.SUPPRESS)
    start = actions.add_parser("start", help="start the queue process for waiting entries, if none runs")
    _add_runs_dir(start, argparse.SUPPRESS)


def _add_runs_dir(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--runs-dir",
        default=default,
        metavar="DIR",
        help="the runs folder whose queue this is; the queued runs go there (default ./runs)",
    )


def cmd_queue(args: argparse.Namespace) -> int:
    folder = Path(getattr(args, "runs_dir", "runs"))
    action = getattr(args, "queue_command", None)
    if action == "add":
        return _add(folder, args.profile, args.overrides)
    if action == "rm":
        return _rm(folder, args.number)
    if action == "start":
        return _start(folder)
    return _list(folder, args.json)


def _add(folder: Path, profile_path: str, overrides: list[str]) -> int:
    from tuitune.config import load_profile
    from tuitune.remote.queue_process import ensure_running
    from tuitune.runs.queue_file import QueueStore

    profile = load_profile(profile_path, overrides)  # as `tuitune train` checks it: nothing is written before
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: --runs-dir: not a folder")
    with QueueStore(folder).edit() as state:
        waiting_before = len(state.with_status("waiting", "running"))
        entry = state.add(os.path.abspath(profile_path), overrides, profile.name)  # a link kept as given
        pid, started = ensure_running(state, folder)
    ahead = f"{waiting_before} ahead of it" if waiting_before else "next"
    process = f"queue process {pid} {'started' if started else 'runs it'}"
    print(f"queued #{entry.number}: {profile.name} ({ahead}); {process} (tuitune queue{_dir_flag(folder)} lists it)")
    return ExitCode.OK


def _rm(folder: Path, number: int) -> int:
    from tuitune.runs.queue_file import RUNNING

    store = _existing(folder)
    with store.edit() as state:
        entry = state.get(number)
        if entry is None:
            raise UserError(
                f"{folder}: queue rm {number}: no entry {number} (tuitune queue{_dir_flag(folder)} lists them)"
            )
        if entry.status == RUNNING:
            raise UserError(
                f"queue rm {number}: entry {number} is running ({entry.run_dir}); stop its run with "
                f"`tuitune ctl {entry.run_dir} stop`"
            )
        state.remove(number)
    kept = f"; its run directory {entry.run_dir} stays" if entry.run_dir else ""
    print(f"removed #{number} ({entry.name}, {entry.status}){kept}")
    return ExitCode.OK


def _start(folder: Path) -> int:
    from tuitune.remote.queue_process import ensure_running

    with _existing(folder).edit() as state:
        waiting = len(state.with_status("waiting"))
        if not state.with_status("waiting", "running"):  # a running entry left by a stopped queue process counts:
            print(f"{folder}: nothing waits in the queue")  # the new one records how its run ends
            return ExitCode.OK
        pid, started = ensure_running(state, folder)
    print(f"queue process {pid} {'started' if started else 'already runs the queue'}: {waiting} waiting")
    return ExitCode.OK


def _list(folder: Path, as_json: bool) -> int:
    from tuitune.runs.queue_file import QueueStore, format_queue

    state = QueueStore(folder).read()
    if as_json:
        process = state.process if state.process_alive() else None
        print(json.dumps({"folder": str(folder), "process": process, "entries": [e.as_dict() for e in state.entries]}))
    else:
        print(format_queue(state, folder))
    return ExitCode.OK


def _existing(folder: Path):  # -> QueueStore
    """The folder's queue, when it has one (an `rm` or `start` never makes a folder or a queue file)."""
    from tuitune.runs.queue_file import QueueStore

    store = QueueStore(folder)
    if not store.path.exists():
        raise UserError(f"{store.path}: no queue here (tuitune queue add PROFILE{_dir_flag(folder)} starts one)")
    return store


def _dir_flag(folder: Path) -> str:
    return "" if folder == Path("runs") else f" --runs-dir {folder}"
