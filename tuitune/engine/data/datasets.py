"""Datasets and loaders: each data kind's builder makes a `DataBundle` of map-style datasets yielding `(x, y)`.
Which builder a `data.kind` uses is the table in `tuitune.engine.data.kinds` (synthetic data: `synthetic.py`).

`x` is a float tensor [C, H, W] already transformed and normalised (images), or for text a dict of
`input_ids` / `attention_mask` LongTensors padded to `max_length`, so torch's default collate batches every kind
(the run's own loaders then cut each text batch to its longest sequence: `tuitune.engine.data.text`).
`y` is an int64 scalar. Bad input raises `DataError`: one line naming the file (and the row or key) at fault, so
the CLI and the UI can show it as-is.

Images always go through timm's *eval* transform (no augmentation): runs stay deterministic and comparable, and
the small sets this tool is aimed at (digits, a few hundred images) are where augmentation matters least.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from tuitune.config import DataConfig
from tuitune.engine.data.batches import collate_for, length_sampler, text_lengths
from tuitune.engine.data.textfiles import read_text_file, target_classes
from tuitune.engine.events import Event
from tuitune.engine.record.progress import Progress
from tuitune.errors import DataError

Emit = Callable[[Event], None]
__all__ = [
    "DataBundle",
    "ImageFiles",
    "TensorImages",
    "carve_missing",
    "eval_transform",
    "make_loaders",
    "split_counts",
    "split_subsets",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: tuple[str, ...]  # class names in label order
    source: str  # one line for the UI / log, e.g. "digits 5-9: 720 train / 180 val"


# ------------------------------------------------------------------------------------------------ datasets


class TensorImages(Dataset):
    """Images transformed once, at construction, and kept as one tensor.

    Why: timm's eval transform is deterministic, so re-running it every epoch only burns CPU. When the transform
    ends in ToTensor + Normalize we keep the resized pixels as uint8 (4x less memory than floats; 1,797 digits at
    224x224 grey are ~90 MB) and normalise per item, which is exactly what ToTensor (/255) + Normalize compute.
    A single stored channel broadcasts against a C-channel mean/std, i.e. grey -> RGB replication for free.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if x.dtype == torch.uint8:
            x = (x.float().div(255.0) - self.mean) / self.std
        return x, self.labels[i]


