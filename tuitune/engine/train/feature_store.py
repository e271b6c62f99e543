"""How the feature cache keeps activations: indexed by sample, float32, text rows unpadded (`Store`, filled batch by
batch through `Rows`; a causal LM's rows with their labels and per-token inputs: `TokenStore`, `TokenRows`); what
they cost (`per_sample`, `available`); and, with several ranks, every rank's share of
the train activations gathered into one store (`gather_store`). See `feature_cache` for when and why.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils.rnn import pad_sequence

from tuitune.engine.data.chat import IGNORE
from tuitune.engine.data.image_cache import available_memory

if TYPE_CHECKING:
    from tuitune.engine.train.distributed import DistContext


class Store:
    """Activations of one split, indexed by sample: one tensor, or (text) unpadded rows with their mask."""

    def __init__(
        self,
        labels: torch.Tensor,
        feats: torch.Tensor,
        offsets: list[int] | None = None,
        mask: torch.Tensor | None = None,
        rows: list[int] | None = None,
    ) -> None:
        self.labels, self.feats, self.offsets, self.mask = labels, feats, offsets, mask
        self.rows = rows  # gathered from several ranks: the row of each sample (labels are in sample order)
        # the same map on the activations' device, so one index tensor serves the labels and the rows
        self._rows = None if rows is None or offsets is not None else torch.as_tensor(rows, device=feats.device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.feats.nbytes + (self.mask.nbytes if self.mask is not None else 0)

    def batch(self, index: list[int], device: torch.device) -> tuple[Any, torch.Tensor]:
        """The activations and labels of the samples `index`, from one index tensor built per batch (one host ->
        device copy, pinned and asynchronous on a GPU) on the device of the activations (text: of the labels)."""
        at = _index(index, self.feats.device if self.offsets is None else self.labels.device)
        on_labels = at if at.device == self.labels.device else at.to(self.labels.device, non_blocking=True)
        return self.get(index, device, at), self.labels[on_labels]

    def get(self, index: list[int] | range, device: torch.device, at: torch.Tensor | None = None) -> Any:
        """The activations of the samples `index` on `device`; `at`: `index` as a tensor already on the device
        of the activations (see `batch`), else it is built here."""
        if self.offsets is None:
            at = _index(index, self.feats.device) if at is None else at
            return self.feats[at if self._rows is None else self._rows[at]].to(device, non_blocking=True)
        if self.rows is not None:
            index = [self.rows[i] for i in index]
        from torch.nn.utils.rnn import pad_sequence

        o, m = self.offsets, self.mask
        assert m is not None, "a text store (offsets) keeps its mask"
        feats = pad_sequence([self.feats[o[i] : o[i + 1]] for i in index], batch_first=True)
        mask = pad_sequence([m[o[i] : o[i + 1]] for i in index], batch_first=True)
        return {"inputs_embeds": feats.to(device, non_blocking=True), "attention_mask": mask.to(device)}


def _index(index: list[int] | range, where: torch.device) -> torch.Tensor:
    """`index` as a tensor on `where`: built on the host, and on a GPU copied from pinned memory without waiting."""
    host = torch.as_tensor(list(index), dtype=torch.long)
    if where.type != "cuda":
        return host.to(where)
    return host.pin_memory().to(where, non_blocking=True)


def gather_store(store: Store, n: int, dist: DistContext) -> Store:
    """Every rank's share of the train activations, so a rank can serve whichever samples the global batches
    deal it. Rows stay in rank order (rank r's rows are samples r, r+W, ...): `rows` maps sample to row."""
    d, world = dist, dist.world
    order = torch.cat([torch.arange(r, n, world) for r in range(world)])  # the sample of each gathered row
    rows = torch.empty(n, dtype=torch.long)
    rows[order] = torch.arange(n)
    labels = d.gather_rows(store.labels)
    labels = labels[rows.to(labels.device)]  # in sample order, as one process stores them
    feats = d.gather_rows(store.feats)
    if store.offsets is None:
        return Store(labels, feats, rows=rows.tolist())
    lengths = d.gather_rows(torch.tensor(store.offsets[1:]) - torch.tensor(store.offsets[:-1]))
    offsets = [0, *torch.cumsum(lengths, 0).tolist()]
    return Store(labels, feats, offsets, d.gather_rows(store.mask), rows=rows.tolist())


class Rows:
    """Activations of one boundary as they come, batch by batch (text rows cut to their last real token)."""

    def __init__(self) -> None:
        self.feats: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.lengths: list[int] = []
        self.labels: list[torch.Tensor] = []

    def add(self, a: Any, y: torch.Tensor, where: torch.device) -> None:
        """A batch's activations (on `where`) and labels (kept where they are: the run's device)."""
        self.labels.append(y)
        if not isinstance(a, dict):
            self.feats.append(a.float().to(where))
            return
        m = a["attention_mask"]  # each row up to its last real token (right or left padded alike)
        ends = (m.shape[1] - m.flip(1).int().argmax(1)).tolist()
        for row, mrow, n in zip(a["inputs_embeds"], m, ends):
            self.feats.append(row[:n].float().to(where))
            self.masks.append(mrow[:n].to(where))
            self.lengths.append(n)

    def store(self) -> Store:
        labels = torch.cat(self.labels)
        if not self.lengths:
            return Store(labels, torch.cat(self.feats))
        offsets = list(itertools.accumulate(self.lengths, initial=0))
        return Store(labels, torch.cat(self.feats), offsets, torch.cat(self.masks))


def per_sample(a: Any) -> float:
    """Bytes per sample of an activation as stored (float32; text: its real tokens only, with the mask; a causal
    LM's: with its labels and other per-token inputs, all its tokens when it has no attention mask)."""
    if isinstance(a, dict):
        feats = a["inputs_embeds"]
        b, t = feats.shape[:2]
        tokens = a["attention_mask"].sum().item() if "attention_mask" in a else b * t
        per_token = feats.shape[-1] * 4 + (8 if "logits_to_keep" in a else 0)  # labels: int64
        per_token += sum(v.element_size() for k, v in a.items() if k != "inputs_embeds" and _per_token(v, b, t))
        return tokens * per_token / b
    return a[0].numel() * 4


def available(device: torch.device) -> float:
    """Free memory in bytes: the GPU's, or the host's as `image_cache.available_memory` says (MemAvailable capped
    by a cgroup limit; 0 when the platform does not say)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    free = available_memory()
    return float(free) if free is not None else 0.0


def _per_token(v: Any, b: int, t: int) -> bool:
    return isinstance(v, torch.Tensor) and tuple(v.shape) == (b, t)


class TokenStore:
    """A causal LM's activations, indexed by sample: each row up to its last token (the one after its last scored
    position: no later position changes a scored logit), with its labels and the per-token inputs the model reads
    (attention mask, position ids). A batch is padded on the right to its longest row and cut to the positions some
    row is scored at (`logits_to_keep`), as `ChatCollate` pads and cuts the same samples."""

    def __init__(
        self, feats: torch.Tensor, offsets: list[int], labels: torch.Tensor, extra: dict[str, torch.Tensor], keep: bool
    ) -> None:
        self.feats, self.offsets, self.labels, self.extra, self.keep = feats, offsets, labels, extra, keep

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.feats.nbytes + self.labels.nbytes + sum(v.nbytes for v in self.extra.values())

    def batch(self, index: list[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cuts = [slice(self.offsets[i], self.offsets[i + 1]) for i in index]
        width = max(c.stop - c.start for c in cuts)
        x = {"inputs_embeds": pad_sequence([self.feats[c] for c in cuts], batch_first=True).to(device)}
        for key, values in self.extra.items():
            rows = [values[c] for c in cuts]
            if key == "position_ids":  # a packed row's tail counts on from 0, a padding "example" of its own
                rows = [torch.cat([r, torch.arange(width - len(r), dtype=r.dtype, device=r.device)]) for r in rows]
            x[key] = pad_sequence(rows, batch_first=True).to(device)
        y = pad_sequence([self.labels[c] for c in cuts], batch_first=True, padding_value=IGNORE)
        if self.keep:
            keep = (y != IGNORE).any(0).nonzero().flatten()
            x["logits_to_keep"], y = keep.to(device), y[:, keep]
        return x, y.to(device)


class TokenRows:
    """A causal LM's activations of one boundary as they come, batch by batch: each row cut after the token that
    follows its last scored position (a chat example's own length, a packed row's filled part), its labels spread
    back over its positions from `logits_to_keep`."""

    def __init__(self) -> None:
        self.feats: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.extra: dict[str, list[torch.Tensor]] = {}
        self.lengths: list[int] = []
        self.keep = False

    def add(self, a: dict[str, Any], y: torch.Tensor, where: torch.device) -> None:
        feats = a["inputs_embeds"]
        b, t = feats.shape[:2]
        full = y.to(where)
        if "logits_to_keep" in a:
            self.keep = True
            full = torch.full((b, t), IGNORE, dtype=y.dtype, device=where)
            full[:, a["logits_to_keep"].to(where)] = y.to(where)
        scored = full != IGNORE
        last = t - 1 - scored.flip(1).int().argmax(1)
        ends = torch.where(scored.any(1), (last + 2).clamp(max=t), t).tolist()
        extra = {k: v for k, v in a.items() if k not in ("inputs_embeds", "logits_to_keep") and _per_token(v, b, t)}
        for r, n in enumerate(ends):
            self.feats.append(feats[r, :n].float().to(where))
            self.labels.append(full[r, :n])
            for key, v in extra.items():
                self.extra.setdefault(key, []).append(v[r, :n].to(where))
            self.lengths.append(n)

    def store(self) -> TokenStore:
        offsets = list(itertools.accumulate(self.lengths, initial=0))
        extra = {k: torch.cat(v) for k, v in self.extra.items()}
        return TokenStore(torch.cat(self.feats), offsets, torch.cat(self.labels), extra, self.keep)
