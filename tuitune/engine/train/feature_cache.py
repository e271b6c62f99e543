"""The feature cache: while only the classifier trains, the frozen backbone's output never changes, so it is
computed once and the head trains on stored features (a linear probe at the speed of a matmul).

Used only when that is exactly true: the trainable groups are the head alone and the head is the classifier alone
(`heads.classifier_only_head`), frozen BatchNorm stays in eval mode, and nothing random sits before the classifier
(no train-time augmentation, Mixup, dropout or drop-path, distillation). It is dropped as soon as a group is
unfrozen. Batches follow the train loader's own sampler, so the shuffle is the same as without the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

from tuitune.engine.model.heads import classifier, classifier_only_head, pre_logits
from tuitune.engine.data.batches import to_device

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts


def why_not(profile: RunProfile, parts: RunParts, trainable: tuple[str, ...]) -> str:
    """"" when the cache can be used for this phase, else the reason it cannot (for the event log)."""
    head = parts.groups[-1].name
    reasons = [
        (not profile.train.feature_cache, "train.feature_cache is off"),
        (tuple(trainable) != (head,), "layer groups below the head train"),
        (not classifier_only_head(parts.backbone), "the head group holds more than the classifier"),
        (not profile.strategy.freeze_bn, "strategy.freeze_bn is off"),
        (profile.augment.train_transform != "eval" or profile.augment.mixup or profile.augment.cutmix,
         "train-time augmentation is on"),
        (_dropout(profile), "dropout is on"),
        (bool(profile.distill.teacher), "distillation is on"),
    ]
    return next((why for cond, why in reasons if cond), "")


def _dropout(profile: RunProfile) -> bool:
    """Dropout set as a regularization key or passed straight to timm through `model.kwargs`."""
    kwargs, reg = profile.model.kwargs, profile.regularization
    return bool(reg.drop_rate or reg.drop_path_rate or kwargs.get("drop_rate") or kwargs.get("drop_path_rate"))


class FeatureCache:
    def __init__(self, parts: RunParts) -> None:
        self.parts = parts
        self.train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.train_head: torch.nn.Module | None = None  # what training steps call: the head, DDP-wrapped

    @property
    def active(self) -> bool:
        return self.train is not None

    @property
    def head(self) -> torch.nn.Module:
        return classifier(self.parts.model)

    @torch.no_grad()
    def _features(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-logits of a whole split, in dataset order, stored on the device."""
        from torch.utils.data import DataLoader

        p = self.parts
        feats, labels = [], []
        for x, y in DataLoader(dataset, batch_size=max(64, p.train_loader.batch_size or 64), shuffle=False):
            with p.autocast():
                feats.append(pre_logits(p.model, to_device(x, p.device)).float())
            labels.append(y.to(p.device))
        return torch.cat(feats), torch.cat(labels)

    def build(self) -> None:
        """One forward pass over train and val with the model as it trains (frozen BN in eval). Each rank keeps
        its own cache: the whole train split (its batches index into it) and its shard of val (summed over
        ranks by the evaluation). The head trains through a DDP wrapper of its own, so its gradients are
        all-reduced as the whole model's are."""
        from torch.utils.data import Subset

        from tuitune.engine.data.shards import EvalShard

        p = self.parts
        val = p.bundle.val
        if p.dist.active:
            val = Subset(val, EvalShard(len(val), p.dist.rank, p.dist.world).indices)
        self.train = self._features(p.bundle.train)
        self.val = self._features(val)
        self.train_head = p.dist.wrap(self.head, p.device)

    def drop(self) -> None:
        self.train = self.val = None
        self.train_head = None

    def batches(self) -> Iterator[tuple[Any, torch.Tensor, bool]]:
        """Train batches in the loader's shuffled order (its batch sampler draws from the same generator), as
        (x, y, cached). Should the cache be dropped mid-epoch (an unfreeze), the rest of the epoch's batches are
        read from the dataset instead, in the same order."""
        from torch.utils.data import default_collate

        dataset, loader = self.parts.bundle.train, self.parts.train_loader
        if loader.generator is not None:  # what DataLoader.__iter__ draws first (its workers' base seed), so the
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # shuffle below is the same
        for indices in loader.batch_sampler:
            if self.train is not None:
                feats, labels = self.train
                index = torch.as_tensor(indices, device=feats.device)
                yield feats[index], labels[index], True
            else:
                x, y = default_collate([dataset[i] for i in indices])
                yield x, y, False

    def val_batches(self, batch_size: int = 1024) -> list[tuple[torch.Tensor, torch.Tensor]]:
        feats, labels = self.val  # type: ignore[misc]
        return [(feats[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]
