"""`tuitune layers`, `export`, `compress` and `lr-find`: printed answers about a profile's backbone or a finished
run (progress goes to stderr, so `--json` output stays clean)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuitune.errors import UserError
from tuitune.exits import ExitCode

if TYPE_CHECKING:
    from tuitune.engine.tools.hub_push import PushTarget


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
    from tuitune.console import ConsolePrinter

    return ConsolePrinter(out=sys.stderr)


def cmd_layers(args: argparse.Namespace) -> int:
    """The groups, which train in the first phase, and each phase's memory plan (one real batch measured)."""
    profile = _layers_profile(args.profile, args.overrides)
    from tuitune.engine.memory_plan import planned_lines
    from tuitune.engine.tools.layers import GroupsRead, first_phase_rows, groups_key
    from tuitune.engine.tools.memory import plan_parts

    parts, planned = plan_parts(profile, emit=_progress_printer())
    if parts.warnings:  # LoRA's notes among them
        print(*parts.warnings, sep="\n", file=sys.stderr)
    read = GroupsRead(parts.backbone.description, parts.groups, parts.warnings, groups_key(profile.strategy))
    rows, _ = first_phase_rows(read, profile.strategy)
    if args.json:
        phases = [{"groups": list(p.groups), "peak_bytes": p.peak} for p in planned.phases]
        print(json.dumps({"layers": rows, "phases": phases, "batch_size": planned.batch_size}))
        return ExitCode.OK
    total = sum(r["params"] for r in rows)
    print(f"{read.description}: {len(rows)} layer groups")
    print(f"{'#':>3}  {'group':<24} {'params':>12}  {'share':>6}  first phase")
    for i, r in enumerate(rows):
        state = "trainable" if r["trainable"] else "frozen"
        lora = f"  LoRA {r['adapters']:,}" if "adapters" in r else ""
        print(f"{i:>3}  {r['name']:<24} {r['params']:>12,}  {r['params'] / max(total, 1):>6.1%}  {state}{lora}")
    print(f"{'':>3}  {'total':<24} {total:>12,}")
    print(*planned_lines(planned), sep="\n")
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    """Export; with --onnx the checked ONNX file and its parity line; with --push-to-hub the upload (its target
    checked before anything is exported)."""
    target = None
    if args.push_to_hub:
        from tuitune.engine.tools.hub_push import push_target

        target = push_target(args.push_to_hub, private=not args.public)
    elif args.public:
        raise UserError("--public: only with --push-to-hub")
    from tuitune.engine.tools.export import export_run
    from tuitune.engine.tools.onnx_export import ParityFailed, parity_line

    try:
        manifest = export_run(args.run_dir, args.out, args.checkpoint, args.sample, onnx=args.onnx)
    except ParityFailed as e:
        print(f"tuitune: error: {e}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"exported {manifest['checkpoint']} -> {manifest['dir']}")
    print(f"load: {manifest['load']}")
    if manifest.get("load_by_name"):
        print(f"  or: {manifest['load_by_name']}")
    sample = manifest.get("sample") or {}
    if sample.get("written") and "acc" in sample:
        print(f"sample.safetensors: {sample['examples']} val examples, accuracy {sample['acc']:.3f}")
    elif sample.get("written"):  # a language model: greedy generations
        print(f"{sample['file']}: {sample['examples']} val prompts, exact match {sample['exact_match']:.3f}")
    if manifest.get("onnx"):
        print(parity_line(manifest["onnx"]))
    return ExitCode.OK if target is None else _push(target, args.run_dir, manifest)


def _push(target: PushTarget, run_dir: str, manifest: dict) -> int:
    from tuitune.engine.tools.hub_push import PushFailed, push_export

    try:
        pushed = push_export(target, Path(run_dir), manifest)
    except PushFailed as e:
        print(f"tuitune: error: {e}", file=sys.stderr)
        return ExitCode.FAILED
    kind = "private" if pushed["private"] else "public"
    print(f"pushed {len(pushed['files'])} files to {pushed['url']} ({kind}, commit {pushed['commit'][:12]}): ", end="")
    print(", ".join(pushed["files"]))
    return ExitCode.OK


def cmd_compress(args: argparse.Namespace) -> int:
    from tuitune.console import compression_table
    from tuitune.engine.tools.compress import compress_run

    report = compress_run(
        args.run_dir, args.sparsity, args.quantize, args.fine_tune_epochs, tag=args.checkpoint, threads=args.threads
    )
    print(compression_table(report))
    print(f"saved: {', '.join(report['files'].values())}; report in {Path(args.run_dir) / 'summary.json'}")
    return ExitCode.OK


def cmd_lr_find(args: argparse.Namespace) -> int:
    from tuitune.config import load_profile

    profile = load_profile(args.profile, args.overrides)
    from tuitune.engine.tools.lr_find import find_lr_for_profile, text_plot

    out = Path(args.out) if args.out else Path("runs") / f"{profile.name}-lr-find"
    curve, csv_path = find_lr_for_profile(
        profile, out, _progress_printer(), steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr
    )
    print(text_plot(curve))
    fmt = lambda v: f"{v:.3g}" if v else "none"  # noqa: E731
    print(
        f"suggested lr: {fmt(curve.suggestion)} ({curve.method}; steep {fmt(curve.steep)}, valley "
        f"{fmt(curve.valley)}; the profile's train.lr is {profile.train.lr:g}); "
        f"{len(curve.lrs)} steps{' (stopped: loss diverged)' if curve.stopped_early else ''} -> {csv_path}"
    )
    return ExitCode.OK
