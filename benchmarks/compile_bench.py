"""`benchmarks/overhead.py --compile`: what `train.compile` costs and gives, across phase changes.

The same progressive run twice, each in a fresh process (dynamo's caches and inductor's in-memory state start empty):
eager, then `train.compile = true`. `--epochs` epochs of `--steps` steps, one phase change per epoch (head, then the
last block, ...), the feature cache off so every phase trains the whole compiled model (and on, with
`--feature-cache`: the cached top is compiled then). From the run's own events:

  first_step_s      RunStarted to the first MetricsUpdated (`--log-every` steps): the compile is in there
  compile_s         the compile time `ModelCompiled` reports over the run (dynamo's callbacks)
  compiles          graphs compiled (one per phase expected), recompiles (a guard failed: a new shape)
  sps_eager, sps_compiled  the median samples/s over the metric windows with no compile in them
  sps_ratio         compiled / eager (above 1: compiling pays, once compiled)
  limit_check       a 10-phase model compiled with dynamo's `eager` backend: graphs compiled with the engine's
                    drop at each trainable-set change (10 expected) and without (dynamo stops at its limit, 8)

Inductor on a CPU compiles C++ for every graph: minutes on a small machine. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def profile_table(args: argparse.Namespace, compiled: bool) -> dict[str, Any]:
    samples = int(args.steps * args.batch_size / 0.9) + 2 * args.num_classes
    return {
        "name": "compile",
        "model": {
            "source": "timm",
            "name": args.model,
            "pretrained": False,
            "kwargs": args.kwargs,
            "img_size": args.img_size,
        },
        "data": {
            "kind": "synthetic",
            "num_samples": samples,
            "num_classes": args.num_classes,
            "batch_size": args.batch_size,
            "val_fraction": 0.1,
        },
        "train": {
            "epochs": args.epochs,
            "lr": 1e-3,
            "optimizer": "adamw",
            "schedule": "constant",
            "seed": 0,
            "device": args.device,
            "log_every": args.log_every,
            "max_steps_per_epoch": args.steps,
            "compile": compiled,
            "feature_cache": args.feature_cache,
            "domain_shift": False,
            "system_every_s": 0,
        },
        "strategy": {"kind": "progressive", "every_epochs": 1},
        "early_stopping": {"enabled": False},
    }


def run_one(args: argparse.Namespace, compiled: bool) -> dict[str, Any]:
    """One run in this process: its events, timed as they arrive."""
    import torch

    from tuitune.config import profile_from_dict
    from tuitune.engine.commands import Control
    from tuitune.engine.events import MetricsUpdated, ModelCompiled, RunStarted
    from tuitune.engine.session import run_training

    torch.set_num_threads(args.threads)
    timed: list[tuple[float, Any]] = []
    profile = profile_from_dict(profile_table(args, compiled), file="<compile>")
    with tempfile.TemporaryDirectory(prefix="tuitune-compile-") as tmp:
        end = run_training(
            profile, Path(tmp), lambda e: timed.append((time.perf_counter(), e)), Control(), interactive=False
        )
    if type(end).__name__ != "RunFinished":
        raise SystemExit(f"the {'compiled' if compiled else 'eager'} run failed: {getattr(end, 'message', end)}")
    started = next(t for t, e in timed if isinstance(e, RunStarted))
    first = next(t for t, e in timed if isinstance(e, MetricsUpdated))
    events = [e for _, e in timed]
    windows = [
        e.samples_per_s
        for i, e in enumerate(events)
        if isinstance(e, MetricsUpdated) and e.step > args.log_every and not _compiled_in(events, i)
    ]
    reports = [e for e in events if isinstance(e, ModelCompiled)]
    return {
        "first_step_s": first - started,
        "sps": statistics.median(windows) if windows else None,
        "windows": len(windows),
        "compile_s": sum(r.seconds for r in reports),
        "compiles": sum(r.compiles for r in reports),
        "recompiles": sum(r.recompiles for r in reports),
        "phases": len({e.phase for e in events if type(e).__name__ == "PhaseChanged"}) + 1,
    }


def limit_check(phases: int = 10) -> dict[str, int]:
    """Graphs compiled over `phases` trainable-set changes of one compiled model (dynamo's `eager` backend: the
    graphs, not the kernels), with the old graphs dropped at each change as the engine does, and without: dynamo's
    `recompile_limit` (8) stops the second at 8 and runs the rest eagerly."""
    import torch

    from tuitune.engine.train.compile_watch import CompileWatch, drop_graphs

    def compiles(drop: bool) -> int:
        model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(phases)))
        for p in model.parameters():
            p.requires_grad_(False)
        forward, watch = torch.compile(model, backend="eager"), CompileWatch().open()
        try:
            for layer in reversed(model):
                for p in layer.parameters():
                    p.requires_grad_(True)
                if drop:
                    drop_graphs()
                forward(torch.randn(2, 4)).sum().backward()
            return watch.total
        finally:
            watch.close()
            torch._dynamo.reset()

    return {"phases": phases, "compiled_with_drop": compiles(True), "compiled_without_drop": compiles(False)}


def _compiled_in(events: list[Any], i: int) -> bool:
    """The window read at `events[i]` compiled something: its report follows it, before the next reading."""
    for e in events[i + 1 :]:
        name = type(e).__name__
        if name == "ModelCompiled":
            return True
        if name == "MetricsUpdated":
            return False
    return False


def worker_argv(args: argparse.Namespace, worker: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--model",
        args.model,
        "--kwargs",
        json.dumps(args.kwargs),
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--num-classes",
        str(args.num_classes),
        "--steps",
        str(args.steps),
        "--epochs",
        str(args.epochs),
        "--log-every",
        str(args.log_every),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        *(["--feature-cache"] if args.feature_cache else []),
    ]


def run_isolated(args: argparse.Namespace, worker: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.run(worker_argv(args, worker), cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"compile benchmark worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"{worker:<8} {json.dumps(result)}", flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--kwargs", type=json.loads, default={"channels": [16, 32, 64, 128], "stem_width": 16})
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs, one phase each")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--feature-cache", action="store_true")
    p.add_argument("--worker", choices=("eager", "compiled", "limit"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "limit":
        print("RESULT " + json.dumps(limit_check()), flush=True)
        return 0
    if args.worker:
        print("RESULT " + json.dumps(run_one(args, args.worker == "compiled")), flush=True)
        return 0
    print(
        f"compile benchmark: {args.model} {args.kwargs} {args.img_size}px, batch {args.batch_size}, "
        f"{args.epochs} epochs (phases) x {args.steps} steps, device {args.device}, threads {args.threads}, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    eager, compiled, limit = run_isolated(args, "eager"), run_isolated(args, "compiled"), run_isolated(args, "limit")
    ratio = compiled["sps"] / eager["sps"] if compiled["sps"] and eager["sps"] else None
    print(
        json.dumps(
            {
                "first_step_s_eager": round(eager["first_step_s"], 2),
                "first_step_s_compiled": round(compiled["first_step_s"], 2),
                "first_step_cost_s": round(compiled["first_step_s"] - eager["first_step_s"], 2),
                "compile_s": round(compiled["compile_s"], 2),
                "compiles": compiled["compiles"],
                "recompiles": compiled["recompiles"],
                "phases": compiled["phases"],
                "sps_eager": round(eager["sps"], 1) if eager["sps"] else None,
                "sps_compiled": round(compiled["sps"], 1) if compiled["sps"] else None,
                "sps_ratio": round(ratio, 3) if ratio else None,
                "model": args.model,
                "img_size": args.img_size,
                "batch_size": args.batch_size,
                "device": args.device,
                "threads": args.threads,
                "feature_cache": args.feature_cache,
                "limit_check": limit,
                "load_avg": round(os.getloadavg()[0], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