class ImageFiles(Dataset):
    """Images read lazily (real folders can be large); a file PIL cannot read raises DataError naming it.
    `samples` are (where, label): `read(where)` gives the RGB image (a file's path by default; a row of a Hugging
    Face dataset with `hfkind.HfImages`). `random`: the transform is a random (train-time) one, so its output must
    not be cached. `as_pixels`: the same transform to uint8 pixels, for a loader that normalises on the device
    (`pixels.py`)."""

    def __init__(
        self,
        samples: Sequence[tuple[Any, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        random: bool = False,
        as_pixels: Any = None,
        read: Callable[[Any], Image.Image] | None = None,
    ):
        self.samples, self.transform, self.random, self.as_pixels = list(samples), transform, random, as_pixels
        self.read = load_rgb if read is None else read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        where, label = self.samples[i]
        return self.transform(self.read(where)), torch.tensor(label, dtype=torch.int64)

    def pixel_item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[i]
        return self.as_pixels.transform(load_rgb(path)), torch.tensor(label, dtype=torch.int64)


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB, turning any PIL failure into a one-line DataError that names the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: cannot read image: {reason}") from None


# ------------------------------------------------------------------------------------------------ helpers


def eval_transform(data_config: dict, **override: Any) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for the model's data config (imported here: text-only runs never pay for timm)."""
    from timm.data import create_transform

    kwargs = {k: v for k, v in data_config.items() if k in _TRANSFORM_KEYS}
    kwargs.update(override)
    return create_transform(**kwargs, is_training=False)


def pretransform(images: Sequence[Image.Image], labels: np.ndarray, transform: Any, channels: int) -> TensorImages:
    """Run the deterministic transform once per image (see TensorImages for why)."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    steps = getattr(transform, "transforms", [])
    if (
        isinstance(transform, Compose)
        and len(steps) >= 2
        and isinstance(steps[-2], ToTensor)
        and isinstance(steps[-1], Normalize)
    ):
        geometric = Compose(steps[:-2])
        pixels = [torch.from_numpy(np.array(geometric(im), dtype=np.uint8)) for im in images]
        stacked = torch.stack([p[None] if p.ndim == 2 else p.permute(2, 0, 1) for p in pixels])
        mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(steps[-1].std, dtype=torch.float32).reshape(-1, 1, 1)
        return TensorImages(stacked, y, mean, std)
    mode = "L" if channels == 1 else "RGB"
    return TensorImages(torch.stack([transform(im.convert(mode)) for im in images]), y)


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-class split, so every split sees every class in proportion (a 5-class digits val set with one
    class missing would make val accuracy meaningless). Each class keeps >= 1 train and, given >= 2 examples and
    a val_fraction > 0, >= 1 val example."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = min(round(n * test_fraction), max(n - 2, 0))
        n_val = min(max(round(n * val_fraction), int(n >= 2 and val_fraction > 0)), n - n_test - 1)
        parts[2].extend(idx[:n_test])
        parts[1].extend(idx[n_test : n_test + n_val])
        parts[0].extend(idx[n_test + n_val :])
    train, val, test = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    return train, val, test


def split_subsets(
    full: Dataset, labels: np.ndarray, cfg: DataConfig, seed: int, where: str
) -> tuple[Dataset, Dataset, Dataset | None]:
    train, val, test = split_indices(labels, cfg.val_fraction, cfg.test_fraction, seed)
    if (len(val) == 0 and cfg.val_fraction > 0) or len(train) == 0:
        raise DataError(f"{where}: data.val_fraction: too few examples ({len(labels)}) to split off validation")
    return (
        Subset(full, train.tolist()),
        Subset(full, val.tolist()),
        (Subset(full, test.tolist()) if len(test) else None),
    )


def carve_missing(
    train: Dataset,
    labels: np.ndarray,
    cfg: DataConfig,
    val: Dataset | None,
    test: Dataset | None,
    seed: int,
    where: str,
) -> tuple[Dataset, Dataset, Dataset | None]:
    """The splits a dataset has of its own (`val`, `test`; None where it has none), and those it has not cut from
    `train` by the seeded, stratified fractions (`labels`: what to stratify on): val always, test when
    `test_fraction` > 0."""
    if val is not None and (test is not None or cfg.test_fraction == 0):
        return train, val, test
    fractions = dataclasses.replace(
        cfg,
        val_fraction=cfg.val_fraction if val is None else 0.0,
        test_fraction=cfg.test_fraction if test is None else 0.0,
    )
    train, cut_val, cut_test = split_subsets(train, labels, fractions, seed, where)
    return train, val if val is not None else cut_val, test if test is not None else cut_test


def split_counts(train: Dataset, val: Dataset, test: Dataset | None) -> str:
    text = f"{len(train)} train / {len(val)} val"
    return text + (f" / {len(test)} test" if test is not None else "")


# ------------------------------------------------------------------------------------------------ digits


@lru_cache(maxsize=1)
def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """The vendored UCI digits: images uint8 [1797, 8, 8] (0..16) and labels int64 [1797]. Cached and read-only
    because every run (and every test) reads the same 1,797 rows."""
    with resources.files("tuitune").joinpath("assets/digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images, labels = table[:, :-1].reshape(-1, 8, 8).astype(np.uint8), table[:, -1].copy()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _digit_names(digits: Sequence[int]) -> str:
    if len(digits) > 2 and list(digits) == list(range(digits[0], digits[0] + len(digits))):
        return f"{digits[0]}-{digits[-1]}"
    return ",".join(str(d) for d in digits)


DIGITS_TRANSFORM = {"crop_pct": 1.0}  # 8x8 strokes are never cropped (the export records it too)


def digit_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    return tuple(str(d) for d in (cfg.classes or range(10)))


def build_digits(cfg: DataConfig, data_config: dict, seed: int) -> DataBundle:
    """Digits subset in the order given (label k = cfg.classes[k]); `DIGITS_TRANSFORM` on top of the model's."""
    digits = [int(d) for d in cfg.classes] or list(range(10))
    if len(set(digits)) != len(digits) or len(digits) < 2 or not all(0 <= d <= 9 for d in digits):
        raise DataError(f"data.classes: expected at least two distinct digits 0-9, got {digits}")
    images, labels = load_digits_array()
    keep = np.flatnonzero(np.isin(labels, digits))
    remap = {d: k for k, d in enumerate(digits)}
    y = np.array([remap[int(v)] for v in labels[keep]], dtype=np.int64)
    pil = [Image.fromarray(np.rint(images[i] * (255.0 / 16.0)).astype(np.uint8)) for i in keep]
    channels = int(data_config["input_size"][0])
    full = pretransform(pil, y, eval_transform(data_config, **DIGITS_TRANSFORM), channels)
    train, val, test = split_subsets(full, y, cfg, seed, "digits")
    return DataBundle(
        train,
        val,
        test,
        tuple(str(d) for d in digits),
        f"digits {_digit_names(digits)}: {split_counts(train, val, test)}",
    )


# ------------------------------------------------------------------------------------------------ image folder


def class_folders(root: Path) -> list[str]:
    """The class names: one subfolder per class, sorted (like torchvision's ImageFolder)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: data.path: no class folders (expected one subfolder of images per class)")
    return classes


def scan_class_folders(root: Path, emit: Emit | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """One subfolder per class (sorted, like torchvision's ImageFolder); image files found recursively. A folder
    on a slow disk can take a while: progress counts class folders, with the files found so far."""
    classes = class_folders(root)
    samples: list[tuple[Path, int]] = []
    progress = Progress(emit, "scan", root.name, len(classes), "folders")
    for label, name in enumerate(classes):
        files = sorted(
            Path(d) / f
            for d, _, fs in os.walk(root / name, followlinks=True)
            for f in fs
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
        )
        if not files:
            raise DataError(f"{root / name}: data.path: class folder has no images")
        samples.extend((f, label) for f in files)
        progress.detail = f"{root.name} ({len(samples):,} images)"
        progress.advance(1)
    progress.finish()
    return classes, samples


def _same_classes(root: Path, split: str, classes: list[str], train_classes: list[str]) -> None:
    if classes != train_classes:
        missing = ", ".join(sorted(set(train_classes) - set(classes))) or "none"
        extra = ", ".join(sorted(set(classes) - set(train_classes))) or "none"
        raise DataError(
            f"{root / split}: data.path: class folders differ from {root / 'train'} "
            f"(missing: {missing}; extra: {extra})"
        )


def image_folder_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data.path: no such folder")
    return tuple(class_folders(root / "train" if (root / "train").is_dir() else root))  # no walk over the images


def build_image_folder(cfg: DataConfig, data_config: dict, seed: int, emit: Emit | None = None) -> DataBundle:
    """`root/{train,val[,test]}/<class>/*` as given, or `root/<class>/*` split by the seeded fractions."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data.path: no such folder")
    transform = eval_transform(data_config)
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise DataError(f"{root / 'val'}: data.path: a train/ folder needs a val/ folder beside it")
        classes, train_samples = scan_class_folders(root / "train", emit)
        splits: list[Dataset | None] = [ImageFiles(train_samples, transform)]
        for split in ("val", "test"):
            if not (root / split).is_dir():
                splits.append(None)
                continue
            split_classes, samples = scan_class_folders(root / split, emit)
            _same_classes(root, split, split_classes, classes)
            splits.append(ImageFiles(samples, transform))
        train, val, test = splits
        assert train is not None and val is not None
    else:
        classes, samples = scan_class_folders(root, emit)
        labels = np.array([label for _, label in samples], dtype=np.int64)
        train, val, test = split_subsets(ImageFiles(samples, transform), labels, cfg, seed, str(root))
    return DataBundle(
        train,
        val,
        test,
        tuple(classes),
        f"image_folder {root.name}: {len(classes)} classes, {split_counts(train, val, test)}",
    )


# ------------------------------------------------------------------------------------------------ text


def text_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    rows = read_text_file(Path(cfg.path).expanduser(), "path", cfg.text_column, cfg.label_column)
    return target_classes(rows, target)


# ------------------------------------------------------------------------------------------------ loaders


MAX_AUTO_WORKERS = 16


def resolve_num_workers(num_workers: int, device_type: str, world: int = 1) -> int:
    """-1 = auto: 0 on CPU (training uses every core there; a pre-transformed dataset needs no workers), else the
    cores this process may use (its affinity: a container, `taskset` or a scheduler narrows it) shared among the
    ranks on this machine (torchrun's LOCAL_WORLD_SIZE, else `world`), less one for the training process itself,
    at least one, at most `MAX_AUTO_WORKERS`: enough to decode and augment ahead of a GPU."""
    if num_workers >= 0:
        return num_workers
    if device_type == "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or world
    return max(1, min(MAX_AUTO_WORKERS, cores // max(ranks, 1) - 1))


def _train_loader(dataset: Dataset, device: torch.device, **kwargs: Any) -> DataLoader:
    """A DataLoader of `dataset`, or of its uint8 pixels normalised on `device` where it has them (see `pixels`)."""
    from tuitune.engine.data.pixels import NormalizingLoader, pixel_view

    view = pixel_view(dataset)
    return DataLoader(dataset, **kwargs) if view is None else NormalizingLoader(view, device, **kwargs)


def make_loaders(
    bundle: DataBundle,
    *,
    batch_size: int,
    num_workers: int,
    device_type: str,
    seed: int,
    group_by_length: bool = False,
    pad_to_max_length: bool = False,
    rank: int = 0,
    world: int = 1,
    prefetch_factor: int = 2,
    device: torch.device | None = None,
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Train loader shuffled by a seeded generator (same order for the same seed); val/test in order, with
    twice the batch size since they keep no activations for backward. Text batches are cut to their longest
    sequence (unless `pad_to_max_length`); `group_by_length` (text) shuffles into batches of similar lengths,
    from the same generator. With several ranks (`world` > 1) rank `rank` reads its slice of every global batch
    and its shard of val (see `shards`); the test set is evaluated by rank 0 alone, after the others are done.
    On CUDA the batches come in pinned memory (an asynchronous copy); workers stay alive between epochs and each
    prepares `prefetch_factor` batches ahead. An augmented image split comes as uint8 pixels, normalised on
    `device` (default: `device_type`'s) by the loader (`pixels.NormalizingLoader`)."""
    from tuitune.engine.data.shards import EvalShard, GlobalBatchSampler

    collate = (lambda ds: None) if pad_to_max_length else collate_for
    workers = resolve_num_workers(num_workers, device_type, world)
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device_type == "cuda",
        "persistent_workers": workers > 0,
        **({"prefetch_factor": prefetch_factor} if workers > 0 else {}),  # torch refuses it without workers
    }
    gen = torch.Generator().manual_seed(seed)
    if world > 1:
        lengths = text_lengths(bundle.train) if group_by_length else None
        batches = GlobalBatchSampler(
            len(bundle.train),
            batch_size,
            rank,
            world,
            gen,
            lengths,
        )
        train = _train_loader(
            bundle.train,
            device or torch.device(device_type),
            batch_sampler=batches,
            generator=gen,
            collate_fn=collate(bundle.train),
            **common,
        )
        val = DataLoader(
            bundle.val,
            batch_size=batch_size * 2,
            sampler=EvalShard(len(bundle.val), rank, world),
            collate_fn=collate(bundle.val),
            **common,
        )
    else:
        sampler = length_sampler(bundle.train, batch_size, gen) if group_by_length else None
        train = _train_loader(
            bundle.train,
            device or torch.device(device_type),
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=False,
            generator=gen,
            collate_fn=collate(bundle.train),
            **common,
        )
        val = DataLoader(bundle.val, batch_size=batch_size * 2, shuffle=False, collate_fn=collate(bundle.val), **common)
    test = (
        DataLoader(bundle.test, batch_size=batch_size * 2, shuffle=False, collate_fn=collate(bundle.test), **common)
        if bundle.test is not None
        else None
    )
    return train, val, test
