"""Phases that keep their best: the best weights of each phase, by `train.checkpoint_metric`, kept as
`checkpoints/phase-<N>.safetensors` (weights and BatchNorm statistics only), for `strategy.restore_best_phase`
(a phase hands on its best epoch's weights, not its last, as Lightning's finetuning-scheduler does) and for the
`RollBackPhase` command (a phase that made things worse is undone: the weights of the phase before's best come
back and the groups it unfroze are frozen again).

Only the current phase's file and the one before's are kept (a rollback goes back one phase; the run's own `best`
and `last` are untouched), so the files stay bounded whatever the number of phases. The watch of every phase
travels in the checkpoint (`state_dict`), the files sit beside it, so `--resume` restores and rolls back exactly as
the unbroken run would. Rank 0 writes; every rank reads, after a barrier.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuitune.engine.record.checkpoint import _link_over, atomic_write, load_weights
from tuitune.engine.train.watch import MetricWatch

if TYPE_CHECKING:
    from tuitune.engine.train.trainer_state import TrainerState


class PhaseBest:
    """Each phase's best weights for `state`'s run, in `ckpt_dir` (see the module)."""

    def __init__(self, state: TrainerState, ckpt_dir: Path) -> None:
        self.state, self.ckpt_dir = state, ckpt_dir
        self.metric = state.profile.train.checkpoint_metric
        self.up = state.best.score_higher
        self.watches: dict[int, MetricWatch] = {}  # phase index -> its best so far
        self.phase = state.phase  # the phase whose epochs the watch counts now

    def path(self, phase: int) -> Path:
        return self.ckpt_dir / f"phase-{phase + 1}.safetensors"

    def has(self, phase: int) -> bool:
        return phase in self.watches and self.watches[phase].best is not None and self.path(phase).exists()

    def after_epoch(self, watched: dict[str, float], best_file: Path | None) -> bool:
        """An epoch ended in the current phase: when it is the phase's best, its weights are kept (`best_file`: the
        run's `best` checkpoint just saved with these same weights, linked instead of written again). True when
        kept. Every rank calls it; rank 0 writes."""
        st = self.state
        self.phase = st.phase
        watch = self.watches.setdefault(st.phase, MetricWatch(self.metric, score_higher=self.up))
        if self.metric not in watched or not watch.update(watched[self.metric], st.epoch):
            return False
        if st.parts.dist.is_main:
            target = self.path(st.phase)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if best_file is not None and best_file.exists():
                _link_over(best_file, target)
            else:
                from safetensors.torch import save_model

                atomic_write(target, lambda tmp: save_model(st.parts.model, str(tmp)))
            self._prune()
        return True

    def _prune(self) -> None:
        """Keep the files of the current phase and the one before."""
        for path in self.ckpt_dir.glob("phase-*.safetensors"):
            number = path.stem.removeprefix("phase-")
            if number.isdigit() and int(number) - 1 < self.phase - 1:
                path.unlink(missing_ok=True)
                self.watches.pop(int(number) - 1, None)

    def restore(self, phase: int) -> set[str] | None:
        """Load `phase`'s best weights into the model; the names of the tensors (parameters and buffers) that
        changed, or None when that phase kept none (it ended before any of its epochs did, or its file went)."""
        st = self.state
        st.parts.dist.gather_objects(None)  # a barrier: rank 0 has written what the others read
        if not self.has(phase):
            return None
        before = {k: v.detach().clone() for k, v in st.parts.model.state_dict().items()}
        load_weights(st.parts.model, self.path(phase))
        after = st.parts.model.state_dict()
        return {k for k, v in before.items() if not torch.equal(v, after[k])}

    def rolled_back(self, to: int) -> None:
        """The run went back to phase `to`: its watch continues from its best; the undone phase's file goes."""
        undone = self.phase
        self.phase = to
        self.watches.pop(undone, None)
        if self.state.parts.dist.is_main and undone != to:
            self.path(undone).unlink(missing_ok=True)

    def best_epoch(self, phase: int) -> int | None:
        watch = self.watches.get(phase)
        return watch.best_epoch if watch is not None and watch.best is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "watches": {str(k): w.to_dict() for k, w in self.watches.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.phase = int(saved["phase"])
        self.watches = {}
        for key, value in saved["watches"].items():
            watch = MetricWatch(self.metric, score_higher=self.up)
            watch.load(value)
            self.watches[int(key)] = watch
