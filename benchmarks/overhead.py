"""What does tuitune cost over a hand-written PyTorch loop?  `python benchmarks/overhead.py [--help]`

Four runs of the same model, data, batch size, optimizer and step count, side by side in one invocation:

  bare    a minimal loop: fetch, forward, cross-entropy, backward, AdamW step (on CUDA: bf16 autocast and
          cudnn.benchmark, what a user writing it for speed would do)
  engine  `tuitune.engine.session.run_training` headless (what `tuitune train --headless` runs), events -> a clock
  attached  the engine as a run process runs it (control socket open, `tuitune.remote`), with the real dashboard
          attached from another process (`attach_viewer.py`: `tuitune attach`'s app, Textual headless, 120x40)
  tui     the same engine inside the real Textual app (`TuituneApp("train")` under `App.run_test()`, headless,
          120x40): engine in the app's thread worker, dashboard, plots and layer table updating, as `tuitune train`

Fairness: all three build the model with `tuitune.engine.model.backbone.build_backbone` from the same profile and
seed, read the same synthetic train split (`tuitune.engine.data.kinds.build_datasets`) through a DataLoader with the
same batch size, shuffling, worker count and pinning, and run one epoch of `warmup + steps` steps with
`torch.set_num_threads(N)`. Only the `steps` after the `warmup` are timed, at a host-sync point in each: the bare
loop synchronizes the device after steps `warmup` and `warmup + steps`; the engine's clock reads the time when its
`MetricsUpdated` events for those global steps arrive (each comes right after the engine's one host sync;
`warmup` and `steps` are multiples of `train.log_every`). So setup (imports, model, data, the first steps) and the
epoch end (validation, checkpoints) are outside the window for all three, and the engine's per-`log_every` work
(metric read, per-group grad norms, the event log on disk, and in `tui` the dashboard) is inside it.

Each run is a fresh worker process by default (`--in-process` runs them all in this one, sharing the data): on a
small CPU, a process that already ran torch on another thread has a second OpenMP thread team, which makes later
runs on a new thread (the dashboard's worker) slower than a real `tuitune train` would be; fresh processes give
every mode the same start. Workers run with OMP_WAIT_POLICY=PASSIVE (`--omp-wait-policy`): with the default
spin-waiting, a run that shares 2 cores with any other busy process can lose 3-50x (an OpenMP thread spins at a
barrier while its partner is descheduled), which swamps the differences measured here; passive waiting costs all
three modes alike. Rounds rotate the order (a b c / b c a / c a b ...); the figures are medians.

Start-up: `help_s` is the median wall time of 5 `python -m tuitune --help` subprocesses. `first_frame_s` is the median
over 5 subprocesses of `benchmarks/first_frame.py`, which runs `tuitune.cli.main([])` (the `tuitune` command with no
arguments) with Textual headless and prints a line once the picker screen is mounted, populated and refreshed;
the time is from spawning the process to reading that line.

`--report all` (or a comma list of tensorboard,mlflow,wandb,trackio) runs the engine with those experiment trackers
on (`[report] to`), offline and inside the temp folder. They run on the relay's own thread, so the training thread's
own time (`engine_overhead_ms`) shows what feeding them costs a step; `engine_process_cpu_ms` (every thread) and
`engine_wall_ms` show what the trackers' thread costs besides.

The last line printed is one JSON object; `cache_speedup` comes from `benchmarks/feature_cache.py` (the demo's
head-only epochs after the first, without the cache / with it).
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
HERE = Path(__file__).resolve().parent
MODES = ("bare", "engine", "tui", "attached")
REPORT_ALL = ["tensorboard", "mlflow", "wandb", "trackio"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--model", default="resnet18", help="timm model name (random init)")
    p.add_argument("--kwargs", default='{"channels": [32, 64, 128, 256]}', help="timm.create_model kwargs, JSON")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (multiple of --log-every)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (multiple of --log-every)")
    p.add_argument("--log-every", type=int, default=10, help="the engine's train.log_every")
    p.add_argument("--rounds", type=int, default=5, help="rounds of all modes, order rotated")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = the CPUs this process may use")
    p.add_argument("--modes", default=",".join(MODES), help="which of bare,engine,tui,attached to run")
    p.add_argument("--in-process", action="store_true", help="all runs in this process (data built once)")
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "unset"),
        default="passive",
        help="OMP_WAIT_POLICY of the worker processes (default passive: see below)",
    )
    p.add_argument("--no-startup", action="store_true", help="skip help_s and first_frame_s")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="measure the per-step time the engine and the dashboard add, precisely: the loop's own "
        "time outside forward, backward, optimizer step and data fetch, timed directly, on a "
        "job whose step is a few ms (defaults below change unless given); prints engine_overhead_ms "
        "and tui_overhead_ms",
    )
    p.add_argument(
        "--report",
        default="",
        help="experiment trackers the engine feeds in every mode that runs it ([report] to), a comma list of "
        "tensorboard,mlflow,wandb,trackio or `all`; W&B offline, Trackio's store and MLflow's in the temp folder",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="train.compile instead: the first-step cost and the steady samples/s of a compiled progressive run "
        "against eager (benchmarks/compile_bench.py; its own options follow --compile)",
    )
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)  # one run, JSON out (internal)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.overhead:
        _overhead_defaults(p, args, argv if argv is not None else sys.argv[1:])
    if args.warmup % args.log_every or args.steps % args.log_every or args.warmup < args.log_every:
        p.error(
            "--warmup and --steps must be positive multiples of --log-every (the engine is timed at its "
            "MetricsUpdated events)"
        )
    args.kwargs_json = args.kwargs
    args.kwargs = json.loads(args.kwargs)
    args.threads = args.threads or _cpus()
    args.modes = [m for m in args.modes.split(",") if m]
    args.report_to = REPORT_ALL if args.report == "all" else [t for t in args.report.split(",") if t]
    if set(args.report_to) - set(REPORT_ALL):
        p.error(f"--report: expected some of {','.join(REPORT_ALL)} or all")
    if set(args.modes) - set(MODES):
        p.error(f"--modes: expected some of {','.join(MODES)}")
    return args


# The `--overhead` job: a small conv net on 16 px images, batch 8 (a few ms a step on one CPU core; the engine's
# own time is what is left when forward, backward, optimizer step and data fetch are subtracted), many steps.
OVERHEAD_DEFAULTS = {
    "kwargs": '{"channels": [8, 16, 32, 64], "stem_width": 8}',
    "img_size": 16,
    "batch_size": 8,
    "warmup": 50,
    "steps": 400,
    "rounds": 3,
    "no_startup": True,
    "threads": 1,
}


def _overhead_defaults(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for key, value in OVERHEAD_DEFAULTS.items():
        if "--" + key.replace("_", "-") not in given:
            setattr(args, key, value)


# ------------------------------------------------------------------------------------------------ runs


def prepare_process(args: argparse.Namespace) -> Any:
    """Import the runs (torch, timm) into this process, set the thread count, check the device."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import overhead_runs as runs
    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("overhead.py: --device cuda, but torch.cuda.is_available() is False")
    return runs


