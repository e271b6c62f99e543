"""Batches: onto the device (one helper for the loop, evaluation, the feature cache, the LR finder and compression),
and how a loader batches a dataset (its own collate; length-grouped order for text). Kept at the bottom of the data
package, so none of them reaches it through another."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["collate_for", "length_sampler", "text_lengths", "to_device", "unwrap"]


def to_device(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch onto the device without waiting (pinned host memory makes the copy asynchronous)."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    if channels_last and x.ndim == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def unwrap(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under a Subset, and the Subset's indices (None when not a Subset)."""
    if isinstance(dataset, Subset):
        return dataset.dataset, list(dataset.indices)
    return dataset, None


def collate_for(dataset: Dataset) -> Callable | None:
    """The dataset's own collate (text: trim to the batch's longest), else None (torch's default)."""
    return getattr(unwrap(dataset)[0], "collate", None)


def length_sampler(dataset: Dataset, batch_size: int, generator: torch.Generator) -> Any:
    """transformers' LengthGroupedSampler over the texts' real lengths, drawing from the loader's generator, so
    the order is seeded and a resumed run replays it exactly; None for data without lengths (images)."""
    lengths = text_lengths(dataset)
    if lengths is None:
        return None
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)


def text_lengths(dataset: Dataset) -> list[int] | None:
    """The real length of each sample (text), in the dataset's order; None for data without lengths (images)."""
    base, indices = unwrap(dataset)
    lengths = getattr(base, "lengths", None)
    if lengths is None:
        return None
    if indices is not None:
        lengths = lengths[torch.as_tensor(indices, dtype=torch.long)]
    return lengths.tolist()
