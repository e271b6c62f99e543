"""The feature cache kept in step with the run (`CacheKeeper`): built, kept or dropped at each epoch start, moved
when the trainable set changes, and each change said once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tuitune.engine.events import Event, FeatureCacheChanged, SetupProgressed

if TYPE_CHECKING:
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.trainer_state import TrainerState

Emit = Callable[[Event], None]


class CacheKeeper:
    """Keeps the feature cache in step with the run: built, kept or dropped at each epoch start, moved when the
    trainable set changes, and each change said once (`FeatureCacheChanged`; an unchanged reason is not repeated
    every epoch)."""

    def __init__(self, cache: FeatureCache, st: TrainerState, emit: Emit) -> None:
        self.cache, self.st, self.emit = cache, st, emit
        self._said = ""  # the last FeatureCacheChanged detail

    def refresh(self) -> None:
        """Build the feature cache at the boundary this phase allows, keep it, or drop it; say why when unused."""
        changed, detail = self._refresh()
        if changed and detail != self._said:
            self._say(detail)

    def _refresh(self) -> tuple[bool, str]:
        return self.cache.refresh(self.st.phase, self.st.epoch, lambda **kw: self.emit(SetupProgressed(**kw)))

    def trainable_changed(self) -> None:
        """The trainable set changed (a phase, or a group steered by hand): DDP wrappers for the cached top's new
        trainable set, and the cache moved to activations stored one boundary lower, or dropped until the next
        epoch start rebuilds it."""
        self.cache.rewrap()
        detail = self.cache.on_unfreeze()
        if detail:
            self._say(detail)

    def drop(self) -> None:
        """The weights the cached features came from changed: dropped now, built again at the next epoch start."""
        if self.cache.active:
            was = self.cache.boundary
            self.cache.drop()
            self._say(f"dropped: the weights below {was} changed; rebuilt at the next epoch")

    def rebuild(self) -> None:
        """The features went stale (AdaBN changed the statistics they were computed with): built again now."""
        if self.cache.active:
            boundary = self.cache.boundary
            self.cache.drop()
            changed, detail = self._refresh()  # its progress is shown; the same boundary again is no news
            if changed and (not self.cache.active or self.cache.boundary != boundary):
                self._say(detail)

    def _say(self, detail: str) -> None:
        self._said = detail
        self.emit(
            FeatureCacheChanged(
                active=self.cache.active, detail=detail, epoch=self.st.epoch, global_step=self.st.global_step
            )
        )
