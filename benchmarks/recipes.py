"""Recipes that win (issue 24): on both real data sets, 3 seeds each, with times, one command makes the table:
full fine-tuning at the LR an earlier 12-trial sweep found, progressive unfreezing + `phase_lr = "find"` as it was,
each remedy on top of it, progressive as the profile schema declares it (the default, untuned), and
`tuitune recipe --budget 3`.

    nice -n 10 python benchmarks/recipes.py --out runs/recipes [--only text|image] [--arms a,b] [--seeds 0,1,2]
    python benchmarks/recipes.py --out runs/recipes --table      # the table from what was measured so far

Runs go one at a time, seed by seed with the arms interleaved (on a shared machine, contention then falls on every
arm alike); each result is appended to OUT/results.jsonl as it ends, and a rerun skips what is there (so the command
resumes). Times: wall clock, and the process CPU seconds of the whole run (setup, LR sweeps, feature caches, every
epoch and its validation; the steadier figure on a busy machine); torch runs on `--threads` threads (1 by default).

Data and backbones as benchmarks/recipe_sweep.py and the README's earlier sweep: SMS spam, 256 train / 250 val texts
(class-stratified, seed 0), all-MiniLM-L6-v2 (mean pooling, 64 tokens), 4 epochs, batch 16, scored by val macro-F1;
clothing, 1,200 train / 320 val photos at 96 px, EfficientNet-Lite0 (ImageNet weights), 6 epochs, batch 32, scored by
val accuracy. The searched full fine-tuning is the sweep's best trial (text: lr 3.5e-5, lr_decay 0.89; image:
lr 8.2e-3, lr_decay 0.78); every other arm starts from the untuned profile (text lr 3e-4, image lr 1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as real_data.py: spinning threads cost 2-5x on a busy box

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from real_data import DATA  # noqa: E402
from recipe_sweep import image_profile, text_profile  # noqa: E402

SEARCHED = {"text": {"lr": 3.5e-5, "lr_decay": 0.89}, "image": {"lr": 8.2e-3, "lr_decay": 0.78}}
EPOCHS = {"text": 4, "image": 6}
# progressive + find as it was before these remedies, every key it depends on pinned (the defaults move)
TODAY = {
    "phase_lr": "find",
    "phase_lr_rule": "head",
    "phase_lr_budget": 0.0,
    "phase_lr_steps": 100,
    "train_bn": False,
    "adabn": "",
    "order": "top_down",
    "restore_best_phase": False,
}

# arm -> (strategy keys over the base profile's, train keys); None: not for this modality (it would be the
# baseline run again: the text model has no BatchNorm and no source data to measure a shift against)
ARMS: dict[str, Any] = {
    "full (searched LR)": lambda m: ({"kind": "full", "lr_decay": SEARCHED[m]["lr_decay"]}, {"lr": SEARCHED[m]["lr"]}),
    "progressive + find (before)": lambda m: (dict(TODAY), {"restart": "run"}),
    # progressive as the schema declares it (the LR of the profile at every phase), pinned: the default, untuned (a
    # new default would be measured as one more arm of the keys it sets)
    "progressive, profile LR (the default)": lambda m: ({"phase_lr": "profile"}, {}),
    "+ train_bn": lambda m: ({**TODAY, "train_bn": True}, {}),
    "+ adabn = phase": lambda m: ({**TODAY, "adabn": "phase"}, {}) if m == "image" else None,
    "+ order = shift": lambda m: ({**TODAY, "order": "shift"}, {}) if m == "image" else None,
    "+ restore_best_phase": lambda m: ({**TODAY, "restore_best_phase": True}, {}),
    "+ phase_lr_rule new_groups + budget": lambda m: (
        {**TODAY, "phase_lr_rule": "new_groups", "phase_lr_budget": 0.1},
        {},
    ),
    "+ restart = phase (cosine)": lambda m: (dict(TODAY), {"schedule": "cosine", "restart": "phase"}),
    "auto_rgn + find": lambda m: ({**TODAY, "kind": "auto_rgn"}, {}),
    # Auto-RGN as the paper runs it, at one fixed LR (the profile's): tells the RGN scaling from the finder's LR
    "auto_rgn, profile LR": lambda m: ({"phase_lr": "profile", "kind": "auto_rgn"}, {}),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/recipes"), help="results.jsonl, runs and data go here")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (sms_spam/, clothing/)")
    p.add_argument("--only", choices=("text", "image"), help="one data set only")
    p.add_argument("--arms", help="arm names separated by | (default: all, and the recipe)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--budget", type=float, default=3.0, help="tuitune recipe's --budget")
    p.add_argument("--table", action="store_true", help="print the table of what results.jsonl holds, and stop")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's folder (default: deleted after)")
    # the earlier sweep's data (README "Finding the recipe on real data")
    p.add_argument("--text-train", type=int, default=256)
    p.add_argument("--text-val", type=int, default=250)
    p.add_argument("--image-train", type=int, default=150)
    p.add_argument("--image-val", type=int, default=40)
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=0, help=argparse.SUPPRESS)  # recipe_sweep's profiles read it
    return p.parse_args(argv)


def base_table(modality: str, args: argparse.Namespace) -> dict[str, Any]:
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    args.epochs = EPOCHS[modality]
    table = (text_profile if modality == "text" else image_profile)(args, data)
    table["train"]["checkpoint_metric"] = "val_macro_f1" if modality == "text" else "val_score"
    return table


def arm_table(base: dict[str, Any], modality: str, arm: str, seed: int) -> dict[str, Any] | None:
    keys = ARMS[arm](modality)
    if keys is None:
        return None
    strategy, train = keys
    table = json.loads(json.dumps(base))
    table["name"] = f"{base['name']}-{arm.replace(' ', '')[:24]}-s{seed}"
    table["strategy"] = {**table["strategy"], **strategy}
    table["train"] = {**table["train"], **train, "seed": seed}
    return table


def run_arm(table: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One run in this process: its best metric, epochs, wall and CPU seconds."""
    from tuitune.config import profile_from_dict
    from tuitune.engine.commands import Control
    from tuitune.engine.events import EpochEnded, RunFinished
    from tuitune.engine.train.loop import Trainer

    events: list[Any] = []
    at: list[tuple[float, float]] = []  # (wall, CPU) seconds since the start, at each epoch's end
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def sink(event: Any) -> None:
        events.append(event)
        if isinstance(event, EpochEnded):
            at.append((round(time.perf_counter() - wall0, 1), round(time.process_time() - cpu0, 1)))

    Trainer(profile_from_dict(table, file="<recipes>"), run_dir, sink, Control()).run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    end = next(e for e in events if isinstance(e, RunFinished))
    if end.status != "finished":
        raise SystemExit(f"recipes.py: {table['name']} ended {end.status}: {end.reason}")
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    metric = table["train"]["checkpoint_metric"]
    return {
        "best": end.best["value"],
        "best_epoch": end.best["epoch"],
        "val_acc": max(e.val_score for e in epochs),
        # each epoch's value of the metric the run is scored by (rows before this key: macro-F1 on both data sets)
        "curve": [round(e.val_score if metric == "val_score" else e.extra[metric], 4) for e in epochs],
        "curve_metric": metric,
        "epoch_wall_s": [w for w, _ in at],  # since the run's start, at each epoch's end (setup included)
        "epoch_cpu_s": [c for _, c in at],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
    }


