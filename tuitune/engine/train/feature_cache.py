"""The feature cache: while the lowest layer groups stay frozen and deterministic, their output never changes, so it
is computed once per phase and only the layers above it run (a phase costs what it trains).

The boundary is the output of the last frozen segment (`segments.py`: stem, blocks, pre-logits, classifier for
timm; embeddings, layer.N for Hugging Face encoders). Head-only on a timm model caches the pooled pre-logits (a
linear probe at the speed of a matmul); progressive unfreezing caches the activations below the trainable groups
and rebuilds them, one boundary lower, at each unfreeze.

Used only when that is exactly the same training: nothing random in the cached part (frozen BatchNorm in eval,
frozen groups without dropout: `strategy.freeze_dropout`; checked by running a batch twice), no train-time
augmentation or Mixup, no distillation, a split that reproduces the model's output on a real batch, and
activations that fit `train.cache_memory_gb`. Whenever the cache is not used, `reason` says why (for the event).
Batches follow the train loader's own sampler, so the shuffle is the same as without the cache; activations are
indexed by sample (text by its own length: stored unpadded, padded per batch like the tokens were).
Stored as float32: half-precision storage would not keep results within the 1e-5 the tests hold it to.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from tuitune.engine.train.segments import NotSequential, split_model, verify
from tuitune.engine.train.objective import to_device

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts


def why_not(profile: RunProfile) -> str:
    """The reasons that hold for the whole run, whatever the phase: "" when none does."""
    a = profile.augment
    reasons = [
        (not profile.train.feature_cache, "train.feature_cache is off"),
        (a.train_transform != "eval" or a.mixup or a.cutmix,
         "random train-time augmentation is on (each epoch sees other inputs)"),
        (bool(profile.distill.teacher), "distillation is on (the teacher reads the inputs)"),
    ]
    return next((why for cond, why in reasons if cond), "")


class _Top(nn.Module):
    """The layers above the boundary, as a module (so `.eval()` / `.train()` reach the real model)."""

    def __init__(self, split: Any, k: int) -> None:
        super().__init__()
        self.inner = split.model
        self.split, self.k = split, k

    def forward(self, a: Any) -> torch.Tensor:
        return self.split.top(a, self.k)


class _Store:
    """Activations of one split, indexed by sample: one tensor, or (text) unpadded rows with their mask."""

    def __init__(self, labels: torch.Tensor, feats: torch.Tensor, offsets: list[int] | None = None,
                 mask: torch.Tensor | None = None) -> None:
        self.labels, self.feats, self.offsets, self.mask = labels, feats, offsets, mask

    @property
    def nbytes(self) -> int:
        return self.feats.nbytes + (self.mask.nbytes if self.mask is not None else 0)

    def get(self, index: list[int] | range, device: torch.device) -> Any:
        if self.offsets is None:
            idx = torch.as_tensor(list(index), device=self.feats.device)
            return self.feats[idx].to(device, non_blocking=True)
        from torch.nn.utils.rnn import pad_sequence

        o = self.offsets
        feats = pad_sequence([self.feats[o[i]:o[i + 1]] for i in index], batch_first=True)
        mask = pad_sequence([self.mask[o[i]:o[i + 1]] for i in index], batch_first=True)  # type: ignore[index]
        return {"inputs_embeds": feats.to(device, non_blocking=True), "attention_mask": mask.to(device)}


class FeatureCache:
    def __init__(self, parts: RunParts, profile: RunProfile) -> None:
        self.parts, self.profile = parts, profile
        self.train: _Store | None = None
        self.val: _Store | None = None
        self.k = -1
        self.top: nn.Module | None = None
        self._split: Any = None
        self._split_error = ""

    @property
    def active(self) -> bool:
        return self.train is not None

    @property
    def boundary(self) -> str:
        return self.split.segments[self.k].name if self.active else ""

    @property
    def split(self) -> Any:
        if self._split is None and not self._split_error:
            try:
                self._split = split_model(self.parts.model)
            except NotSequential as e:
                self._split_error = str(e)
        return self._split

    # ---------------------------------------------------------------------------------------------- planning
    def plan(self) -> tuple[int, str]:
        """The last segment that is frozen and deterministic in the current train mode, or -1 and why none."""
        reason = why_not(self.profile)
        if reason:
            return -1, reason
        split = self.split
        if split is None:
            return -1, self._split_error
        params = dict(self.parts.model.named_parameters())
        names = {id(m): n for n, m in self.parts.model.named_modules()}
        for i, seg in enumerate(split.segments):
            trains = next((n for n in sorted(seg.params) if params[n].requires_grad), None)
            random = "" if trains else _random_module(seg.modules, names)
            if trains or random:
                if i > 0:
                    return i - 1, ""
                return -1, (random or f"the lowest layers ({seg.name}) train: no frozen part to cache")
        return len(split.segments) - 1, ""  # a Hugging Face encoder frozen whole: its pooler and head run

    def refresh(self, progress: Callable[..., None]) -> tuple[bool, str]:
        """Build, keep, or drop the cache for the current phase. (changed, detail for the event)."""
        k, reason = self.plan()
        if self.active and k == self.k:
            return False, ""
        was = self.boundary
        self.drop()
        if k < 0:
            return True, f"not used: {reason}" if not was else f"dropped: {reason}"
        t0 = time.perf_counter()
        reason, lower = self._build(k, progress)
        while reason and lower and k > 0:  # something random at k (e.g. timm's head dropout): one segment lower
            k -= 1
            reason, lower = self._build(k, progress)
        if reason:
            return True, f"not used: {reason}"
        size = (self.train.nbytes + self.val.nbytes) / 1e6  # type: ignore[union-attr]
        where = self.train.feats.device.type  # type: ignore[union-attr]
        return True, (f"output of {self.boundary} cached ({len(self.train.labels)} train, "  # type: ignore[union-attr]
                      f"{len(self.val.labels)} val, {size:.1f} MB on {where}, built in "  # type: ignore[union-attr]
                      f"{time.perf_counter() - t0:.1f}s): only the layers above it run")

    def invalid_after_unfreeze(self) -> str:
        """Called when groups were unfrozen: why the cached boundary no longer holds ("" when it still does)."""
        if not self.active:
            return ""
        k, _ = self.plan()
        return "" if k == self.k else f"the layers up to {self.boundary} are no longer all frozen; rebuilt at the next epoch"

    def drop(self) -> None:
        self.train = self.val = self.top = None
        self.k = -1

    # ---------------------------------------------------------------------------------------------- building
    def _loader(self, dataset: Any) -> Any:
        from torch.utils.data import DataLoader

        tl = self.parts.train_loader
        return DataLoader(dataset, batch_size=max(64, tl.batch_size or 64), shuffle=False, collate_fn=tl.collate_fn)

    def _top_input(self, a: Any, x: Any) -> Any:
        if isinstance(x, dict) and isinstance(a, torch.Tensor) and a.ndim == 3 and "attention_mask" in x:
            return {"inputs_embeds": a, "attention_mask": x["attention_mask"]}
        return a

    @torch.no_grad()
    def _build(self, k: int, progress: Callable[..., None]) -> tuple[str, bool]:
        """Check the split at k on a real batch, that it repeats, that it fits; then store train and val.
        ("", _) when built, else (why not, whether a lower boundary may still do)."""
        p, split = self.parts, self.split
        x0, _ = next(iter(self._loader(torch.utils.data.Subset(p.bundle.train, range(min(8, len(p.bundle.train)))))))
        x0 = to_device(x0, p.device)
        with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []), p.autocast():
            first, second = split.prefix(x0, k), split.prefix(x0, k)
            if not torch.allclose(first.float(), second.float(), rtol=1e-6, atol=1e-6):
                return (f"the frozen layers up to {split.segments[k].name} give different outputs for the same "
                        f"batch (dropout or another random op; see strategy.freeze_dropout)"), True
            bad = verify(split, x0, k, self._top_input)
        if bad:
            return bad, False
        n = len(p.bundle.train) + len(p.bundle.val)
        name = split.segments[k].name
        store = self._sized(self._top_input(first, x0), n, name)
        if isinstance(store, str):
            return store, False
        with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []):
            self.train = self._store(p.bundle.train, k, store, progress, f"{name} (train)")
            self.val = self._store(p.bundle.val, k, store, progress, f"{name} (val)")
        self.k, self.top = k, _Top(split, k)
        return "", False

    def _sized(self, a: Any, n: int, name: str) -> torch.device | str:
        """Where the activations go (the run's device, else host memory), or why they fit nowhere."""
        feats = a["inputs_embeds"] if isinstance(a, dict) else a
        if isinstance(a, dict):  # text: stored unpadded, so count the real tokens of the probe
            per_sample = a["attention_mask"].sum().item() * feats.shape[-1] * 4 / feats.shape[0]
        else:
            per_sample = feats[0].numel() * 4
        need = per_sample * n * 1.1
        cfg = self.profile.train.cache_memory_gb
        devices = [self.parts.device] + ([torch.device("cpu")] if self.parts.device.type == "cuda" else [])
        for device in devices:
            budget = cfg * 1e9 if cfg > 0 else 0.5 * _available(device)
            if need <= budget:
                return device
        budget = cfg * 1e9 if cfg > 0 else 0.5 * _available(devices[-1])
        key = "train.cache_memory_gb" if cfg > 0 else "half the available memory; set train.cache_memory_gb"
        return f"the output of {name} would take {need / 1e9:.2f} GB, over the budget of {budget / 1e9:.2f} GB ({key})"

    def _store(self, dataset: Any, k: int, where: torch.device, progress: Callable[..., None], label: str) -> _Store:
        p, split = self.parts, self.split
        loader = self._loader(dataset)
        total, t0, last = len(loader), time.perf_counter(), 0.0
        feats: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        lengths: list[int] = []
        labels: list[torch.Tensor] = []
        for i, (x, y) in enumerate(loader, start=1):
            x = to_device(x, p.device)
            with p.autocast():
                a = self._top_input(split.prefix(x, k), x)
            if isinstance(a, dict):
                m = a["attention_mask"]  # each row up to its last real token (right or left padded alike)
                ends = (m.shape[1] - m.flip(1).int().argmax(1)).tolist()
                for row, mrow, n in zip(a["inputs_embeds"], m, ends):
                    feats.append(row[:n].float().to(where))
                    masks.append(mrow[:n].to(where))
                    lengths.append(n)
            else:
                feats.append(a.float().to(where))
            labels.append(y.to(p.device))
            now = time.perf_counter()
            if now - last >= 0.25 or i == total:
                last = now
                progress(task="cache", detail=label, done=i, total=total, unit="batches",
                         rate=i / max(now - t0, 1e-9), finished=i == total)
        label_t = torch.cat(labels)
        if not lengths:
            return _Store(label_t, torch.cat(feats))
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        return _Store(label_t, torch.cat(feats), offsets, torch.cat(masks))

    # --------------------------------------------------------------------------------------------- batches
    def batches(self) -> Iterator[tuple[Any, torch.Tensor, bool]]:
        """Train batches in the loader's shuffled order (its batch sampler draws from the same generator), as
        (x, y, cached). Should the cache be dropped mid-epoch (an unfreeze), the rest of the epoch's batches are
        read from the dataset instead, in the same order."""
        dataset, loader = self.parts.bundle.train, self.parts.train_loader
        if loader.generator is not None:  # what DataLoader.__iter__ draws first (its workers' base seed), so the
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # shuffle below is the same
        for indices in loader.batch_sampler:
            if self.train is not None:
                store = self.train
                yield store.get(indices, self.parts.device), store.labels[torch.as_tensor(indices,
                                                                                          device=store.labels.device)], True
            else:
                x, y = loader.collate_fn([dataset[i] for i in indices])
                yield x, y, False

    def val_batches(self, batch_size: int = 256) -> list[tuple[Any, torch.Tensor]]:
        store = self.val
        n = len(store.labels)  # type: ignore[union-attr]
        return [(store.get(range(i, min(i + batch_size, n)), self.parts.device),  # type: ignore[union-attr]
                 store.labels[i:i + batch_size]) for i in range(0, n, batch_size)]  # type: ignore[union-attr]


def _random_module(modules: tuple[nn.Module, ...], names: dict[int, str]) -> str:
    """A BatchNorm in train mode or an active dropout / stochastic depth among `modules`: why they cannot be cached."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    for module in modules:
        for sub in module.modules():
            if not sub.training:
                continue
            name = names.get(id(sub), type(sub).__name__)
            if isinstance(sub, _BatchNorm) and sub.track_running_stats:
                return f"BatchNorm {name} of a frozen group is in train mode (strategy.freeze_bn is off)"
            rate = sub.p if isinstance(sub, _DropoutNd) else getattr(sub, "drop_prob", 0.0)
            if isinstance(rate, float) and rate > 0:
                return f"{name} drops out in a frozen group (strategy.freeze_dropout is off)"
    return ""


def _available(device: torch.device) -> float:
    """Free memory in bytes: the GPU's, or the host's MemAvailable."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
