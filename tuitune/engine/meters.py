"""Running train metrics, kept on the device so that a step never waits for the host.

A step that the non-finite guard flags adds nothing (`torch.where`, not an `if`: deciding on the host would be the
per-step sync we avoid), so a skipped NaN step cannot turn an epoch's mean loss into NaN.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class RunningSums:
    """Sums of loss x samples, correct predictions and samples over the finite steps, on the device; plus the
    number of samples fed (host side, for throughput)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.count = torch.zeros((), device=self.device, dtype=torch.long)
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, finite: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss += torch.where(finite, loss.detach().float() * n, 0.0)
        self.correct += torch.where(finite, (logits.detach().argmax(-1) == y).sum(), 0)
        self.count += finite.long() * n
        self.samples += n

    def read(self, *extra: torch.Tensor) -> tuple[float, float, list[float]]:
        """(mean loss, accuracy, extra values): one host sync for all of them."""
        values = torch.stack([self.loss, self.correct.to(self.loss.dtype), self.count.to(self.loss.dtype),
                              *(e.to(self.loss.dtype) for e in extra)]).tolist()
        loss, correct, count = values[:3]
        if count == 0:
            return float("nan"), float("nan"), values[3:]
        return loss / count, correct / count, values[3:]

    def state_dict(self) -> dict[str, Any]:
        """For a mid-epoch checkpoint: a resumed epoch then reports the same train metrics as an unbroken one."""
        return {"loss": self.loss.detach().cpu(), "correct": self.correct.cpu(), "count": self.count.cpu(),
                "samples": self.samples}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.loss = saved["loss"].to(self.device)
        self.correct = saved["correct"].to(self.device)
        self.count = saved["count"].to(self.device)
        self.samples = int(saved["samples"])

    def seconds(self) -> float:
        return time.perf_counter() - self.t0