def run_recipe(base: dict[str, Any], modality: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`tuitune recipe PROFILE --budget B --headless`, in this process: the winner's best value (as measured in its
    trial, all epochs), its recipe, and the whole search's wall and CPU seconds."""
    from tuitune.config import dump_toml
    from tuitune.sweep.recipe import run_recipe as search

    table = json.loads(json.dumps(base))
    table["name"] = f"{base['name']}-recipe-s{seed}"
    table["train"]["seed"] = seed
    profile = out / f"{table['name']}.toml"
    out.mkdir(parents=True, exist_ok=True)
    profile.write_text(dump_toml(table), encoding="utf-8")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = search(str(profile), [], out / "search", budget=args.budget, say=lambda line: print(line, file=sys.stderr))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "best": result["value"],
        "recipe": result["recipe"],
        "trials": result["trials"],
        "budget_s": round(result["budget_s"], 1),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
    }


def done(results: Path) -> set[tuple[str, str, int]]:
    if not results.exists():
        return set()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["data"], r["arm"], r["seed"]) for r in rows}


def measure(args: argparse.Namespace) -> None:
    import shutil

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = args.out / "results.jsonl"
    have = done(results)
    arms = args.arms.split("|") if args.arms else [*ARMS, "tuitune recipe --budget 3"]
    modalities = [args.only] if args.only else ["text", "image"]
    for seed in (int(s) for s in args.seeds.split(",")):
        for modality in modalities:
            base = base_table(modality, args)
            for arm in arms:
                if (modality, arm, seed) in have:
                    continue
                folder = args.out / "runs" / modality / f"{arm.replace(' ', '_')}-s{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                print(f"[{time.strftime('%H:%M:%S')}] {modality} seed {seed}: {arm}", file=sys.stderr)
                if arm.startswith("tuitune recipe"):
                    row = run_recipe(base, modality, seed, args, folder)
                else:
                    table = arm_table(base, modality, arm, seed)
                    if table is None:
                        continue
                    row = run_arm(table, folder)
                row = {"data": modality, "arm": arm, "seed": seed, "threads": torch.get_num_threads(), **row}
                print(f"    {json.dumps(row)}", file=sys.stderr)
                with results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                if not args.keep_runs:
                    shutil.rmtree(folder, ignore_errors=True)


