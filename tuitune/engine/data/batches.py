"""Batches onto the device: one helper for the loop, evaluation, the feature cache, the LR finder and compression,
kept at the bottom of the data package so none of them reaches it through another."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["to_device"]


def to_device(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch onto the device without waiting (pinned host memory makes the copy asynchronous)."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    if channels_last and x.ndim == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)
