"""`tuitune runs`, `compare`, `attach`, `replay` and the picker: finding run directories and bringing a run,
live or recorded, back on screen."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuitune.errors import UserError
from tuitune.exits import ExitCode
from tuitune.profiles import PACKAGE_PROFILES


def cmd_runs(args: argparse.Namespace) -> int:
    from tuitune.runs.damage import say_damage
    from tuitune.runs.status import format_table, list_runs

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: runs: no such folder")
    if args.compare:
        from tuitune.ui.launch import open_compare

        return open_compare(folder=folder)
    runs = list_runs(folder)
    say_damage([Path(r.path) for r in runs], summary=False)  # a run without one is listed as dead
    if args.json:
        print(json.dumps([r.as_dict() for r in runs]))
    elif not runs:
        print(f"no run directories under {folder}")
    else:
        print(format_table(runs))
    if not args.json:
        from tuitune.runs.queue_file import waiting_lines

        for line in waiting_lines(folder):  # the queue's runs that have no run directory yet
            print(line)
    return ExitCode.OK


def cmd_compare(args: argparse.Namespace) -> int:
    """The screen; `--json`, `--text`, or an output that is not a terminal: printed."""
    from tuitune.runs.compare import compare_dict, format_compare, load_runs
    from tuitune.runs.damage import say_damage

    say_damage([Path(d) for d in args.run_dirs if (Path(d) / "events.jsonl").exists()])
    runs = load_runs([Path(d) for d in args.run_dirs])
    if args.json:
        print(json.dumps(compare_dict(runs)))
    elif args.text or not sys.stdout.isatty():
        print(format_compare(runs))
    else:
        from tuitune.ui.launch import open_compare

        return open_compare(runs=runs)
    return ExitCode.OK


def cmd_attach(args: argparse.Namespace) -> int:
    """A live run: its dashboard. A run that ended, or one on another host (its socket is not reachable from here):
    its record, summary on top. A dead one: one line, exit 2."""
    from tuitune.runs.damage import say_damage
    from tuitune.runs.status import dead_message, is_run_dir, run_info, run_status

    run_dir = Path(args.run_dir) if args.run_dir else _choose_live_run(Path("runs"))
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir}: attach: not a tuitune run directory (no events.jsonl or process.json)")
    say_damage([run_dir], summary=False)  # one without a summary is dead: the line below says so
    status = run_status(run_dir)  # not `run_info`: that reads every event, and a long run's are many
    if status == "dead":
        raise UserError(dead_message(run_info(run_dir)))
    if status == "live":
        from tuitune.ui.launch import open_attach

        return open_attach(run_dir)
    from tuitune.ui.launch import open_replay  # finished while away: the whole record, then its summary

    return open_replay(run_dir)


def _choose_live_run(folder: Path) -> Path:
    from tuitune.runs.status import live_runs

    live = live_runs(folder)
    if not live:
        raise UserError(f"{folder}: attach: no live run here (tuitune runs {folder} lists them all)")
    if len(live) == 1 or not sys.stdin.isatty():
        return Path(live[0].path)  # the newest
    for i, run in enumerate(live, start=1):
        print(f"{i:>2}  {run.name}  epoch {run.epoch}  phase {run.phase}  pid {run.pid}")
    answer = input(f"attach to which run? [1-{len(live)}, enter = 1] ").strip() or "1"
    if not answer.isdigit() or not 1 <= int(answer) <= len(live):
        raise UserError(f"attach: {answer!r} is not one of 1-{len(live)}")
    return Path(live[int(answer) - 1].path)


def cmd_replay(args: argparse.Namespace) -> int:
    from tuitune.runs.damage import say_damage
    from tuitune.ui.launch import open_replay

    run_dir = Path(args.run_dir)
    if not (run_dir / "events.jsonl").exists():
        raise UserError(f"{run_dir}: no events.jsonl here (is this a tuitune run directory?)")
    say_damage([run_dir])
    return open_replay(run_dir, args.speed)


def cmd_picker(args: argparse.Namespace) -> int:
    from tuitune.ui.launch import open_picker

    dirs = [Path.cwd() / "profiles", PACKAGE_PROFILES, *(Path(d) for d in args.profiles)]
    return open_picker(dirs, [], args.out, Path.cwd() / "runs")