def worker(args: argparse.Namespace) -> int:
    """`--worker MODE`: one run in this fresh process; its figures as one `RESULT {json}` line."""
    runs = prepare_process(args)
    if args.overhead:
        runs.METER.install()
    result = runs.run_mode(args.worker, runs.make_profile(args), args, Path(args.run_dir))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_isolated(mode: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--run-dir",
        str(run_dir),
        "--model",
        args.model,
        "--kwargs",
        args.kwargs_json,
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--num-classes",
        str(args.num_classes),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--log-every",
        str(args.log_every),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--report",
        ",".join(args.report_to),
    ] + (["--overhead"] if args.overhead else [])
    env = _env()
    if args.omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{mode} worker failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def rotations(modes: list[str], rounds: int) -> list[list[str]]:
    return [modes[i % len(modes) :] + modes[: i % len(modes)] for i in range(rounds)]


def run_rounds(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    runs = profile = None
    if args.in_process:
        runs = prepare_process(args)
        if args.overhead:
            runs.METER.install()
        runs.share_synthetic_data()
        profile = runs.make_profile(args)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    for r, order in enumerate(rotations(args.modes, args.rounds), start=1):
        for mode in order:
            run_dir = tmp / f"{mode}-{r}"
            try:
                if runs is not None:
                    result = runs.run_mode(mode, profile, args, run_dir)
                else:
                    result = run_isolated(mode, args, run_dir)
            except Exception as e:
                print(f"round {r}  {mode:<6} FAILED: {str(e).strip().splitlines()[-1][:300]}", flush=True)
                continue
            results[mode].append(result)
            print(f"round {r}  {describe(mode, result, args)}", flush=True)
    return results


def describe(mode: str, r: dict[str, Any], args: argparse.Namespace) -> str:
    ms = 1000 / args.steps
    ui = f", ui thread {r['main_cpu'] * ms:5.2f}" if mode == "tui" else ""
    if mode == "attached":
        ui = f", viewer process {r['viewer_cpu_s']:.1f} s cpu, saw {r['viewer_events']} events"
    drawn = (
        (
            f"  plots drawn {r['plot_redraws']}, metric events {r['metric_events']}, dashboard at step "
            f"{r['dashboard_global_step']}"
        )
        if mode == "tui"
        else ""
    )
    return (
        f"{mode:<6} {r['sps']:8.1f} samples/s {r['wall'] * ms:7.2f} ms/step | cpu ms/step: train thread "
        f"{r['thread_cpu'] * ms:6.2f}{ui}, process {r['process_cpu'] * ms:6.2f} | load "
        f"{os.getloadavg()[0]:.2f}{drawn}"
    )


# ------------------------------------------------------------------------------------------------ start-up


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NO_COLOR"}


def time_subprocess(cmd: list[str], until_line: str | None = None, timeout: float = 60.0) -> float:
    """Wall time from spawn to exit, or to the first stdout line starting with `until_line`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = None
    if until_line is not None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(until_line):
                elapsed = time.perf_counter() - t0
                break
    _, err = proc.communicate(timeout=timeout)
    if until_line is None and proc.returncode == 0:
        elapsed = time.perf_counter() - t0
    if elapsed is None:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}, no {until_line or 'success'}: {err[-500:]}")
    return elapsed


def startup_times(repeats: int = 5) -> tuple[float, float]:
    helps = [time_subprocess([sys.executable, "-m", "tuitune", "--help"]) for _ in range(repeats)]
    frames = [
        time_subprocess([sys.executable, str(HERE / "first_frame.py")], until_line="FIRST_FRAME")
        for _ in range(repeats)
    ]
    print(f"help_s samples: {_fmt_list(helps)}   first_frame_s samples: {_fmt_list(frames)}")
    return statistics.median(helps), statistics.median(frames)


# ------------------------------------------------------------------------------------------------ report


def _fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    startup: tuple[float, float] | None,
    cache: float | None = None,
) -> dict[str, Any]:
    med = {m: statistics.median(r["sps"] for r in rs) for m, rs in results.items() if rs}
    for mode, rs in results.items():
        if not rs:
            print(f"median {mode:<6} -- every run failed")
            continue
        print(f"median {mode:<6} {med[mode]:8.1f} samples/s  ({_fmt_list([r['sps'] for r in rs])})")
    bare, engine, tui, attached = med.get("bare"), med.get("engine"), med.get("tui"), med.get("attached")
    ratio = lambda x: round(x / bare, 4) if x is not None and bare else None  # noqa: E731
    help_s, first_frame_s = startup if startup is not None else (None, None)
    cpu = {m: statistics.median(r["process_cpu"] for r in rs) for m, rs in results.items() if rs}
    cpu_ratio = lambda m: round(cpu["bare"] / cpu[m], 4) if "bare" in cpu and m in cpu else None  # noqa: E731
    return {
        "bare_sps": _round(bare, 1),
        "engine_sps": _round(engine, 1),
        "tui_sps": _round(tui, 1),
        "attached_sps": _round(attached, 1),
        "engine_ratio": ratio(engine),
        "tui_ratio": ratio(tui),
        "attached_ratio": ratio(attached),
        "cache_speedup": cache,  # demo head-only epochs after the first, without / with the feature cache
        "help_s": _round(help_s, 3),
        "first_frame_s": _round(first_frame_s, 3),
        "bare_step_ms": _round(1000 * args.batch_size / bare, 2) if bare else None,
        # secondary, less sensitive to other load on the machine: bare's CPU seconds per step / the mode's
        "engine_cpu_ratio": cpu_ratio("engine"),
        "tui_cpu_ratio": cpu_ratio("tui"),
        "attached_cpu_ratio": cpu_ratio("attached"),
        "load_avg": round(os.getloadavg()[0], 2),
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": args.device,
        "threads": args.threads,
        "isolated": not args.in_process,
        "omp_wait_policy": None if args.in_process else args.omp_wait_policy,
    }


def overhead_report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per step, in ms of CPU time: each mode's own time (its training thread's CPU time minus forward / backward
    / optimizer step / data fetch), the engine's minus the bare loop's, and what the dashboard adds: the training
    thread's own time over the headless engine's plus the UI thread's CPU time (as if both ran on one core)."""
    ms = 1000 / args.steps
    own_runs = {m: [(r["thread_cpu"] - r["compute"]) * ms for r in rs] for m, rs in results.items() if rs}
    own = {m: statistics.median(v) for m, v in own_runs.items()}
    for mode, values in own_runs.items():
        compute = statistics.median(r["compute"] * ms for r in results[mode])
        print(
            f"own CPU time per step {mode:<6} median {own[mode]:6.3f} ms ({_fmt_list(values)}); forward, "
            f"backward, step, data {compute:6.3f} ms"
        )
    ui = statistics.median(r["main_cpu"] * ms for r in results["tui"]) if results.get("tui") else None
    engine = own["engine"] - own["bare"] if "engine" in own and "bare" in own else None
    tui = own["tui"] - own["engine"] + ui if "tui" in own and "engine" in own and ui is not None else None
    compute = statistics.median(r["compute"] * ms for r in results["bare"]) if results.get("bare") else None
    process = statistics.median(r["process_cpu"] * ms for r in results["engine"]) if results.get("engine") else None
    wall = statistics.median(r["wall"] * ms for r in results["engine"]) if results.get("engine") else None
    return {
        "engine_overhead_ms": _round(engine, 3),
        "tui_overhead_ms": _round(tui, 3),
        "goal_engine_ms": 0.5,
        "goal_tui_ms": 1.0,
        "own_ms": {m: round(v, 3) for m, v in own.items()},
        "ui_thread_cpu_ms": _round(ui, 3),
        "step_compute_ms": _round(compute, 3),
        # the engine's whole process (every thread: the trackers' relay, torch's) and its wall time, per step
        "engine_process_cpu_ms": _round(process, 3),
        "engine_wall_ms": _round(wall, 3),
        "report": args.report_to,
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "log_every": args.log_every,
        "device": args.device,
        "threads": args.threads,
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--compile" in argv:  # its own job and options
        sys.path.insert(0, str(HERE))
        from compile_bench import main as compile_main

        return compile_main([a for a in argv if a != "--compile"])
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    print(
        f"model {args.model} {args.kwargs} {args.img_size}px, batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} timed steps, device {args.device}, torch threads {args.threads}, {args.rounds} rounds, "
        f"{'one process' if args.in_process else 'a fresh process per run'}, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset') if args.in_process else args.omp_wait_policy}, load "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tuitune-overhead-") as tmp:
        if args.report_to:  # the trackers stay on this machine and inside the temp folder
            os.environ["WANDB_MODE"] = "offline"
            os.environ["TRACKIO_DIR"] = str(Path(tmp) / "trackio")
            os.environ.pop("MLFLOW_TRACKING_URI", None)  # a SQLite store in each run directory
        results = run_rounds(args, Path(tmp))
    if args.overhead:
        print(json.dumps(overhead_report(args, results)))
        return 0
    startup = None if args.no_startup else startup_times()
    cache = None
    if not args.no_startup:
        from feature_cache import cache_speedup

        measured = cache_speedup()
        print(f"feature cache: {measured}")
        cache = measured["cache_speedup"]
    print(json.dumps(report(args, results, startup, cache)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
