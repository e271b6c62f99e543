"""Metric watchers: the one rule behind best checkpoints, plateau triggers and early stopping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MetricWatch:
    """Tracks the best value of a metric and how many epochs have passed without an improvement of at least
    `min_delta`. Scores improve in the task score's direction, losses downwards."""

    metric: str
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0
    score_higher: bool = True  # the direction of the task's score, carried by the `*_score` metrics

    @property
    def higher_is_better(self) -> bool:
        if self.metric.endswith(("_f1", "_exact_match")):  # better higher whatever the task's score
            return True
        return self.metric.endswith("score") and self.score_higher

    def better(self, a: float, b: float) -> bool:
        """Is score `a` better than score `b`, in the task score's direction? (for per-phase bests)"""
        return a > b if self.score_higher else a < b

    def improved_by(self, value: float) -> bool:
        if self.best is None:
            return True
        gain = value - self.best if self.higher_is_better else self.best - value
        return gain > self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        if self.improved_by(value):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            return True
        self.stale += 1
        return False

    def reset(self) -> None:
        self.best, self.best_epoch, self.stale = None, 0, 0

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {"metric": self.metric, "best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load(self, saved: dict) -> None:
        self.best, self.best_epoch, self.stale = saved["best"], int(saved["best_epoch"]), int(saved["stale"])
