"""Decoded images kept in memory (`data.cache_images`), so an epoch does not decode every PNG / JPEG again.

An image folder is read lazily (`ImageFiles`): every epoch opens, decodes, resizes and crops every file, which on a
CPU costs more than a small model's forward. When a split's transform is the deterministic eval transform, its
output never changes, so it is computed once, here, and kept as uint8 pixels (`TensorImages`: ToTensor + Normalize
are applied per item, exactly as before, at a quarter of the memory of floats). A split with random train-time
augmentation is left alone: its transform differs every epoch.

`auto` (the default) caches when the pixels fit in `FRACTION` of the memory available now. Why a quarter: the
model, its optimizer state, activations, DataLoader workers (each a process) and the rest of the machine need the
remainder, and running out of memory costs far more than decoding.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tuitune.engine.data.batches import unwrap
from tuitune.engine.data.datasets import DataBundle, ImageFiles, TensorImages
from tuitune.engine.events import Event
from tuitune.engine.record.progress import Progress

Emit = Callable[[Event], None]
FRACTION = 0.25


def cache_images(bundle: DataBundle, mode: str, emit: Emit | None = None) -> tuple[DataBundle, str]:
    """The bundle with every cacheable split decoded into memory, and a note for the run's warnings ("" when
    nothing needs saying). `mode`: "auto", "on" or "off"."""
    names = ("train", "val", "test")
    splits = [bundle.train, bundle.val, bundle.test]
    todo = [(i, s) for i, s in enumerate(splits) if s is not None and _plan(s) is not None]
    if mode == "off" or not todo:
        return bundle, ""
    need = sum(_nbytes(s) for _, s in todo)
    if mode == "auto":
        free = available_memory()
        if free is None or need > FRACTION * free:
            room = "unknown" if free is None else f"{free / 2**20:,.0f} MB"
            return bundle, (
                f"data.cache_images: the decoded images ({need / 2**20:,.0f} MB) would not fit in a "
                f"quarter of the free memory ({room}); every epoch decodes them again"
            )
    for i, s in todo:
        splits[i] = decode(s, emit, names[i])
    train, val, test = splits
    assert train is not None and val is not None
    return DataBundle(train, val, test, bundle.classes, bundle.source + ", images in memory"), ""


def _plan(dataset: Dataset) -> tuple[ImageFiles, list[int], Any, Any] | None:
    """(files, indices, geometric transform, Normalize) for a split worth caching, else None: only image files
    under a deterministic transform that ends in ToTensor + Normalize (then uint8 pixels are exact)."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    base, indices = unwrap(dataset)
    if not isinstance(base, ImageFiles) or base.random:
        return None
    tf = base.transform
    steps = getattr(tf, "transforms", [])
    if not (
        isinstance(tf, Compose)
        and len(steps) >= 2
        and isinstance(steps[-2], ToTensor)
        and isinstance(steps[-1], Normalize)
    ):
        return None
    return base, indices if indices is not None else list(range(len(base))), Compose(steps[:-2]), steps[-1]


def _pixels(geometric: Any, image: Image.Image) -> torch.Tensor:
    p = torch.from_numpy(np.array(geometric(image), dtype=np.uint8))
    return p[None] if p.ndim == 2 else p.permute(2, 0, 1)


def _nbytes(dataset: Dataset) -> int:
    """Pixels of the whole split, from its first image (the eval transform gives every image the same size)."""
    plan = _plan(dataset)
    assert plan is not None, "only splits with a plan are cached"
    base, indices, geometric, _ = plan
    if not indices:
        return 0
    return _pixels(geometric, base.read(base.samples[indices[0]][0])).numel() * len(indices)


def decode(dataset: Dataset, emit: Emit | None, name: str) -> TensorImages:
    """Decode and resize every image of the split once, with progress (a few thousand photos take a while)."""
    plan = _plan(dataset)
    assert plan is not None, "only splits with a plan are cached"
    base, indices, geometric, normalize = plan
    progress = Progress(emit, "decode", f"{name} images", len(indices), "images")
    pixels = []
    for i in indices:
        pixels.append(_pixels(geometric, base.read(base.samples[i][0])))
        progress.advance(1)
    progress.finish()
    labels = torch.as_tensor([base.samples[i][1] for i in indices], dtype=torch.int64)
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=torch.float32).reshape(-1, 1, 1)
    return TensorImages(torch.stack(pixels), labels, mean, std)


def available_memory() -> int | None:
    """Bytes of memory available now: Linux's MemAvailable, capped by a cgroup (container) limit; None when the
    platform does not say."""
    free: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            room = int(limit) - used
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free
