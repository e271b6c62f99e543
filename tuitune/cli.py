"""The `tuitune` command. Import-light on purpose: `tuitune --help` and the picker must appear fast, so torch,
timm, transformers and even Textual load only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from tuitune import __version__
from tuitune.errors import UserError

PACKAGE_PROFILES = Path(__file__).resolve().parent / "profiles"


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile key, e.g. --set train.epochs=1 (repeatable)")
    _add_offline(p)


def _add_offline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                   help="never download: pretrained weights come from the local cache only (as HF_HUB_OFFLINE=1)")


def _go_offline() -> None:
    """`--offline` is HF_HUB_OFFLINE=1, set before huggingface_hub is imported (it reads the variable once);
    the engine also checks the variable itself (`tuitune.engine.model.hub.is_offline`)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuitune", description="Fine-tune pretrained timm and Hugging Face backbones from a terminal. "
        "With no command, opens a picker of profiles.")
    parser.add_argument("--version", action="version", version=f"tuitune {__version__}")
    parser.add_argument("--profiles", action="append", default=[], metavar="DIR",
                        help="another folder of profiles for the picker (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="run directory for a run started from the picker")
    _add_offline(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a profile (the dashboard, or --headless)")
    train.add_argument("profile", nargs="?", help="a profile .toml (optional with --resume)")
    train.add_argument("--headless", action="store_true",
                       help="no dashboard: print progress lines in the foreground (Ctrl+C stops; attach works)")
    train.add_argument("--inline", action="store_true",
                       help="train in the dashboard's own process (ends with the terminal) instead of a run process")
    train.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--force", action="store_true", help="reuse an existing --out directory")
    train.add_argument("--nproc", type=int, default=0, metavar="N",
                       help="train on N ranks of this machine (data-parallel: one per GPU, or CPU processes with "
                            "gloo); with --headless. Several machines: torchrun (see the README)")
    _add_profile_options(train)

    demo = sub.add_parser("demo", help="fine-tune the embedded offline demo (digits 0-4 -> 5-9)")
    demo.add_argument("--headless", action="store_true", help="no dashboard: print progress lines")
    demo.add_argument("--inline", action="store_true", help="train in the dashboard's own process")
    demo.add_argument("--out", metavar="DIR", help="run directory (default runs/demo-TIMESTAMP)")
    demo.add_argument("--force", action="store_true", help="reuse an existing --out directory")
    demo.add_argument("--nproc", type=int, default=0, metavar="N", help="train on N ranks (see train --nproc)")
    _add_profile_options(demo)

    layers = sub.add_parser("layers", help="print the layer groups of a profile's (or a model's) backbone")
    layers.add_argument("profile", help="a profile .toml, a timm model name, or a Hugging Face model folder")
    layers.add_argument("--json", action="store_true", help='print [{"name", "params", "trainable"}, ...]')
    _add_profile_options(layers)

    replay = sub.add_parser("replay", help="play a recorded run into the dashboard")
    replay.add_argument("run_dir", help="a run directory (with events.jsonl)")
    replay.add_argument("--speed", type=float, default=0.0,
                        help="playback speed: 1 = as recorded, 10 = ten times faster, 0 = instant (default)")
    attach = sub.add_parser("attach", help="bring the dashboard back to a live run (its history, then live)")
    attach.add_argument("run_dir", nargs="?",
                        help="a run directory (default: the newest live run under ./runs, or a choice)")

    runs = sub.add_parser("runs", help="list run directories: status (live, finished, dead, ...), progress")
    runs.add_argument("dir", nargs="?", default="runs", help="the folder of run directories (default ./runs)")
    runs.add_argument("--json", action="store_true", help="one JSON array of objects")
    runs.add_argument("--compare", action="store_true",
                      help="a list of the runs to select (space) and compare (enter): curves, best metrics, keys")
    compare = sub.add_parser("compare",
                             help="compare runs: val curves overlaid, best metrics, profile keys that differ")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    compare.add_argument("--json", action="store_true", help="one JSON object: runs (best metrics, curve), differ")
    compare.add_argument("--text", action="store_true", help="plain text tables instead of the screen")
    _add_ship_commands(sub)
    _add_sweep_command(sub)
    return parser


def _add_sweep_command(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="search a profile's [sweep] space with Optuna (pruning, resumable)")
    sweep.add_argument("profile", help="a profile .toml with a [sweep] table")
    sweep.add_argument("--trials", type=int, metavar="N", help="trials in the whole sweep (default: sweep.trials)")
    sweep.add_argument("--workers", type=int, default=1, metavar="K",
                       help="K processes share the sweep (one GPU each when there are GPUs)")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (default runs/NAME-sweep); the same folder "
                                                    "resumes the sweep")
    sweep.add_argument("--headless", action="store_true",
                       help="no leaderboard screen: run in the foreground, print the leaderboard as trials end")
    sweep.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process --workers started
    _add_profile_options(sweep)


def _add_ship_commands(sub: argparse._SubParsersAction) -> None:
    """export, compress, lr-find: what turns a finished run into a model to ship (and picks its LR)."""
    export = sub.add_parser("export", help="write a run's model as files timm / transformers load directly")
    export.add_argument("run_dir", help="a run directory (with profile.toml and checkpoints/)")
    export.add_argument("--out", metavar="DIR", help="export folder (default RUN_DIR/export)")
    export.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    export.add_argument("--sample", type=int, default=256, metavar="N",
                        help="val examples + logits saved for a fresh-process check (0 = none)")

    compress = sub.add_parser("compress", help="prune / quantize a run's model and report before and after")
    compress.add_argument("run_dir", help="a run directory (with profile.toml and checkpoints/)")
    compress.add_argument("--sparsity", type=float, default=0.5, help="fraction of conv/linear weights zeroed")
    compress.add_argument("--quantize", action="store_true", help="also int8-quantize the Linear layers (CPU)")
    compress.add_argument("--fine-tune-epochs", type=int, default=0, metavar="N",
                          help="fine-tune N epochs after pruning, sparsity kept")
    compress.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    compress.add_argument("--threads", type=int, default=1, help="CPU threads for the latency timing")

    lr_find = sub.add_parser("lr-find", help="sweep the learning rate and suggest one for the first phase")
    lr_find.add_argument("profile", help="a profile .toml")
    lr_find.add_argument("--steps", type=int, default=100, help="optimizer steps in the sweep")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--out", metavar="DIR", help="where lr_find.csv goes (default runs/NAME-lr-find)")
    _add_profile_options(lr_find)


def _layers_profile(target: str, overrides: list[str]):  # -> RunProfile
    """A profile file, or a bare model name / HF folder / HF hub id (`org/name`) with default settings (a timm name
    at random init: the groups do not depend on the weights, and listing them must not need the hub)."""
    from tuitune.config import apply_overrides, load_profile, profile_from_dict

    if target.endswith(".toml") or Path(target).is_file():
        return load_profile(target, overrides)
    hub_id = "/" in target and not target.startswith(("hf-hub:", "hf_hub:", "local-dir:", ".", "/", "~"))
    source = "hf" if (Path(target) / "config.json").exists() or hub_id else "timm"
    table = {"model": {"source": source, "name": target, "pretrained": source == "hf"}, "data": {"kind": "synthetic"}}
    return profile_from_dict(apply_overrides(table, overrides), file=f"<{target}>")


def _progress_printer():  # -> Callable[[Event], None]
    """Setup progress (a download, tokenization) as lines on stderr, so `--json` output stays clean."""
    from tuitune.headless import ConsolePrinter

    return ConsolePrinter(out=sys.stderr)


def cmd_layers(args: argparse.Namespace) -> int:
    profile = _layers_profile(args.profile, args.overrides)
    from tuitune.engine.data.kinds import class_names, input_task
    from tuitune.engine.model.backbone import build_backbone, layer_table
    from tuitune.engine.model.lora import apply_lora, uses_lora
    from tuitune.engine.train.strategy import plan_phases

    task = input_task(profile.data, profile.model)
    backbone = build_backbone(profile.model, len(class_names(profile.data)), task=task, coarse=profile.strategy.coarse,
                              emit=_progress_printer())
    if uses_lora(profile.strategy):
        backbone, notes = apply_lora(backbone, profile.strategy)
        print(*notes, sep="\n", file=sys.stderr)
    first_phase = plan_phases([g.name for g in backbone.groups], profile.strategy).phases[0]
    rows = layer_table(backbone.groups, set(first_phase))
    if args.json:
        print(json.dumps(rows))
        return 0
    total = sum(r["params"] for r in rows)
    print(f"{backbone.description}: {len(rows)} layer groups")
    print(f"{'#':>3}  {'group':<24} {'params':>12}  {'share':>6}  first phase")
    for i, r in enumerate(rows):
        state = "trainable" if r["trainable"] else "frozen"
        lora = f"  LoRA {r['adapters']:,}" if "adapters" in r else ""
        print(f"{i:>3}  {r['name']:<24} {r['params']:>12,}  {r['params'] / max(total, 1):>6.1%}  {state}{lora}")
    print(f"{'':>3}  {'total':<24} {total:>12,}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.profile, args.resume = str(PACKAGE_PROFILES / "demo.toml"), None
    return cmd_train(args)


def cmd_train(args: argparse.Namespace) -> int:
    from tuitune import multirank
    from tuitune.config import load_profile
    from tuitune.engine.record.runlog import new_run_dir

    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if not (resume / "checkpoints" / "last.state.pt").exists():
            raise UserError(f"{resume}: --resume: no checkpoints/last.state.pt in this run directory")
        profile = load_profile(args.profile or resume / "profile.toml", args.overrides)
    elif not args.profile:
        raise UserError("train: a PROFILE is required (or --resume RUN_DIR)")
    else:
        profile = load_profile(args.profile, args.overrides)
    if multirank.under_torchrun():  # a rank: torchrun's, or one that `--nproc` started
        if not args.headless:
            raise UserError("torchrun: ranks train headless (add --headless)")
        if args.nproc:
            raise UserError("--nproc: already running under torchrun; use torchrun's --nproc_per_node instead")
        from tuitune.headless import run_headless

        dist, run_dir = multirank.worker_setup(profile, args.out, args.force, resume)
        try:
            return run_headless(profile, run_dir, resume, dist=dist, launched=bool(os.environ.get(
                multirank.ENV_LAUNCHED)))
        finally:
            dist.close()
    launched_dir = os.environ.get(multirank.ENV_RUN_DIR)  # the one rank of `--nproc 1`
    run_dir = resume or (Path(launched_dir) if launched_dir else new_run_dir(profile, args.out, args.force))
    if resume is not None and not launched_dir:
        _refuse_live(run_dir)
    if args.nproc:
        multirank.check_nproc(args.nproc)
        if not args.headless:  # the dashboard follows the ranks' launcher, started in a process of its own
            from tuitune.ui.launch import open_dashboard

            return open_dashboard(profile, run_dir, resume, ranks_argv=_launcher_args(args, run_dir))
        return multirank.launch(_worker_args(args, run_dir), args.nproc, run_dir)
    if args.headless:
        from tuitune.headless import run_headless

        return run_headless(profile, run_dir, resume)
    from tuitune.ui.launch import open_dashboard

    return open_dashboard(profile, run_dir, resume, inline=args.inline)


def _refuse_live(run_dir: Path) -> None:
    from tuitune.remote.runs import run_status

    if run_status(run_dir) == "live":
        raise UserError(f"{run_dir}: --resume: this run is live (tuitune attach {run_dir} brings it back)")


def cmd_runs(args: argparse.Namespace) -> int:
    from tuitune.remote.runs import format_table, list_runs

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: runs: no such folder")
    if args.compare:
        from tuitune.ui.launch import open_compare

        return open_compare(folder=folder)
    runs = list_runs(folder)
    if args.json:
        print(json.dumps([r.as_dict() for r in runs]))
    elif not runs:
        print(f"no run directories under {folder}")
    else:
        print(format_table(runs))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The screen; `--json`, `--text`, or an output that is not a terminal: printed."""
    from tuitune.remote.compare import compare_dict, format_compare, load_runs

    runs = load_runs([Path(d) for d in args.run_dirs])
    if args.json:
        print(json.dumps(compare_dict(runs)))
    elif args.text or not sys.stdout.isatty():
        print(format_compare(runs))
    else:
        from tuitune.ui.launch import open_compare

        return open_compare(runs=runs)
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """A live run: its dashboard. A run that ended: its record, summary on top. A dead one: one line, exit 2."""
    from tuitune.remote.runs import dead_message, is_run_dir, run_info

    run_dir = Path(args.run_dir) if args.run_dir else _choose_live_run(Path("runs"))
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir}: attach: not a tuitune run directory (no events.jsonl or process.json)")
    info = run_info(run_dir)
    if info.status == "dead":
        raise UserError(dead_message(info))
    if info.status == "live":
        from tuitune.ui.launch import open_attach

        return open_attach(run_dir)
    from tuitune.ui.launch import open_replay  # finished while away: the whole record, then its summary

    return open_replay(run_dir)


def _choose_live_run(folder: Path) -> Path:
    from tuitune.remote.runs import live_runs

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


def _worker_args(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The command line each rank of `--nproc` runs (after `python -m tuitune`)."""
    out = ["train"] + ([str(args.profile)] if args.profile else []) + ["--headless"]
    out += ["--resume", str(run_dir)] if args.resume else []
    for override in args.overrides:
        out += ["--set", override]
    return out


def _launcher_args(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The headless `--nproc` command line a dashboard starts in a process of its own."""
    out = ["train"] + ([str(args.profile)] if args.profile else []) + ["--headless", "--nproc", str(args.nproc)]
    out += ["--resume", str(run_dir)] if args.resume else ["--out", str(run_dir), "--force"]
    for override in args.overrides:
        out += ["--set", override]
    return out


def cmd_replay(args: argparse.Namespace) -> int:
    from tuitune.ui.launch import open_replay

    run_dir = Path(args.run_dir)
    if not (run_dir / "events.jsonl").exists():
        raise UserError(f"{run_dir}: no events.jsonl here (is this a tuitune run directory?)")
    return open_replay(run_dir, args.speed)


def cmd_picker(args: argparse.Namespace) -> int:
    from tuitune.ui.launch import open_picker

    dirs = [Path.cwd() / "profiles", PACKAGE_PROFILES, *(Path(d) for d in args.profiles)]
    return open_picker(dirs, [], args.out, Path.cwd() / "runs")


def cmd_export(args: argparse.Namespace) -> int:
    from tuitune.engine.tools.export import export_run

    manifest = export_run(args.run_dir, args.out, args.checkpoint, args.sample)
    print(f"exported {manifest['checkpoint']} -> {manifest['dir']}")
    print(f"load: {manifest['load']}")
    if manifest.get("load_by_name"):
        print(f"  or: {manifest['load_by_name']}")
    sample = manifest.get("sample") or {}
    if sample.get("written"):
        print(f"sample.safetensors: {sample['examples']} val examples, accuracy {sample['acc']:.3f}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from tuitune.engine.tools.compress import compress_run, format_report

    report = compress_run(args.run_dir, args.sparsity, args.quantize, args.fine_tune_epochs, tag=args.checkpoint,
                          threads=args.threads)
    print(format_report(report))
    print(f"saved: {', '.join(report['files'].values())}; report in {Path(args.run_dir) / 'summary.json'}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from tuitune.config import load_profile

    profile = load_profile(args.profile, args.overrides)
    from tuitune.engine.tools.lr_find import find_lr_for_profile, text_plot

    out = Path(args.out) if args.out else Path("runs") / f"{profile.name}-lr-find"
    curve, csv_path = find_lr_for_profile(profile, out, _progress_printer(), steps=args.steps,
                                          start_lr=args.start_lr, end_lr=args.end_lr)
    print(text_plot(curve))
    fmt = lambda v: f"{v:.3g}" if v else "none"  # noqa: E731
    print(f"suggested lr: {fmt(curve.suggestion)} ({curve.method}; steep {fmt(curve.steep)}, valley "
          f"{fmt(curve.valley)}; the profile's train.lr is {profile.train.lr:g}); "
          f"{len(curve.lrs)} steps{' (stopped: loss diverged)' if curve.stopped_early else ''} -> {csv_path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tuitune.sweep.runner import load_sweep, run_sweep, run_worker

    if args.trials is not None and args.trials < 1 or args.workers < 1:
        raise UserError("sweep: --trials and --workers must be >= 1")
    sweep = load_sweep(args.profile, args.overrides)  # bad tables fail here, before any folder is made
    out = Path(args.out) if args.out else Path("runs") / f"{sweep.name}-sweep"
    if args.worker:
        return run_worker(args.profile, args.overrides, out, args.trials or sweep.spec.trials)
    if args.headless:
        return run_sweep(args.profile, args.overrides, out, args.trials, args.workers)
    from tuitune.sweep.runner import start_detached
    from tuitune.ui.launch import open_sweep

    start_detached(args.profile, args.overrides, out, args.trials, args.workers)  # outlives this screen
    return open_sweep(out, f"sweep {sweep.name} -> {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "offline", False):
        _go_offline()
    handlers = {"train": cmd_train, "demo": cmd_demo, "layers": cmd_layers, "replay": cmd_replay, None: cmd_picker,
                "attach": cmd_attach, "runs": cmd_runs, "compare": cmd_compare,
                "export": cmd_export, "compress": cmd_compress, "lr-find": cmd_lr_find, "sweep": cmd_sweep}
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"tuitune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
