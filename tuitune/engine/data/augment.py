"""Training-time augmentation: timm's `create_transform(is_training=True)` on the train split, and timm's
`Mixup` (mixup / CutMix) on batches. Validation and test always keep the deterministic eval transform.

The augmented split also knows its pixels: the same random transform ending in uint8 pixels (timm's prefetcher form,
`use_prefetcher=True`) and the mean and std that normalise them. The run's train loader reads those (`pixels.py`):
a quarter of the bytes through the workers' shared memory and the copy to the GPU, and the float conversion done
once per batch on the device instead of per image in the workers, as timm's own loader does. Not with random
erasing, which timm's prefetcher applies on the device after normalising: its draws would leave the workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from tuitune.engine.data.datasets import DataBundle, ImageFiles, TensorImages
from tuitune.engine.data.pixels import PixelForm
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import AugmentConfig


def train_transform(
    data_config: dict, aug: AugmentConfig, pixels: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """The random train transform: to a normalised float tensor, or (`pixels`) to uint8 pixels before normalising."""
    from timm.data import create_transform

    return create_transform(
        use_prefetcher=pixels,
        input_size=data_config["input_size"],
        is_training=True,
        scale=(aug.scale_min, 1.0),
        hflip=aug.hflip,
        vflip=aug.vflip,
        auto_augment=aug.auto_augment or None,
        color_jitter=aug.color_jitter,
        re_prob=aug.re_prob,
        interpolation=data_config.get("interpolation", "bilinear"),
        mean=data_config["mean"],
        std=data_config["std"],
    )


class PixelImages(Dataset):
    """Stored uint8 pixels (see `TensorImages`) turned back into PIL images for a random transform each epoch."""

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor, transform: Callable, as_pixels: PixelForm | None = None
    ) -> None:
        self.pixels, self.labels, self.transform, self.as_pixels = pixels, labels, transform, as_pixels

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        p = self.pixels[i].numpy()
        return Image.fromarray(p[0] if p.shape[0] == 1 else np.transpose(p, (1, 2, 0))).convert("RGB")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.image(i)), self.labels[i]

    def pixel_item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.as_pixels is not None
        return self.as_pixels.transform(self.image(i)), self.labels[i]


def augment_train(bundle: DataBundle, data_config: dict, aug: AugmentConfig) -> DataBundle:
    """The same bundle with a randomly transformed train split (same examples, same order)."""
    if aug.train_transform != "timm":
        return bundle
    tf = train_transform(data_config, aug)
    as_pixels = None
    if not aug.re_prob:
        as_pixels = PixelForm(train_transform(data_config, aug, pixels=True), data_config["mean"], data_config["std"])
    base, indices = bundle.train, None
    if isinstance(base, Subset):
        base, indices = base.dataset, list(base.indices)
    if isinstance(base, ImageFiles):
        augmented: Dataset = ImageFiles(base.samples, tf, random=True, as_pixels=as_pixels, read=base.read)
    elif isinstance(base, TensorImages) and base.images.dtype == torch.uint8:
        augmented = PixelImages(base.images, base.labels, tf, as_pixels)
    else:
        raise UserError("augment.train_transform: this data (synthetic tensors or text) has no images to augment")
    train = Subset(augmented, indices) if indices is not None else augmented
    return DataBundle(train, bundle.val, bundle.test, bundle.classes, bundle.source + ", augmented")


def build_mixup(aug: AugmentConfig, num_classes: int, label_smoothing: float) -> Any:
    """timm's Mixup/CutMix on device batches; None when both are off."""
    if not (aug.mixup or aug.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=label_smoothing, num_classes=num_classes
    )
