"""`tuitune ctl` and `tuitune watch`: steer a live run and read its events from a script, without the dashboard.

Thin shells over `tuitune.remote.ctl` and `tuitune.remote.watch` (the library an agent interface calls too). Exit
codes (tuitune/exits.py): ctl 0 when the engine confirmed the command (its confirmation printed), 1 when the run
refused it (the reason printed), 2 when the run could not be reached (no live run there, no socket, another user's,
the run ended or did not answer in time) or the verb's arguments are bad (nothing sent then). watch 0 once the run's
end (or a finished run's whole record) is out, 2 for no run there or a live run lost before its end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune.exits import ExitCode


def add_steer_commands(sub: argparse._SubParsersAction) -> None:
    from tuitune.remote.ctl import TIMEOUT_S, VERBS

    verbs = "; ".join(f"{name} {' '.join(v.args)}".strip() + f": {v.help}" for name, v in VERBS.items())
    ctl = sub.add_parser(
        "ctl",
        help="steer a live run: every dashboard command as a verb; prints the engine's confirmation",
        description=f"Verbs: {verbs}.",
    )
    ctl.add_argument("run_dir", metavar="RUN_DIR", help="a live run's directory")
    ctl.add_argument("verb", metavar="VERB", choices=list(VERBS), help=", ".join(VERBS))
    ctl.add_argument("args", nargs="*", metavar="ARGS", help="the verb's arguments (GROUP, FACTOR, yes|no)")
    ctl.add_argument("--apply", action="store_true", help="lr-find: apply the suggestion once the sweep is done")
    ctl.add_argument("--json", action="store_true", help="print the engine's answering events as JSON lines")
    ctl.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, metavar="S", help=f"wait S seconds for the answer ({TIMEOUT_S:.0f})"
    )
    watch = sub.add_parser("watch", help="stream a run's events (history, then live) as JSON lines or progress lines")
    watch.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, live or not")
    watch.add_argument("--json", action="store_true", help="one JSON object per event, as events.jsonl has them")
    watch.add_argument("--since", type=int, default=0, metavar="STEP", help="from the first event at global step STEP")
    agent = sub.add_parser(
        "mcp",
        help="serve the runs under a folder to an agent over the Model Context Protocol (stdio)",
        description="Tools: list_runs, run_status, run_metrics, layer_table, send_command (the ctl verbs; the "
        "run's log names the sender 'agent'). Needs the mcp package: pip install 'tuitune[mcp]'.",
    )
    agent.add_argument("folder", nargs="?", default="runs", metavar="FOLDER", help="the runs' folder (./runs)")


def cmd_ctl(args: argparse.Namespace) -> int:
    from tuitune.remote.ctl import APPLIED, steer

    outcome = steer(Path(args.run_dir), args.verb, args.args, apply=args.apply, timeout=args.timeout)
    if args.json and outcome.events:
        for event in outcome.events:
            print(json.dumps(event, separators=(",", ":")), flush=True)
    elif outcome.status == APPLIED:
        print(outcome.message, flush=True)
    if outcome.status != APPLIED:  # the refusal or the reason the run is out of reach: stderr, like every error
        print(f"tuitune: ctl: {outcome.message}", file=sys.stderr, flush=True)
    return outcome.exit_code


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve until the agent closes stdin. stdout is the protocol's: nothing else is printed there."""
    try:
        import mcp  # noqa: F401  (the SDK, imported by serve: said in one line when it is missing)

        from tuitune.remote.mcp_server import serve
    except ImportError:
        print("tuitune: error: mcp: the mcp package is not installed (pip install 'tuitune[mcp]')", file=sys.stderr)
        return ExitCode.BAD_INPUT
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"tuitune: error: mcp: {folder}: no such folder", file=sys.stderr)
        return ExitCode.BAD_INPUT
    serve(folder)
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> int:
    from tuitune.remote.watch import watch

    out = _json_line if args.json else _console()
    try:
        code, why = watch(Path(args.run_dir), out, since=args.since)
    except BrokenPipeError:  # `tuitune watch RUN --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return ExitCode.OK
    if why:
        print(f"tuitune: watch: {why}", file=sys.stderr, flush=True)
    return code


def _json_line(data: dict[str, Any]) -> None:
    print(json.dumps(data, separators=(",", ":")), flush=True)


def _console() -> Callable[[dict[str, Any]], None]:
    """The console's human lines (`ConsolePrinter`, as `train --headless` prints them)."""
    from tuitune.console import ConsolePrinter
    from tuitune.engine.events import event_from_dict

    printer = ConsolePrinter()

    def out(data: dict[str, Any]) -> None:
        try:
            printer(event_from_dict(dict(data)))
        except (KeyError, TypeError, ValueError):  # an event of a newer tuitune: skipped
            pass

    return out
