"""What a checkpoint holds of a run's state, and how it comes back: `Checkpointer`, given the `TrainerState` it
writes and restores.

Whatever `snapshot()` saves, `resume_from()` restores; `save()` writes it (rank 0 alone, never over a good
checkpoint with non-finite weights). Kept apart from `trainer_state.py` so the state's bookkeeping and its
persistence read apart; the file format is `record.checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuitune.engine.events import CheckpointSaved, Event, Warned, renamed_keys
from tuitune.engine.record import checkpoint
from tuitune.engine.train.guards import all_finite
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.engine.train.phase_best import PhaseBest
    from tuitune.engine.train.tasks import TaskObjective
    from tuitune.engine.train.trainer_state import TrainerState


class Checkpointer:
    """Saves `state` as `ckpt_dir/<tag>.*` and restores it from a run's `last` (see the module). `objective`: its
    EMA model, when it has one, is saved and restored with the state. Remembers what it saved (`saved`,
    `saved_at`) and what resuming found worth a warning (`notes`, for `RunStarted`)."""

    def __init__(
        self,
        state: TrainerState,
        ckpt_dir: Path,
        emit: Callable[[Event], None],
        objective: TaskObjective | None = None,
        phase_best: PhaseBest | None = None,
    ) -> None:
        self.state, self.ckpt_dir, self.emit, self.objective = state, ckpt_dir, emit, objective
        self.phase_best = phase_best  # each phase's best weights: its watches travel with the state
        self.saved: dict[str, str] = {}
        self.saved_at: dict[str, tuple[int, int]] = {}  # tag -> (epoch, step in epoch) of its last save
        self.notes: list[str] = []

    def paths(self) -> dict[str, str]:
        """The checkpoints this run saved, by tag (`RunFinished.checkpoints`)."""
        return dict(self.saved)

    def note(self) -> str:
        """Where the run can continue from, for failure messages."""
        if "last" not in self.saved_at:
            return "no checkpoint was saved yet"
        epoch, step = self.saved_at["last"]
        at = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        return f"the last checkpoint ({self.ckpt_dir / 'last.safetensors'}, {at}) is intact"

    def snapshot(self, epoch_sums: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint holds. `epoch_sums`: the mid-epoch train sums (several ranks: already summed over
        them, so a resumed rank 0 carries the whole partial epoch); this rank's own when not given."""
        st, parts = self.state, self.state.parts
        if epoch_sums is None and st.step_in_epoch:
            epoch_sums = st.epoch_sums.state_dict()
        return {
            "epoch": st.epoch,
            "global_step": st.global_step,
            "step_in_epoch": st.step_in_epoch,
            "phase": st.phase,
            "phase_start_epoch": st.phase_start_epoch,
            "trainable": list(st.trainable),
            "phase_groups": list(parts.phases[st.phase]),
            "group_scale": dict(st.group_scale),
            "in_optimizer": list(st.in_optimizer),
            "optimizer": checkpoint.optimizer_state_by_name(st.optimizer),
            **checkpoint.rng_state(),
            "epoch_gen_state": self._loader_gen_state(),
            "history": st.history,
            "per_class": st.per_class,
            "class_report": st.class_report,
            "phase_log": st.phase_log,
            "wall_s": st.elapsed(),
            "classes": list(parts.bundle.classes),
            "skipped_steps": st.guard.skipped,
            "epoch_sums": epoch_sums if st.step_in_epoch else None,
            "schedule": st.schedule.state_dict(),
            "lr_scale": st.lr_scale,
            "ema": self._ema_state(),
            "world_size": parts.dist.world,
            "global_batch": st.global_batch(),
            "watches": {"best": st.best.to_dict(), "plateau": st.plateau.to_dict(), "early": st.early.to_dict()},
            "phase_best": self.phase_best.state_dict() if self.phase_best is not None else None,
        }

    def _loader_gen_state(self) -> torch.Tensor | None:
        """The shuffle generator's state for resuming: mid-epoch, the state at the epoch's start (the epoch is
        replayed up to where it stopped); on an epoch boundary, the state now, which the next epoch starts from.
        (Saving the epoch's start state there too would make a resumed run repeat the last epoch's order.)"""
        gen = getattr(self.state.parts.train_loader, "generator", None)
        if self.state.step_in_epoch or gen is None:
            return self.state.epoch_gen_state
        return gen.get_state()

    def save(self, tag: str, *, ema: bool = False) -> Path | None:
        """Write checkpoint `tag`, unless the weights hold NaN/inf: a good checkpoint is never replaced by a
        poisoned model (then a `Warned` event says so and None is returned). `ema`: the EMA model's weights
        (`train.ema_for_best`), which then become the test's and the export's; the state is the run's. Rank 0
        owns the run directory: the other ranks of a multi-rank run only note the position."""
        st, dist = self.state, self.state.parts.dist
        sums = st.epoch_sums.state_dict(dist.sum) if dist.active and st.step_in_epoch else None  # all ranks
        if not dist.is_main:
            self.saved_at[tag] = (st.epoch, st.step_in_epoch)
            return None
        model = self.objective.ema.module if ema and self.objective and self.objective.ema else st.parts.model
        if not all_finite(model):
            self.emit(
                Warned(
                    message=f"not saving the {tag} checkpoint: the weights hold NaN/inf values; "
                    f"checkpoints/{tag}.* keep their previous contents",
                    epoch=st.epoch,
                    global_step=st.global_step,
                    kind="nonfinite",
                )
            )
            return None
        path = checkpoint.save_checkpoint(self.ckpt_dir, tag, model, self.snapshot(sums))
        self.saved[tag] = str(path)
        self.saved_at[tag] = (st.epoch, st.step_in_epoch)
        self.emit(CheckpointSaved(path=str(path), kind=tag, epoch=st.epoch, global_step=st.global_step))
        return path

    def has(self, tag: str) -> bool:
        return (self.ckpt_dir / f"{tag}.safetensors").exists()

    def load_best_weights(self) -> None:
        checkpoint.load_weights(self.state.parts.model, self.ckpt_dir / "best.safetensors")

    def resume_from(self, run_dir: Path) -> None:
        """Restore exactly the position, phase, trainable mask, optimizer groups and state, and RNG of `last`."""
        ckpt = run_dir / "checkpoints"
        weights, saved = checkpoint.open_checkpoint(ckpt, "last")
        self._check_resumable(run_dir, saved)
        checkpoint.load_weights(self.state.parts.model, weights)
        self._restore(run_dir, saved)
        checkpoint.set_rng_state(saved)
        self.saved = {t: str(ckpt / f"{t}.safetensors") for t in ("best", "last") if self.has(t)}
        self.saved_at["last"] = (self.state.epoch, self.state.step_in_epoch)

    def _restore(self, run_dir: Path, saved: dict[str, Any]) -> None:
        """Set the state from a checkpoint's `snapshot()` (the weights are already loaded)."""
        st = self.state
        st.epoch = saved["epoch"]
        st.restore_trainable(  # as the run left it, hand-made changes included
            saved["trainable"],
            {str(k): float(v) for k, v in saved.get("group_scale", {}).items()},
            saved["in_optimizer"],
        )
        checkpoint.load_optimizer_state_by_name(st.optimizer, saved["optimizer"])
        st.global_step, st.phase = saved["global_step"], saved["phase"]
        st.phase_start_epoch = saved["phase_start_epoch"]
        st.skip_steps = st.step_in_epoch = self._resumed_step(run_dir, saved)
        st.history = [renamed_keys(row) for row in saved["history"]]  # a checkpoint from before `*_score`
        st.per_class, st.phase_log = saved["per_class"], [renamed_keys(e) for e in saved["phase_log"]]
        st.class_report = saved.get("class_report") or {}  # absent from checkpoints before macro-F1
        st.wall_before = saved["wall_s"]
        st.epoch_gen_state = saved["epoch_gen_state"]
        gen = getattr(st.parts.train_loader, "generator", None)
        if gen is not None and st.epoch_gen_state is not None:
            gen.set_state(st.epoch_gen_state)  # the next epoch's shuffle (replayed from its start if mid-epoch)
        st.resumed_sums = saved.get("epoch_sums") if st.parts.dist.is_main else None  # global sums: once
        st.schedule.load_state_dict(saved["schedule"])
        st.lr_scale = saved["lr_scale"]
        if saved.get("ema") is not None and self.objective is not None and self.objective.ema is not None:
            self.objective.ema.module.load_state_dict(saved["ema"])
        st.guard.skipped = int(saved.get("skipped_steps", 0))
        for name, watch in (("best", st.best), ("plateau", st.plateau), ("early", st.early)):
            watch.load(saved["watches"][name])
        if self.phase_best is not None and saved.get("phase_best") is not None:  # absent before phase bests
            self.phase_best.load_state_dict(saved["phase_best"])

    def _resumed_step(self, run_dir: Path, saved: dict[str, Any]) -> int:
        """The step within the epoch to continue after. Another world size (or global batch) than the run was
        saved with still continues, with a warning: the global batches differ, so the data order is not the
        one an unbroken run would have seen; mid-epoch, the examples already seen are skipped as nearly as whole
        new batches allow."""
        step, world, batch = saved["step_in_epoch"], self.state.parts.dist.world, self.state.global_batch()
        old_world, old_batch = saved.get("world_size", 1), saved.get("global_batch", batch)
        if old_batch == batch:
            return step
        self.notes.append(
            f"{run_dir}: --resume on {world} rank(s); the run was saved on {old_world} "
            f"(global batch {old_batch} -> {batch}): it continues, but the data order "
            f"differs from an unbroken run"
        )
        return step * old_batch // batch

    def _ema_state(self) -> dict[str, Any] | None:
        ema = self.objective.ema if self.objective is not None else None
        return {k: v.detach().cpu() for k, v in ema.module.state_dict().items()} if ema is not None else None

    def _check_resumable(self, run_dir: Path, saved: dict[str, Any]) -> None:
        """Refuse, in one line, a profile that cannot continue this run: other classes or another phase plan.
        (A `model.weights` file with another head is fine: the head is re-created. A resumed run is not: its
        head, optimizer state and metrics all belong to the classes it was trained on.)"""
        parts = self.state.parts
        classes, now = saved.get("classes"), list(parts.bundle.classes)
        if classes is not None and list(classes) != now:
            raise UserError(
                f"{run_dir}: --resume: the run was trained on {len(classes)} classes ({_names(classes)}) but this "
                f"profile's data has {len(now)} ({_names(now)}); resume with the run's own data, or start a new run "
                f'with model.weights = "{run_dir / "checkpoints" / "last.safetensors"}"'
            )
        phase, phases = saved["phase"], parts.phases
        planned = saved.get("phase_groups", saved["trainable"])  # before per-group steering: the same list
        known = {g.name for g in parts.groups}
        if phase >= len(phases) or tuple(planned) != tuple(phases[phase]) or not set(saved["trainable"]) <= known:
            raise UserError(
                f"{run_dir}: --resume: the run stopped in phase {phase + 1} training {', '.join(planned)}, "
                f"which this profile's strategy does not plan ({len(phases)} phase(s)); resume with the run's own "
                f"strategy settings"
            )


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(str(c) for c in items[:limit])
    return shown + (", ..." if len(items) > limit else "")
