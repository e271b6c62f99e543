"""The `tuitune` command line: the parser and the dispatch to `tuitune.subcommands`. Import-light on purpose:
`tuitune --help` and the picker must appear fast, so torch, timm, transformers and even Textual load only inside the
subcommand that needs them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tuitune import __version__
from tuitune.engine.record.files import WriteFailed
from tuitune.errors import UserError
from tuitune.exits import ExitCode
from tuitune.subcommands.queue import add_queue_commands, cmd_queue
from tuitune.subcommands.runs import cmd_attach, cmd_compare, cmd_picker, cmd_replay, cmd_runs
from tuitune.subcommands.steer import add_steer_commands, cmd_ctl, cmd_mcp, cmd_watch
from tuitune.subcommands.tools import cmd_compress, cmd_export, cmd_layers, cmd_lr_find
from tuitune.subcommands.train import cmd_demo, cmd_recipe, cmd_sweep, cmd_train


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile key, e.g. --set train.epochs=1 (repeatable)",
    )
    _add_offline(p)


def _add_offline(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        default=argparse.SUPPRESS,
        help="never download: pretrained weights and hub datasets come from the local cache only (as HF_HUB_OFFLINE=1)",
    )


def _go_offline() -> None:
    """`--offline` is HF_HUB_OFFLINE=1, set before huggingface_hub is imported (it reads the variable once);
    the engine also checks the variable itself (`tuitune.engine.hubnet.is_offline`)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = sys.modules.get("huggingface_hub.constants")  # already imported: it read the variable
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuitune",
        description="Fine-tune pretrained timm and Hugging Face backbones from a terminal. "
        "With no command, opens a picker of profiles.",
    )
    parser.add_argument("--version", action="version", version=f"tuitune {__version__}")
    parser.add_argument(
        "--profiles",
        action="append",
        default=[],
        metavar="DIR",
        help="another folder of profiles for the picker (repeatable)",
    )
    parser.add_argument("--out", metavar="DIR", help="run directory for a run started from the picker")
    _add_offline(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_commands(sub)
    layers = sub.add_parser(
        "layers", help="print the layer groups of a profile's (or a model's) backbone and each phase's memory plan"
    )
    layers.add_argument("profile", help="a profile .toml, a timm model name, or a Hugging Face model folder")
    layers.add_argument(
        "--json",
        action="store_true",
        help='print {"layers": [{"name", "params", "trainable"}, ...], "phases": [{"groups", "peak_bytes"}, ...]}',
    )
    _add_profile_options(layers)
    _add_runs_commands(sub)
    add_steer_commands(sub)
    add_queue_commands(sub)
    _add_ship_commands(sub)
    _add_sweep_command(sub)
    _add_recipe_command(sub)
    return parser


def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    """train and demo: a run in the dashboard, headless, or on several ranks."""
    train = sub.add_parser("train", help="train a profile (the dashboard, or --headless)")
    train.add_argument("profile", nargs="?", help="a profile .toml (optional with --resume)")
    train.add_argument(
        "--headless",
        action="store_true",
        help="no dashboard: print progress lines in the foreground (Ctrl+C stops; attach works)",
    )
    train.add_argument(
        "--inline",
        action="store_true",
        help="train in the dashboard's own process (ends with the terminal) instead of a run process",
    )
    train.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP)")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint; `auto` with --out DIR: resume DIR if it has one, else start "
        "it there (one command for a requeued batch job)",
    )
    train.add_argument(
        "--branch",
        metavar="RUN_DIR[@CKPT]",
        help="start a new run (--out, default RUN_DIR-branch-N) from a run's checkpoint: @last (default), @best, "
        "or @EPOCH where last or best was saved; with the run's profile and the --set changes",
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="reuse an existing --out directory (never a live run's), or one whose process.json names another host",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=0,
        metavar="N",
        help="train on N ranks of this machine (data-parallel: one per GPU, or CPU processes with "
        "gloo); with --headless. Several machines: torchrun (see the README)",
    )
    _add_profile_options(train)

    demo = sub.add_parser("demo", help="fine-tune the embedded offline demo (digits 0-4 -> 5-9)")
    demo.add_argument("--headless", action="store_true", help="no dashboard: print progress lines")
    demo.add_argument("--inline", action="store_true", help="train in the dashboard's own process")
    demo.add_argument("--out", metavar="DIR", help="run directory (default runs/demo-TIMESTAMP)")
    demo.add_argument("--force", action="store_true", help="reuse an existing --out directory")
    demo.add_argument("--nproc", type=int, default=0, metavar="N", help="train on N ranks (see train --nproc)")
    _add_profile_options(demo)


