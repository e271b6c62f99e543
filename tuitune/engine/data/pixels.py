"""The train loader's fast path for augmented images: uint8 pixels through the workers, normalised on the device.

Per image, a worker used to convert to float (ToTensor), normalise and pass a float tensor through shared memory;
timm's loader passes uint8 pixels and normalises the whole batch on the device (its `PrefetchLoader`). Measured on
the clothing photos at 224 px with RandAugment (`benchmarks/loader.py`), the per-image float work was a quarter of a
worker's time, and the float batch is four times the bytes to share, pin and copy.

A dataset that can give its pixels has `pixel_item(i)` and `as_pixels` (a `PixelForm`: the transform to uint8 and
the mean and std); its `__getitem__` stays the normalised float one, so anything else that reads the split (the LR
finder's own loader, a probe, tests) sees what it always saw. `make_loaders` reads the train split through a
`PixelView` and gives it a `NormalizingLoader`, whose batches arrive on the device as normalised floats: the same
values the float path gives, up to float rounding. On a CPU run the batch's normalising falls to the training
process (one vectorised operation per batch, as in timm's loader) and the workers save the per-image float work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tuitune.engine.data.batches import unwrap


@dataclass(frozen=True)
class PixelForm:
    transform: Callable[[Any], torch.Tensor]  # an image to uint8 pixels [C, H, W]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class PixelView(Dataset):
    """`dataset` (under a Subset or not) read as uint8 pixels."""

    def __init__(self, dataset: Dataset) -> None:
        self.base, self.indices = unwrap(dataset)
        self.form: PixelForm = self.base.as_pixels

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.pixel_item(self.indices[i] if self.indices is not None else i)


def pixel_view(dataset: Dataset) -> PixelView | None:
    """The pixel view of a split that has one, else None."""
    base, _ = unwrap(dataset)
    return PixelView(dataset) if getattr(base, "as_pixels", None) is not None else None


class NormalizingLoader(DataLoader):
    """A DataLoader of uint8 image batches that yields them on `device`, as float32 normalised by `form`: the
    copy is asynchronous from pinned memory, the conversion one vectorised operation per batch."""

    def __init__(self, dataset: PixelView, device: torch.device, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.device = device
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._scale is None:
            form: PixelForm = self.dataset.form
            as_255 = [
                torch.tensor(v, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255
                for v in (form.mean, form.std)
            ]
            self._scale = (as_255[0], as_255[1])
        return self._scale

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mean, std = self._mean_std()
        for x, y in super().__iter__():
            x = x.to(self.device, non_blocking=True).float().sub_(mean).div_(std)
            yield x, y
