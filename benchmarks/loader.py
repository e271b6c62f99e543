"""Does tuitune's image pipeline keep up with timm's own loader?  `python benchmarks/loader.py [--help]`

The same folder, the same train transform (timm's `create_transform(is_training=True)`: random resized crop, flips,
colour jitter, RandAugment and random erasing as `--aug` says), the same batch size, worker count, pinning and
persistent workers, read for `--epochs` epochs; the first is a warm-up (workers start, files enter the page cache),
the others are timed. Each batch is taken all the way to a normalised float batch on `--device`, as training sees it:

  tuitune  `tuitune.engine.data`: `build_datasets` (image_folder) -> `augment_train` -> `cache_images` ->
           `make_loaders`'s train loader -> `to_device` (what `Trainer` runs: uint8 pixels normalised on the
           device, or with `--aug erasing` normalised floats from the workers)
  timm     `timm.data.ImageDataset(root/train)` -> `timm.data.create_loader(..., is_training=True)` with its
           prefetcher (uint8 batches, normalised on the device), the way timm's train.py reads data

Rounds alternate the order; the figures are the best round of each (the machine is shared: the best is the least
disturbed). Besides images/s, the CPU time the pipeline took per image (this process and its workers): on a shared
machine wall time measures the neighbours as much as the loader. The last line is one JSON object:
tuitune_images_per_s, timm_images_per_s, ratio (goal >= 1.0), and the CPU ms per image of each and their cpu_ratio
(timm's / tuitune's: above 1, tuitune's costs less).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AUGMENTS = {  # --aug -> tuitune's [augment] keys (timm's create_transform arguments)
    "light": {"scale_min": 0.08, "hflip": 0.5, "color_jitter": 0.4},
    "heavy": {"scale_min": 0.08, "hflip": 0.5, "color_jitter": 0.4, "auto_augment": "rand-m9-mstd0.5"},
    "erasing": {
        "scale_min": 0.08,
        "hflip": 0.5,
        "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5",
        "re_prob": 0.25,
    },
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--data", default="/work/shared/data/clothing", help="an image folder with train/<class>/ files")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers; -1: tuitune's own choice")
    p.add_argument("--prefetch-factor", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--aug", choices=sorted(AUGMENTS), default="heavy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    return p.parse_args(argv)


def data_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "input_size": (3, args.img_size, args.img_size),
        "interpolation": "bilinear",
        "mean": MEAN,
        "std": STD,
        "crop_pct": 0.875,
    }


def tuitune_batches(args: argparse.Namespace, workers: int) -> tuple[Any, Any]:
    import torch

    from tuitune.config import profile_from_dict
    from tuitune.engine.data.augment import augment_train
    from tuitune.engine.data.batches import to_device
    from tuitune.engine.data.datasets import make_loaders
    from tuitune.engine.data.image_cache import cache_images
    from tuitune.engine.data.kinds import build_datasets

    profile = profile_from_dict(
        {
            "model": {"name": "resnet18"},  # not built: the data sections need a model named
            "data": {"kind": "image_folder", "path": args.data},
            "augment": {"train_transform": "timm", **AUGMENTS[args.aug]},
        }
    )
    cfg = data_config(args)
    bundle = build_datasets(profile.data, task="image", data_config=cfg, seed=0)
    bundle = augment_train(bundle, cfg, profile.augment)
    bundle, _ = cache_images(bundle, profile.data.cache_images)
    device = torch.device(args.device)
    newer = {"prefetch_factor": args.prefetch_factor, "device": device}  # absent before issue 23: the same script
    accepted = inspect.signature(make_loaders).parameters  # measures a checkout from before it
    train, _, _ = make_loaders(
        bundle,
        batch_size=args.batch_size,
        num_workers=workers,
        device_type=device.type,
        seed=0,
        **{k: v for k, v in newer.items() if k in accepted},
    )

    def batches() -> Any:
        for x, y in train:
            yield to_device(x, device), y.to(device, non_blocking=True)

    return train, batches


def timm_batches(args: argparse.Namespace, workers: int) -> tuple[Any, Any]:
    import torch
    from timm.data import ImageDataset, create_loader

    aug = AUGMENTS[args.aug]
    device = torch.device(args.device)
    dataset = ImageDataset(str(Path(args.data) / "train"))
    loader = create_loader(
        dataset,
        input_size=(3, args.img_size, args.img_size),
        batch_size=args.batch_size,
        is_training=True,
        scale=(aug["scale_min"], 1.0),
        hflip=aug["hflip"],
        color_jitter=aug["color_jitter"],
        auto_augment=aug.get("auto_augment"),
        re_prob=aug.get("re_prob", 0.0),
        interpolation="bilinear",
        mean=MEAN,
        std=STD,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        device=device,
        use_prefetcher=True,
        persistent_workers=workers > 0,
    )

    def batches() -> Any:
        yield from loader

    return loader, batches


def cpu_seconds() -> float:
    """CPU seconds of this process and its live children (the workers) so far: what the pipeline costs, whoever
    else shares the cores (wall time on a loaded machine says more about the load than about the loader)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def measure(name: str, make: Any, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    """Images per second, and CPU milliseconds per image, over the epochs after the first."""
    import torch

    loader, batches = make(args, workers)
    images, seconds, cpu = 0, 0.0, 0.0
    for epoch in range(args.epochs):
        t0, c0 = time.perf_counter(), cpu_seconds()
        n = 0
        for x, _ in batches():
            n += x.shape[0]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if epoch:
            images, seconds, cpu = images + n, seconds + time.perf_counter() - t0, cpu + cpu_seconds() - c0
    _end(loader)
    rate, cost = images / seconds, 1000 * cpu / images
    print(
        f"{name:<8} {rate:8.1f} images/s  {cost:6.2f} CPU ms/image  ({images} images in {seconds:.2f} s, {workers} "
        f"workers)",
        flush=True,
    )
    return rate, cost


def _end(loader: Any) -> None:
    """Stop persistent workers now, not at exit (the next run would share the cores with them)."""
    inner = getattr(loader, "loader", loader)  # timm's PrefetchLoader wraps the DataLoader
    iterator = getattr(inner, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        inner._iterator = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from tuitune.engine.data.datasets import resolve_num_workers

    torch.set_num_threads(args.threads)
    workers = resolve_num_workers(args.workers, args.device.split(":")[0] if args.workers < 0 else "cpu")
    if args.workers < 0 and workers == 0:  # tuitune's CPU default (no workers) measures nothing about workers
        workers = max(1, len(os.sched_getaffinity(0)) - 1)
    print(
        f"{args.data}: {args.img_size}px, batch {args.batch_size}, {workers} workers, prefetch "
        f"{args.prefetch_factor}, aug {args.aug}, device {args.device}, {args.epochs} epochs ({args.epochs - 1} "
        f"timed) x {args.rounds} rounds, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    runs: dict[str, list[tuple[float, float]]] = {"tuitune": [], "timm": []}
    makers = {"tuitune": tuitune_batches, "timm": timm_batches}
    for r in range(args.rounds):
        for name in ("tuitune", "timm") if r % 2 == 0 else ("timm", "tuitune"):
            runs[name].append(measure(name, makers[name], args, workers))
    ours, theirs = max(r for r, _ in runs["tuitune"]), max(r for r, _ in runs["timm"])
    our_cpu, their_cpu = min(c for _, c in runs["tuitune"]), min(c for _, c in runs["timm"])
    result = {
        "tuitune_images_per_s": round(ours, 1),
        "timm_images_per_s": round(theirs, 1),
        "ratio": round(ours / theirs, 3),
        "tuitune_cpu_ms_per_image": round(our_cpu, 3),
        "timm_cpu_ms_per_image": round(their_cpu, 3),
        "cpu_ratio": round(their_cpu / our_cpu, 3),  # above 1: tuitune's pipeline costs less CPU per image
        "workers": workers,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "aug": args.aug,
        "device": args.device,
        "load_avg": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