def _add_runs_commands(sub: argparse._SubParsersAction) -> None:
    """replay, attach, runs, compare: finding run directories and bringing a run back on screen."""
    replay = sub.add_parser("replay", help="play a recorded run into the dashboard")
    replay.add_argument("run_dir", help="a run directory (with events.jsonl)")
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="playback speed: 1 = as recorded, 10 = ten times faster, 0 = instant (default)",
    )
    attach = sub.add_parser("attach", help="bring the dashboard back to a live run (its history, then live)")
    attach.add_argument(
        "run_dir", nargs="?", help="a run directory (default: the newest live run under ./runs, or a choice)"
    )

    runs = sub.add_parser("runs", help="list run directories: status (live, finished, dead, ...), progress")
    runs.add_argument("dir", nargs="?", default="runs", help="the folder of run directories (default ./runs)")
    runs.add_argument("--json", action="store_true", help="one JSON array of objects")
    runs.add_argument(
        "--compare",
        action="store_true",
        help="a list of the runs to select (space) and compare (enter): curves, best metrics, keys",
    )
    compare = sub.add_parser(
        "compare", help="compare runs: val curves overlaid, best metrics, profile keys that differ"
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    compare.add_argument("--json", action="store_true", help="one JSON object: runs (best metrics, curve), differ")
    compare.add_argument("--text", action="store_true", help="plain text tables instead of the screen")


def _add_sweep_command(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="search a profile's [sweep] space with Optuna (pruning, resumable)")
    sweep.add_argument("profile", help="a profile .toml with a [sweep] table")
    sweep.add_argument("--trials", type=int, metavar="N", help="trials in the whole sweep (default: sweep.trials)")
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="K",
        help="K processes share the sweep (one GPU each when there are GPUs)",
    )
    sweep.add_argument(
        "--out", metavar="DIR", help="the sweep folder (default runs/NAME-sweep); the same folder resumes the sweep"
    )
    sweep.add_argument(
        "--headless",
        action="store_true",
        help="no leaderboard screen: run in the foreground, print the leaderboard as trials end",
    )
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="keep the study in this Optuna storage (sqlite:///sweep.db, postgresql://..., mysql://...) instead of "
        "the folder's journal: workers on several machines running the same command share it",
    )
    sweep.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process --workers started
    _add_profile_options(sweep)


def _add_recipe_command(sub: argparse._SubParsersAction) -> None:
    recipe = sub.add_parser(
        "recipe", help="find the fine-tuning recipe (strategy) for a profile's data on a time budget"
    )
    recipe.add_argument("profile", help="a profile .toml (its data, backbone, epochs, metric)")
    recipe.add_argument(
        "--budget",
        type=float,
        default=3.0,
        metavar="B",
        help="the search's time: B times one full fine-tuning run (measured on the first trial); default 3",
    )
    recipe.add_argument(
        "--candidates",
        metavar="A,B,...",
        help="the candidates to try (default: all; `full` is always one): full, progressive, "
        "progressive+train_bn, progressive+adabn, progressive+shift, progressive+best+restart, lp_ft, "
        "auto_rgn, full-lr/10",
    )
    recipe.add_argument("--out", metavar="DIR", help="the search folder (default runs/NAME-recipe)")
    recipe.add_argument(
        "--headless", action="store_true", help="no leaderboard screen: print the leaderboard as trials end"
    )
    _add_profile_options(recipe)


def _add_ship_commands(sub: argparse._SubParsersAction) -> None:
    """export, compress, lr-find: what turns a finished run into a model to ship (and picks its LR)."""
    export = sub.add_parser("export", help="write a run's model as files timm / transformers load directly")
    export.add_argument("run_dir", help="a run directory (with profile.toml and checkpoints/)")
    export.add_argument("--out", metavar="DIR", help="export folder (default RUN_DIR/export)")
    export.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    export.add_argument(
        "--sample",
        type=int,
        default=256,
        metavar="N",
        help="val examples + logits saved for a fresh-process check (0 = none)",
    )
    export.add_argument(
        "--onnx",
        action="store_true",
        help="also model.onnx (dynamic batch), kept only if onnxruntime matches PyTorch on val data within 1e-4",
    )
    export.add_argument(
        "--push-to-hub", metavar="ORG/NAME", help="upload the export with a model card to this hub repository"
    )
    export.add_argument(
        "--public", action="store_true", help="with --push-to-hub: a public repository (default private)"
    )

    compress = sub.add_parser("compress", help="prune / quantize a run's model and report before and after")
    compress.add_argument("run_dir", help="a run directory (with profile.toml and checkpoints/)")
    compress.add_argument("--sparsity", type=float, default=0.5, help="fraction of conv/linear weights zeroed")
    compress.add_argument("--quantize", action="store_true", help="also int8-quantize the Linear layers (CPU)")
    compress.add_argument(
        "--fine-tune-epochs", type=int, default=0, metavar="N", help="fine-tune N epochs after pruning, sparsity kept"
    )
    compress.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    compress.add_argument("--threads", type=int, default=1, help="CPU threads for the latency timing")

    lr_find = sub.add_parser("lr-find", help="sweep the learning rate and suggest one for the first phase")
    lr_find.add_argument("profile", help="a profile .toml")
    lr_find.add_argument("--steps", type=int, default=100, help="optimizer steps in the sweep")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--out", metavar="DIR", help="where lr_find.csv goes (default runs/NAME-lr-find)")
    _add_profile_options(lr_find)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "offline", False):
        _go_offline()
    handlers = {
        "train": cmd_train,
        "demo": cmd_demo,
        "layers": cmd_layers,
        "replay": cmd_replay,
        None: cmd_picker,
        "attach": cmd_attach,
        "runs": cmd_runs,
        "compare": cmd_compare,
        "export": cmd_export,
        "compress": cmd_compress,
        "lr-find": cmd_lr_find,
        "sweep": cmd_sweep,
        "recipe": cmd_recipe,
        "ctl": cmd_ctl,
        "watch": cmd_watch,
        "mcp": cmd_mcp,
        "queue": cmd_queue,
    }
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"tuitune: error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except WriteFailed as e:  # a full disk before a run's own record could take it (process.json, a run folder)
        print(f"tuitune: error: {e}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
