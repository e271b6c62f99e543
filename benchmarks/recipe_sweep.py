"""Finding the recipe on real data (issue 14): per modality, a sweep of at most 12 trials over the strategy kind, the
LR, the LR decay and the phase length at a fixed epoch budget; then progressive unfreezing with `phase_lr = "find"`
and nothing else tuned, against the best full fine-tuning the sweep found.

    python benchmarks/recipe_sweep.py --out runs/recipe [--only text|image] [--trials 12] [--help]

Everything goes through the command line a person types: `tuitune sweep PROFILE --headless --trials N --out DIR`
(its leaderboard is printed as trials end and kept in DIR/leaderboard.txt), then `tuitune train PROFILE --headless
--set ...` for the progressive run. The profiles (with their `[sweep]` tables) are written to --out, so each step can
be rerun by hand; the same --out resumes a killed sweep. Ends in one JSON line.

Data and backbones as in benchmarks/real_data.py: SMS spam with all-MiniLM-L6-v2 (scored by macro-F1: always
answering "ham" scores 87% accuracy), clothing photos with EfficientNet-Lite0 (ImageNet weights), each subsampled with
a fixed seed (class-stratified) to fit a CPU budget; validation sets whole unless asked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as real_data.py: spinning threads cost 2-5x on a busy box

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from real_data import DATA, efficientnet_weights, minilm_folder, subsample_csv, subsample_images  # noqa: E402

from tuitune.config import dump_toml  # noqa: E402

SPACE = {  # what the issue names: strategy kind, LR, LR decay, phase length; the epoch budget is fixed
    "text": {
        "strategy.kind": ["full", "progressive", "lp_ft"],
        "train.lr": {"log": [1e-5, 3e-3]},
        "strategy.lr_decay": [0.3, 1.0],
        "strategy.every_epochs": [1, 2],
    },
    "image": {
        "strategy.kind": ["full", "progressive", "lp_ft"],
        "train.lr": {"log": [1e-4, 1e-2]},
        "strategy.lr_decay": [0.3, 1.0],
        "strategy.every_epochs": [1, 2],
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/recipe"), help="profiles, sweeps and runs go here")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (sms_spam/, clothing/)")
    p.add_argument("--only", choices=("text", "image"), help="one modality only")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=4, help="the fixed epoch budget of every trial")
    p.add_argument("--text-train", type=int, default=600, help="SMS train texts (stratified)")
    p.add_argument("--text-val", type=int, default=500, help="SMS val texts (500 = all)")
    p.add_argument("--image-train", type=int, default=60, help="clothing train images per class")
    p.add_argument("--image-val", type=int, default=40, help="clothing val images per class (40 = all)")
    p.add_argument("--img-size", type=int, default=96)
    return p.parse_args(argv)


def text_profile(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    sms = args.data / "sms_spam"
    if not (data / "sms_train.csv").exists():
        subsample_csv(sms / "train.csv", data / "sms_train.csv", args.text_train)
        subsample_csv(sms / "val.csv", data / "sms_val.csv", args.text_val)
    return {
        "name": "sms-minilm",
        "description": "SMS spam, all-MiniLM-L6-v2, scored by macro-F1",
        "model": {
            "source": "hf",
            "name": str(minilm_folder()),
            "pretrained": True,
            "pooling": "mean",
            "max_length": 64,
        },
        "data": {
            "kind": "text",
            "path": str(data / "sms_train.csv"),
            "val_path": str(data / "sms_val.csv"),
            "batch_size": 16,
            "num_workers": 0,
        },
        "train": {
            "epochs": args.epochs,
            "lr": 3e-4,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "constant",
            "seed": 0,
            "device": "cpu",
            "log_every": 10,
            "checkpoint_metric": "val_macro_f1",
        },
        "strategy": {"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "groups_per_phase": 2},
        "early_stopping": {"enabled": False},
    }


def image_profile(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    clothing = data / "clothing"
    if not clothing.exists():
        subsample_images(args.data / "clothing" / "train", clothing / "train", args.image_train)
        subsample_images(args.data / "clothing" / "val", clothing / "val", args.image_val)
    weights = data / "efficientnet_lite0.safetensors"
    if not weights.exists():
        efficientnet_weights(weights)
    return {
        "name": "clothing-effnet",
        "description": "clothing photos, EfficientNet-Lite0 (ImageNet weights)",
        "model": {
            "source": "timm",
            "name": "efficientnet_lite0",
            "pretrained": False,
            "weights": str(weights),
            "img_size": args.img_size,
        },
        "data": {"kind": "image_folder", "path": str(clothing), "batch_size": 32, "num_workers": 0},
        "train": {
            "epochs": args.epochs,
            "lr": 1e-3,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "constant",
            "seed": 0,
            "device": "cpu",
            "log_every": 5,
        },
        "strategy": {"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "groups_per_phase": 1},
        "early_stopping": {"enabled": False},
    }


def tuitune(*argv: str, log: Path) -> None:
    """One tuitune command line, its output teed to `log` (and to stderr)."""
    print(f"$ tuitune {' '.join(argv)}", file=sys.stderr)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ tuitune {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuitune", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            print(line, end="", file=sys.stderr)
        if proc.wait() != 0:
            raise SystemExit(f"recipe_sweep.py: `tuitune {' '.join(argv)}` exited with {proc.returncode}; see {log}")


def leaderboard(sweep_dir: Path) -> tuple[list[dict[str, Any]], str]:
    from tuitune.sweep.board import read_board

    rows, metric, _ = read_board(sweep_dir)
    return [
        {
            "trial": r.number,
            "status": r.status,
            "best": None if r.best is None else round(r.best, 4),
            "epochs": r.epochs,
            "time_s": round(r.time_s),
            **r.params,
        }
        for r in rows
    ], metric


def best_of(board: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    done = [r for r in board if r["strategy.kind"] == kind and r["best"] is not None and r["status"] == "done"]
    return max(done, key=lambda r: r["best"]) if done else None


def modality(name: str, table: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    profile = out / f"{table['name']}.toml"
    sweep = {"pruner": "median", "startup_trials": 4, **SPACE[name]}
    profile.write_text(dump_toml({**table, "sweep": sweep}), encoding="utf-8")
    log = out / "log.txt"
    t0 = time.perf_counter()
    tuitune("sweep", str(profile), "--headless", "--trials", str(args.trials), "--out", str(out / "sweep"), log=log)
    sweep_s = time.perf_counter() - t0
    board, metric = leaderboard(out / "sweep")
    run_dir = out / "progressive-find"
    if not (run_dir / "summary.json").exists():
        tuitune(
            "train", str(profile), "--headless", "--out", str(run_dir), "--set", 'strategy.phase_lr="find"', log=log
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    found = summary["best"]["value"]
    full = best_of(board, "full")
    return {
        "metric": metric,
        "sweep_s": round(sweep_s),
        "leaderboard": board,
        "best_full": full,
        "best_progressive_in_sweep": best_of(board, "progressive"),
        "best_lp_ft_in_sweep": best_of(board, "lp_ft"),
        "progressive_find": round(found, 4),
        "progressive_find_reaches_full": bool(full is not None and found >= full["best"]),
    }


def each_modality(
    args: argparse.Namespace,
    result: dict[str, Any],
    run: Callable[[str, dict[str, Any], argparse.Namespace], dict[str, Any]],
) -> int:
    """`run` on the text and the image profile (or the one `--only` names), into `result`, printed as one line."""
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "text"):
        result["text"] = run("text", text_profile(args, data), args)
    if args.only in (None, "image"):
        result["image"] = run("image", image_profile(args, data), args)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return each_modality(args, {"trials": args.trials, "epochs": args.epochs}, modality)


if __name__ == "__main__":
    raise SystemExit(main())
