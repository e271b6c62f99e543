"""What a validation pass shows beyond its score: the confusion matrix and the worst errors as thumbnails.

Both stay on the device while the val set streams by (a bincount per batch; a running top-k of the highest-loss
wrong predictions), so `Objective.evaluate` still reads the host once: it appends `tensors()` to its one read and
hands the values back to `read`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

THUMB = 16  # thumbnail side, in pixels: 16 columns x 8 rows of half-block characters on the summary screen
WORST = 6  # the worst errors kept per validation


class ValViews:
    """Confusion counts (rows: true class, columns: predicted) and, for image batches, the `WORST` wrong
    predictions with the highest loss, as small RGB thumbnails of the un-normalised input."""

    def __init__(self, k: int, device: torch.device, data_config: dict | None, thumbs: bool) -> None:
        self.k, self.device = k, device
        self.confusion = torch.zeros(k * k, device=device)
        self.thumbs = thumbs and bool(data_config) and "mean" in (data_config or {})
        if self.thumbs:
            cfg = data_config or {}
            self.mean = torch.as_tensor(cfg["mean"], dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
            self.std = torch.as_tensor(cfg["std"], dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
            self.loss = torch.full((WORST,), -torch.inf, device=device)
            self.labels = torch.zeros(2, WORST, device=device)  # true, predicted
            self.pixels = torch.zeros(WORST, 3, THUMB, THUMB, device=device)

    def add(self, x: Any, out: torch.Tensor, y: torch.Tensor) -> None:
        pred = out.argmax(-1)
        self.confusion += torch.bincount(y * self.k + pred, minlength=self.k * self.k)
        if self.thumbs and isinstance(x, torch.Tensor) and x.ndim == 4:
            self._keep_worst(x, out, y, pred)

    def _keep_worst(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor, pred: torch.Tensor) -> None:
        """Merge this batch's highest-loss wrong predictions into the kept ones; only those few get pooled."""
        loss = F.cross_entropy(out, y, reduction="none").masked_fill(pred == y, -torch.inf)
        top = loss.topk(min(WORST, loss.shape[0])).indices
        pixels = self.rgb(x[top])
        losses = torch.cat([self.loss, loss[top]])
        labels = torch.cat([self.labels, torch.stack([y[top], pred[top]]).float()], dim=1)
        keep = losses.topk(WORST).indices
        self.loss, self.labels = losses[keep], labels[:, keep]
        self.pixels = torch.cat([self.pixels, pixels])[keep]

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Images as the eye saw them: un-normalised, pooled to THUMB x THUMB, 0-255, three channels."""
        x = F.adaptive_avg_pool2d(x.float() * self.std[:, : x.shape[1]] + self.mean[:, : x.shape[1]], THUMB)
        if x.shape[1] != 3:
            x = x[:, :1].expand(-1, 3, -1, -1)
        return (x.clamp(0, 1) * 255).round()

    def tensors(self) -> list[torch.Tensor]:
        """What joins the validation's one host read."""
        if not self.thumbs:
            return [self.confusion]
        return [self.confusion, self.loss, self.labels.flatten(), self.pixels.flatten()]

    def read(self, values: list[float], classes: tuple[str, ...]) -> dict[str, Any]:
        """`values` (this object's part of the host read) -> {"confusion": rows of counts, "misclassified":
        [{"true", "pred", "loss", "size", "rgb": hex of HxWx3 uint8}], worst first}."""
        k = self.k
        conf = [[int(values[r * k + c]) for c in range(k)] for r in range(k)]
        result: dict[str, Any] = {"confusion": conf, "misclassified": []}
        if not self.thumbs:
            return result
        rest = values[k * k :]
        losses, labels, pixels = rest[:WORST], rest[WORST : 3 * WORST], rest[3 * WORST :]
        per = 3 * THUMB * THUMB
        for i, loss in enumerate(losses):
            if loss == -float("inf"):
                continue
            chw = torch.tensor(pixels[i * per : (i + 1) * per], dtype=torch.uint8).reshape(3, THUMB, THUMB)
            result["misclassified"].append(
                {
                    "true": classes[int(labels[i])],
                    "pred": classes[int(labels[WORST + i])],
                    "loss": round(loss, 4),
                    "size": THUMB,
                    "rgb": chw.permute(1, 2, 0).contiguous().numpy().tobytes().hex(),
                }
            )
        return result
