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
indexed by sample (text by its own length: stored unpadded, padded per batch like the tokens were; a causal LM's
with its labels, cut to the scored positions per batch as the chat collate cuts them: `TokenStore`).
Stored as float32: half-precision storage would not keep results within the 1e-5 the tests hold it to.

Several ranks: rank r computes the activations of samples r, r+W, ... of each split. Val stays that shard (it is
the rank's `shards.EvalShard`; the metrics are reduced as without the cache). Train activations are gathered, so
every rank holds them all: the global batches deal each rank other samples every epoch. Every decision (build or
not, which boundaries fit) is taken alike on all ranks, and the layers above the boundary train through a DDP
wrapper of their own (`forward`), so their gradients are all-reduced as the whole model's are without the cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tuitune.engine.data.batches import to_device
from tuitune.engine.train.feature_store import Rows, Store, TokenRows, TokenStore, available, gather_store, per_sample
from tuitune.engine.train.segments import DecoderSplit, NotSequential, split_model, verify

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts


def why_not(profile: RunProfile) -> str:
    """The reasons that hold for the whole run, whatever the phase: "" when none does."""
    a = profile.augment
    reasons = [
        (not profile.train.feature_cache, "train.feature_cache is off"),
        (
            a.train_transform != "eval" or a.mixup or a.cutmix,
            "random train-time augmentation is on (each epoch sees other inputs)",
        ),
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


class FeatureCache:
    def __init__(self, parts: RunParts, profile: RunProfile) -> None:
        self.parts, self.profile, self.dist = parts, profile, parts.dist
        self._forward: nn.Module | None = None  # `top`, in a DDP wrapper with several ranks
        self.stores: dict[int, tuple[Any, Any]] = {}  # boundary -> (train, val): Store, TokenStore (causal LM)
        self.k = -1
        self.top: nn.Module | None = None
        self._split: Any = None
        self._split_error = ""

    @property
    def active(self) -> bool:
        return self.k in self.stores

    @property
    def train(self) -> Store | TokenStore | None:
        return self.stores[self.k][0] if self.active else None

    @property
    def val(self) -> Store | TokenStore | None:
        return self.stores[self.k][1] if self.active else None

    @property
    def forward(self) -> nn.Module:
        """What a cached training step calls: `top`, with several ranks in a DDP wrapper for the parameters
        trainable now, compiled under `train.compile` (a later phase's top is most of the model). Built at its first
        use after a change (`rewrap`), which every rank reaches at the same step."""
        if self._forward is None:
            assert self.top is not None
            wrapped = self.dist.wrap(self.top, self.parts.device)
            self._forward = torch.compile(wrapped) if self.parts.compiled else wrapped  # `train.compile`
        return self._forward

    def rewrap(self) -> None:
        """The trainable set or the boundary changed: DDP's hooks are registered anew at the next cached step."""
        self._forward = None

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
        if self.dist.active and isinstance(split, DecoderSplit):
            return -1, "several ranks: a causal LM's token rows are not gathered across ranks"
        params = dict(self.parts.model.named_parameters())
        names = {id(m): n for n, m in self.parts.model.named_modules()}
        for i, seg in enumerate(split.segments):
            trains = next((n for n in sorted(seg.params) if params[n].requires_grad), None)
            random = "" if trains else _random_module(seg.modules, names)
            if trains or random:
                if i > 0:
                    return i - 1, ""
                return -1, (random or f"the lowest layers ({seg.name}) train: no frozen part to cache")
        return len(split.segments) - 1, ""  # an HF model frozen whole: its pooler / final norm and head run

    def _later_boundaries(self, k: int, phase: int, epoch: int) -> list[int]:
        """The boundaries of the phases after `phase` (below k), nearest first: stored in the same pass, so an
        unfreeze switches to the activations one boundary lower instead of running the frozen part again. With
        the `epochs` trigger, only the phases that start within the epoch budget."""
        own = {g.name: set(g.trained) for g in self.parts.groups}  # under LoRA: the adapters (not a frozen LM head)
        later = self.parts.phases[phase + 1 :]
        cfg = self.profile.strategy
        if cfg.trigger == "epochs":
            later = later[: max(0, math.ceil((self.profile.train.epochs - epoch) / cfg.every_epochs) - 1)]
        out: list[int] = []
        for groups in later:
            trainable = set().union(*(own[g] for g in groups))
            first = next(
                (i for i, seg in enumerate(self.split.segments) if seg.params & trainable), len(self.split.segments)
            )
            if 0 <= first - 1 < k and first - 1 not in out:
                out.append(first - 1)
        return out

    def refresh(self, phase: int, epoch: int, progress: Callable[..., None]) -> tuple[bool, str]:
        """Build, keep, switch or drop the cache for the current phase. (changed, detail for the event)."""
        k, reason = self.plan()
        if self.active and k == self.k:
            return False, ""
        if k in self.stores:
            return True, self._use(k)
        was = self.boundary
        self.drop()
        if k < 0:
            return True, f"not used: {reason}" if not was else f"dropped: {reason}"
        t0 = time.perf_counter()
        reason, lower = self._build([k, *self._later_boundaries(k, phase, epoch)], progress)
        while reason and lower and k > 0:  # something random at k (e.g. timm's head dropout): one segment lower
            k -= 1
            reason, lower = self._build([k, *self._later_boundaries(k, phase, epoch)], progress)
        if reason:
            return True, f"not used: {reason}"
        size = sum(t.nbytes + v.nbytes for t, v in self.stores.values()) / 1e6
        later = [self.split.segments[b].name for b in sorted(self.stores, reverse=True) if b != k]
        also = f"; also stored for later phases: {', '.join(later)}" if later else ""
        train, val = self.stores[k]
        shard = f" (a shard of {self.dist.world})" if self.dist.active else ""
        return True, (
            f"output of {self.boundary} cached ({len(train)} train, {len(val)} val{shard}, "
            f"{size:.1f} MB on {train.feats.device.type}, built in {time.perf_counter() - t0:.1f}s{also}): "
            f"only the layers above it run"
        )

    def on_unfreeze(self) -> str:
        """After groups were unfrozen: "" when the cached boundary still holds; else what changed (switched to
        activations stored one boundary lower, or dropped until the next epoch), for the event."""
        if not self.active:
            return ""
        k, _ = self.plan()
        if k == self.k:
            return ""
        if k in self.stores:
            return self._use(k)
        was = self.boundary
        self.drop()
        return f"dropped: the layers up to {was} are no longer all frozen; rebuilt at the next epoch"

    def _use(self, k: int) -> str:
        for b in [b for b in self.stores if b > k]:  # boundaries above k are never used again
            del self.stores[b]
        self.k, self.top = k, _Top(self.split, k)
        self.rewrap()
        return f"output of {self.boundary} cached (stored in the first pass): only the layers above it run"

    def drop(self) -> None:
        self.stores = {}
        self.top = None
        self.k = -1
        self.rewrap()

    # ---------------------------------------------------------------------------------------------- building
    def _loader(self, dataset: Any) -> Any:
        from torch.utils.data import DataLoader

        tl = self.parts.train_loader
        # Token batches are padded to their longest row, which the frozen blocks then run over: a decoder builds at
        # the training batch size (fewer padded tokens than in a batch of 64), anything else in 64s.
        size = (tl.batch_size or 64) if isinstance(self.split, DecoderSplit) else max(64, tl.batch_size or 64)
        return DataLoader(dataset, batch_size=size, shuffle=False, collate_fn=tl.collate_fn)

    def _build(self, ks: list[int], progress: Callable[..., None]) -> tuple[str, bool]:
        """`_checked_build` without touching the random number generators: a DataLoader draws its workers' seed
        from the global one, so the run's dropout masks would differ from an uncached (or resumed) run's."""
        devices = [self.parts.device] if self.parts.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self._checked_build(ks, progress)

    def _checked_build(self, ks: list[int], progress: Callable[..., None]) -> tuple[str, bool]:
        """Check the split at each boundary on a real batch, that it repeats, that it fits; then store train and
        val at every boundary that fits (ks[0], the current one, first). ("", _) when built, else (why not,
        whether a lower boundary may still do)."""
        p, split, k = self.parts, self.split, ks[0]
        probe = torch.utils.data.Subset(p.bundle.train, range(min(8, len(p.bundle.train))))
        x0 = to_device(next(iter(self._loader(probe)))[0], p.device)
        where: tuple[torch.device, int] | tuple[str, bool]  # (where, how many fit), or (why not, lower may do)
        with p.autocast():
            first, second = split.prefixes(x0, ks), split.prefixes(x0, ks)
            where = (
                f"the frozen layers up to {split.segments[k].name} give different outputs for the same batch "
                f"(dropout or another random op; see strategy.freeze_dropout)",
                True,
            )
            if all(torch.allclose(first[b].float(), second[b].float(), rtol=1e-6, atol=1e-6) for b in ks):
                where = (next((why for why in (verify(split, x0, b) for b in ks) if why), ""), False)
        if not where[0]:
            n = len(p.bundle.train) + len(self._shard(p.bundle.val))
            sized = self._sized([split.top_input(first[b], x0) for b in ks], n, split.segments[k].name)
            where = (sized, False) if isinstance(sized, str) else sized
        # every rank takes the same decision: the first rank's reason not to, else the boundaries all can keep
        verdicts = self.dist.gather_objects(where if isinstance(where[0], str) else where[1])
        why = next((v for v in verdicts if isinstance(v, tuple)), None)
        if why is not None:
            return why
        device, fits = where[0], min(verdicts)
        ks = ks[:fits]
        train = self._store(p.bundle.train, ks, device, progress, f"{split.segments[k].name} (train)")
        if self.dist.active:
            train = {b: gather_store(store, len(p.bundle.train), self.dist) for b, store in train.items()}
        val = self._store(p.bundle.val, ks, device, progress, f"{split.segments[k].name} (val)")
        self.stores = {b: (train[b], val[b]) for b in ks}
        self.k, self.top = k, _Top(split, k)
        self.rewrap()
        return "", False

    def _shard(self, dataset: Any) -> Any:
        """This rank's samples r, r+W, ... (the whole set in one process); for val, its `shards.EvalShard`."""
        if not self.dist.active:
            return dataset
        return torch.utils.data.Subset(dataset, range(self.dist.rank, len(dataset), self.dist.world))

    def _sized(self, probes: list[Any], n: int, name: str) -> tuple[torch.device, int] | str:
        """Where the activations go (the run's device, else host memory) and how many of the boundaries fit
        there (the current one at least), or why even that one fits nowhere."""
        need = [per_sample(a) * n * 1.1 for a in probes]
        cfg = self.profile.train.cache_memory_gb
        devices = [self.parts.device] + ([torch.device("cpu")] if self.parts.device.type == "cuda" else [])
        budget = 0.0
        for device in devices:
            budget = self.budget(device)
            total, fits = 0.0, 0
            for size in need:
                if total + size > budget:
                    break
                total, fits = total + size, fits + 1
            if fits:
                return device, fits
        key = "train.cache_memory_gb" if cfg > 0 else "half the available memory; set train.cache_memory_gb"
        return (
            f"the output of {name} would take {need[0] / 1e9:.2f} GB, over the budget of {budget / 1e9:.2f} GB ({key})"
        )

    def budget(self, device: torch.device) -> float:
        """Bytes the activations may take on `device`: `train.cache_memory_gb`, else half of what is available."""
        cfg = self.profile.train.cache_memory_gb
        return cfg * 1e9 if cfg > 0 else 0.5 * available(device)

    def stored_bytes(self, x: Any, ks: list[int]) -> dict[int, int]:
        """What the train and val activations at each boundary in `ks` would take once stored, from a batch `x`
        (the memory plan counts them before the cache is built)."""
        n = len(self.parts.bundle.train) + len(self._shard(self.parts.bundle.val))
        with torch.no_grad(), self.parts.autocast():
            acts = self.split.prefixes(x, ks)
        return {k: int(per_sample(self.split.top_input(acts[k], x)) * n) for k in ks}

    def _store(
        self, dataset: Any, ks: list[int], where: torch.device, progress: Callable[..., None], label: str
    ) -> dict[int, Any]:
        p, split = self.parts, self.split
        loader = self._loader(self._shard(dataset))
        total, t0, last = len(loader), time.perf_counter(), 0.0
        parts: dict[int, Rows | TokenRows] = {b: TokenRows() if isinstance(split, DecoderSplit) else Rows() for b in ks}
        for i, (x, y) in enumerate(loader, start=1):
            x, y = to_device(x, p.device), y.to(p.device)
            with p.autocast():
                acts = split.prefixes(x, ks)
            for b in ks:
                parts[b].add(split.top_input(acts[b], x), y, where)
            now = time.perf_counter()
            if now - last >= 0.25 or i == total:
                last = now
                progress(
                    task="cache",
                    detail=label,
                    done=i,
                    total=total,
                    unit="batches",
                    rate=i / max(now - t0, 1e-9),
                    finished=i == total,
                )
        return {b: part.store() for b, part in parts.items()}

    # --------------------------------------------------------------------------------------------- batches
    def batches(self) -> Iterator[tuple[Any, torch.Tensor, bool]]:
        """Train batches in the loader's shuffled order (its batch sampler draws from the same generator), as
        (x, y, cached). Should the cache be dropped mid-epoch (an unfreeze), the rest of the epoch's batches are
        read from the dataset instead, in the same order."""
        dataset, loader = self.parts.bundle.train, self.parts.train_loader
        if loader.generator is not None:  # what DataLoader.__iter__ draws first (its workers' base seed), so the
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # shuffle below is the same
        for indices in loader.batch_sampler:
            store = self.train
            if store is not None:
                x, y = store.batch(indices, self.parts.device)
                yield x, y, True
            else:
                x, y = loader.collate_fn([dataset[i] for i in indices])
                yield x, y, False

    def val_batches(self, batch_size: int = 256) -> list[tuple[Any, torch.Tensor]]:
        """The val split's stored activations in order. Draws the one random number a pass over the val loader
        draws (its workers' base seed, from the global generator), so later dropout masks stay the uncached run's."""
        torch.empty((), dtype=torch.int64).random_(generator=self.parts.val_loader.generator)
        store = self.val
        assert store is not None, "val_batches: called with no val store (the loop asks only when the cache is on)"
        n = len(store)
        return [store.batch(list(range(i, min(i + batch_size, n))), self.parts.device) for i in range(0, n, batch_size)]


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
