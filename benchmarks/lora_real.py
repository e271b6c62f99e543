"""LoRA against full fine-tuning on real data (issue 15): the same profile, epochs and seed, `strategy.kind = "full"`
then `"lora"`; best validation score (macro-F1 too for SMS spam) and the trainable parameter count of each.

    python benchmarks/lora_real.py --out runs/lora [--only text|image] [--epochs 3] [--help]

Backbones and data as benchmarks/recipe_sweep.py (all-MiniLM-L6-v2 on SMS spam, LoRA on `query` / `value`;
EfficientNet-Lite0 with ImageNet weights on the clothing photos, LoRA on the 1x1 convolutions `conv_pw` / `conv_pwl`,
the depthwise ones skipped). Each run goes through `tuitune train PROFILE --headless --set ...`. Ends in one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recipe_sweep import DATA, each_modality, tuitune  # noqa: E402

from tuitune.config import dump_toml  # noqa: E402

LR = {("text", "full"): 1e-4, ("text", "lora"): 1e-3, ("image", "full"): 1e-3, ("image", "lora"): 3e-3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/lora"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--only", choices=("text", "image"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--text-train", type=int, default=256)
    p.add_argument("--text-val", type=int, default=250)
    p.add_argument("--image-train", type=int, default=40, help="per class")
    p.add_argument("--image-val", type=int, default=20, help="per class")
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--lr-full", type=float, help="full fine-tuning's LR (default: text 1e-4, image 1e-3)")
    p.add_argument("--lr-lora", type=float, help="LoRA's LR (default: text 1e-3, image 3e-3)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a profile override for both runs (repeatable), e.g. strategy.lr_decay=0.78",
    )
    return p.parse_args(argv)


def read_run(run_dir: Path) -> dict[str, Any]:
    """From the run's events: trainable and total parameters at the start (under LoRA a trainable group trains its
    adapters, as the headless start line counts them), and the best validation accuracy and macro-F1."""
    trainable = total = 0
    acc: list[float] = []
    f1: list[float] = []
    with (run_dir / "events.jsonl").open(encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            if event["type"] == "RunStarted":
                trainable = sum(g["adapters"] or g["params"] for g in event["layers"] if g["trainable"])
                total = sum(g["params"] for g in event["layers"])
            elif event["type"] == "EpochEnded":
                acc.append(event["val_score"])
                f1 += [event["extra"]["val_macro_f1"]] if "val_macro_f1" in event.get("extra", {}) else []
    return {
        "trainable_params": trainable,
        "total_params": total,
        "epochs": len(acc),
        "best_val_acc": round(max(acc), 4) if acc else None,
        "best_val_macro_f1": round(max(f1), 4) if f1 else None,
    }


def one(name: str, kind: str, profile: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = out / kind
    lr = getattr(args, f"lr_{kind}") or LR[name, kind]
    if not (run_dir / "summary.json").exists():
        extra = [a for o in args.overrides for a in ("--set", o)]
        tuitune(
            "train",
            str(profile),
            "--headless",
            "--out",
            str(run_dir),
            "--force",
            "--set",
            f'strategy.kind="{kind}"',
            "--set",
            f"train.lr={lr}",
            *extra,
            log=out / "log.txt",
        )
    return {"kind": kind, "lr": lr, "overrides": args.overrides, **read_run(run_dir)}


def modality(name: str, table: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    table = {**table, "train": {**table["train"], "epochs": args.epochs}}
    profile = out / f"{table['name']}.toml"
    profile.write_text(dump_toml(table), encoding="utf-8")
    runs = {kind: one(name, kind, profile, out, args) for kind in ("full", "lora")}
    return {**runs, "lora_param_share": round(runs["lora"]["trainable_params"] / runs["full"]["trainable_params"], 5)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return each_modality(args, {"epochs": args.epochs}, modality)


if __name__ == "__main__":
    raise SystemExit(main())
