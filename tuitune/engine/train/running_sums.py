"""Running train metrics, kept on the device so that a step never waits for the host.

A step that the non-finite guard flags adds nothing (`torch.where`, not an `if`: deciding on the host would be the
per-step sync we avoid), so a skipped NaN step cannot turn an epoch's mean loss into NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from tuitune.engine.train.scoring import Scorer


class RunningSums:
    """Sums of loss x samples, the task score's sums (see `Scorer.batch_sums`) and samples over the finite steps,
    on the device; plus the number of samples fed (host side, for throughput)."""

    def __init__(self, device: torch.device, scorer: Scorer | None = None) -> None:
        self.device, self.scorer = device, scorer or Scorer("class")
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.sums = torch.zeros(self.scorer.width, device=self.device)
        self.count = torch.zeros((), device=self.device, dtype=torch.long)
        self.samples = 0
        self.t0 = time.perf_counter()

    def batch(
        self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, finite: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """One step's contribution, computed once for every accumulator it goes into (epoch and window)."""
        n = y.shape[0]
        return (
            torch.where(finite, loss.detach().float() * n, 0.0),
            torch.where(finite, self.scorer.batch_sums(out, y), 0.0),
            finite.long() * n,
            n,
        )

    def add_batch(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]) -> None:
        loss, sums, count, n = batch
        self.loss += loss
        self.sums += sums
        self.count += count
        self.samples += n

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, finite: torch.Tensor) -> None:
        self.add_batch(self.batch(loss, out, y, finite))

    def read(
        self, *extra: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[float, float, list[float]]:
        """(mean loss, score, extra values): one host sync for all of them. `reduce` (several ranks: the sum over
        ranks) applies to the sums, so the figures are the global batch's; the extras stay this rank's."""
        own = torch.cat([self.loss.reshape(1), self.count.to(self.loss.dtype).reshape(1), self.sums])
        if reduce is not None:
            own = reduce(own)
        values = torch.cat([own, *(e.to(self.loss.dtype).reshape(-1) for e in extra)]).tolist()
        loss, count = values[0], values[1]
        width = self.scorer.width
        sums, rest = values[2 : 2 + width], values[2 + width :]
        if count == 0:
            return float("nan"), float("nan"), rest
        return loss / count, self.scorer.score(sums, int(count)), rest

    def state_dict(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """For a mid-epoch checkpoint: a resumed epoch then reports the same train metrics as an unbroken one.
        `reduce` (several ranks: the sum over ranks) makes them the sums of every rank's part of the epoch."""
        reduce = reduce or (lambda t: t)
        return {
            "loss": reduce(self.loss.detach()).cpu(),
            "sums": reduce(self.sums).cpu(),
            "count": reduce(self.count).cpu(),
            "samples": self.samples,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.loss = saved["loss"].to(self.device)
        self.sums = saved["sums"].to(self.device)
        self.count = saved["count"].to(self.device)
        self.samples = int(saved["samples"])

    def seconds(self) -> float:
        return time.perf_counter() - self.t0