def reached(run: dict[str, Any], target: float) -> tuple[float, str] | None:
    """CPU seconds from the run's start to the end of its first epoch at or above `target`, and "" (None: never, or
    not recorded). An image row from before `curve_metric` has a macro-F1 curve, not the accuracy it is scored by:
    the end of its best epoch then, marked "<=" (the first epoch at the target may have been earlier)."""
    times = run.get("epoch_cpu_s")
    if not times or run["best"] < target - 1e-12:
        return None
    if run["data"] == "image" and "curve_metric" not in run:
        return times[run["best_epoch"] - 1], "<="
    return next(((t, "") for v, t in zip(run["curve"], times) if v >= target - 1e-12), None)


def table_text(results: Path) -> str:
    """The README's table: per data set, each arm's value per seed and mean, its mean times, its CPU time as a share
    of the searched full fine-tuning's, and when (share of full's CPU time) each seed first reached full's mean."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    out = []
    for modality, metric in (("text", "val macro-F1"), ("image", "val accuracy")):
        mine = [r for r in rows if r["data"] == modality]
        full = [r for r in mine if r["arm"] == "full (searched LR)"]
        if not mine or not full:
            continue
        full_cpu, target = statistics.mean(r["cpu_s"] for r in full), statistics.mean(r["best"] for r in full)
        title = "SMS spam, all-MiniLM-L6-v2" if modality == "text" else "clothing, EfficientNet-Lite0"
        out += [
            f"\n{title} ({metric}; full fine-tuning's mean {target:.4f} in {full_cpu:.0f} CPU s)\n",
            f"| arm | {metric} per seed | mean | wall s | CPU s | CPU / full's | reached full's mean at |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        order = [*ARMS, "tuitune recipe --budget 3"]  # the arms in the order they are declared, not measured
        for arm in sorted(dict.fromkeys(r["arm"] for r in mine), key=lambda a: order.index(a) if a in order else 99):
            runs = sorted((r for r in mine if r["arm"] == arm), key=lambda r: r["seed"])
            values = ", ".join(f"{r['best']:.4f}" for r in runs)
            cpu = statistics.mean(r["cpu_s"] for r in runs)
            when = [reached(r, target) for r in runs]
            shares = ", ".join("-" if w is None else f"{w[1]}{w[0] / full_cpu:.2f}" for w in when)
            shares = shares if "curve" in runs[0] else "winner: " + ", ".join(str(r.get("recipe")) for r in runs)
            out.append(
                f"| {arm} | {values} | {statistics.mean(r['best'] for r in runs):.4f} | "
                f"{statistics.mean(r['wall_s'] for r in runs):.0f} | {cpu:.0f} | {cpu / full_cpu:.2f} | {shares} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        measure(args)
    print(table_text(args.out / "results.jsonl"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
