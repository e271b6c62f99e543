"""Training-time augmentation: timm's `create_transform(is_training=True)` on the train split, and timm's
`Mixup` (mixup / CutMix) on batches. Validation and test always keep the deterministic eval transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from tuitune.engine.data.datasets import DataBundle, ImageFiles, TensorImages
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import AugmentConfig


def train_transform(data_config: dict, aug: AugmentConfig) -> Callable[[Image.Image], torch.Tensor]:
    from timm.data import create_transform

    return create_transform(
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

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.pixels, self.labels, self.transform = pixels, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pixels[i].numpy()
        image = Image.fromarray(p[0] if p.shape[0] == 1 else np.transpose(p, (1, 2, 0))).convert("RGB")
        return self.transform(image), self.labels[i]


def augment_train(bundle: DataBundle, data_config: dict, aug: AugmentConfig) -> DataBundle:
    """The same bundle with a randomly transformed train split (same examples, same order)."""
    if aug.train_transform != "timm":
        return bundle
    tf = train_transform(data_config, aug)
    base, indices = bundle.train, None
    if isinstance(base, Subset):
        base, indices = base.dataset, list(base.indices)
    if isinstance(base, ImageFiles):
        augmented: Dataset = ImageFiles(base.samples, tf, random=True, read=base.read)
    elif isinstance(base, TensorImages) and base.images.dtype == torch.uint8:
        augmented = PixelImages(base.images, base.labels, tf)
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
