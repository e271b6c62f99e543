"""Task metrics, computed the way the loop needs them: sums that stay on the device, one host read at the end.

A *target* kind decides the score the dashboard plots and the summary reports:
`class` -> accuracy (and, at validation, macro-F1 and per-class precision / recall / F1 from a confusion matrix
counted on the device), `value` (regression, MSE loss) -> RMSE (and MAE), `multi` (multi-label, BCE) -> micro-F1
at 0.5 (and mAP), `token` (a causal language model) -> next-token accuracy over the response tokens (labels of
-100 are not scored). Each scorer turns a batch into a small vector of sums (`batch_sums`), which the loop
accumulates on the device, and turns the accumulated sums into a score (`score`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE = -100  # a token label that is not scored (prompt, padding): the ignore_index of torch's cross-entropy


@dataclass(frozen=True)
class Scorer:
    kind: str  # "class", "value", "multi" or "token"

    @property
    def name(self) -> str:
        return {"class": "acc", "value": "rmse", "multi": "f1", "token": "token_acc"}[self.kind]

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "value"

    @property
    def width(self) -> int:
        return {"class": 1, "value": 2, "multi": 3, "token": 2}[self.kind]

    def batch_sums(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-batch sums, on the device (no sync): class [correct]; value [sq err, abs err]; multi [tp, fp, fn];
        token [correct, scored tokens] (`out`: logits [B, T, V], or their argmax [B, T])."""
        if self.kind == "token":
            scored = y != IGNORE
            pred = out.detach().argmax(-1) if out.ndim == y.ndim + 1 else out
            return torch.stack([((pred == y) & scored).sum(), scored.sum()]).float()
        out = out.detach().float()
        if self.kind == "value":
            err = out.reshape(y.shape) - y.float()
            return torch.stack([err.pow(2).sum(), err.abs().sum()])
        if self.kind == "multi":
            pred, truth = out > 0, y > 0.5
            return torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]).float()
        if y.ndim == 2:  # soft Mixup targets: compare with the dominant class
            y = y.argmax(-1)
        return (out.argmax(-1) == y).sum().float().reshape(1)

    def score(self, sums: list[float], n: int) -> float:
        if n == 0:
            return math.nan
        if self.kind == "value":
            return math.sqrt(sums[0] / n)
        if self.kind == "multi":
            tp, fp, fn = sums
            return 2 * tp / max(2 * tp + fp + fn, 1e-12)
        if self.kind == "token":
            return sums[0] / sums[1] if sums[1] else math.nan
        return sums[0] / n

    def extras(self, sums: list[float], n: int) -> dict[str, float]:
        if self.kind == "value" and n:
            return {"mae": sums[1] / n}
        return {}


def class_report(
    confusion: list[list[float]], classes: tuple[str, ...] | list[str]
) -> tuple[float, dict[str, dict[str, float]]]:
    """(macro-F1, {class: precision, recall, f1, support}) from a confusion matrix (rows = true class, columns =
    predicted), the way scikit-learn's `f1_score(average="macro")` counts: a class that is neither in the labels nor
    in the predictions is left out of the mean; one that is in only one of them scores 0. Why macro: on imbalanced
    data (SMS spam: 87% ham) always answering the majority class scores high accuracy but macro-F1 near 0.47."""
    k = len(confusion)
    report: dict[str, dict[str, float]] = {}
    f1s = []
    for i in range(k):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (support + predicted) if support + predicted else 0.0
        report[str(classes[i])] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or predicted:
            f1s.append(f1)
    return (sum(f1s) / len(f1s) if f1s else math.nan), report


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over classes of average precision (area under the precision-recall steps), for multi-label val sets.
    Classes with no positive example are skipped, as in scikit-learn's macro AP."""
    aps = []
    for k in range(scores.shape[1]):
        positives = truth[:, k] > 0.5
        if not positives.any():
            continue
        order = torch.argsort(scores[:, k], descending=True)
        hits = positives[order].float()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return sum(aps) / len(aps) if aps else math.nan
