"""What a checkpoint holds of a run's state, and how it comes back: `TrainerState`'s checkpoint round trip.

Whatever `snapshot()` saves, `resume_from()` restores; `save()` writes it (rank 0 alone, never over a good
checkpoint with non-finite weights). A base class of `TrainerState` (`trainer_state.py`), whose attributes these
methods read and set; kept in a module of its own so the state's bookkeeping and its persistence read apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuitune.engine.events import CheckpointSaved, Warned, renamed_keys
from tuitune.engine.record import checkpoint
from tuitune.engine.train import strategy
from tuitune.engine.train.guards import all_finite
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.guards import NonFiniteGuard
    from tuitune.engine.train.objective import Objective
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.running_sums import RunningSums
    from tuitune.engine.train.schedule import LRSchedule
    from tuitune.engine.train.watch import MetricWatch


class CheckpointedState:
    """The checkpoint half of `TrainerState` (see the module): the attributes below are set by its `__init__`, and
    `elapsed`, `global_batch`, `_set_trainable`, `_param_groups` are its methods."""

    parts: RunParts
    profile: RunProfile
    emit: Any
    objective: Objective | None
    ckpt_dir: Path
    epoch: int
    global_step: int
    step_in_epoch: int
    skip_steps: int
    phase: int
    phase_start_epoch: int
    wall_before: float
    trainable: tuple[str, ...]
    group_scale: dict[str, float]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    lr_scale: float
    guard: NonFiniteGuard
    epoch_sums: RunningSums
    best: MetricWatch
    plateau: MetricWatch
    early: MetricWatch
    history: list[dict[str, float]]
    per_class: dict[str, float]
    class_report: dict[str, dict[str, float]]
    phase_log: list[dict[str, Any]]
    saved: dict[str, str]
    saved_at: dict[str, tuple[int, int]]
    notes: list[str]
    _in_optimizer: list[str]
    _epoch_gen_state: torch.Tensor | None
    _resumed_sums: dict[str, Any] | None

    def checkpoint_paths(self) -> dict[str, str]:
        return dict(self.saved)

    def checkpoint_note(self) -> str:
        """Where the run can continue from, for failure messages."""
        if "last" not in self.saved_at:
            return "no checkpoint was saved yet"
        epoch, step = self.saved_at["last"]
        at = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        return f"the last checkpoint ({self.ckpt_dir / 'last.safetensors'}, {at}) is intact"

    def snapshot(self, epoch_sums: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint holds. `epoch_sums`: the mid-epoch train sums (several ranks: already summed over
        them, so a resumed rank 0 carries the whole partial epoch); this rank's own when not given."""
        if epoch_sums is None and self.step_in_epoch:
            epoch_sums = self.epoch_sums.state_dict()
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "phase": self.phase,
            "phase_start_epoch": self.phase_start_epoch,
            "trainable": list(self.trainable),
            "phase_groups": list(self.parts.phases[self.phase]),
            "group_scale": dict(self.group_scale),
            "in_optimizer": list(self._in_optimizer),
            "optimizer": checkpoint.optimizer_state_by_name(self.optimizer),
            **checkpoint.rng_state(),
            "epoch_gen_state": self._loader_gen_state(),
            "history": self.history,
            "per_class": self.per_class,
            "class_report": self.class_report,
            "phase_log": self.phase_log,
            "wall_s": self.elapsed(),
            "classes": list(self.parts.bundle.classes),
            "skipped_steps": self.guard.skipped,
            "epoch_sums": epoch_sums if self.step_in_epoch else None,
            "schedule": self.schedule.state_dict(),
            "lr_scale": self.lr_scale,
            "ema": self._ema_state(),
            "world_size": self.parts.dist.world,
            "global_batch": self.global_batch(),
            "watches": {"best": self.best.to_dict(), "plateau": self.plateau.to_dict(), "early": self.early.to_dict()},
        }

    def _loader_gen_state(self) -> torch.Tensor | None:
        """The shuffle generator's state for resuming: mid-epoch, the state at the epoch's start (the epoch is
        replayed up to where it stopped); on an epoch boundary, the state now, which the next epoch starts from.
        (Saving the epoch's start state there too would make a resumed run repeat the last epoch's order.)"""
        gen = getattr(self.parts.train_loader, "generator", None)
        if self.step_in_epoch or gen is None:
            return self._epoch_gen_state
        return gen.get_state()

    def save(self, tag: str, *, ema: bool = False) -> Path | None:
        """Write checkpoint `tag`, unless the weights hold NaN/inf: a good checkpoint is never replaced by a
        poisoned model (then a `Warned` event says so and None is returned). `ema`: the EMA model's weights
        (`train.ema_for_best`), which then become the test's and the export's; the state is the run's. Rank 0
        owns the run directory: the other ranks of a multi-rank run only note the position."""
        dist = self.parts.dist
        sums = self.epoch_sums.state_dict(dist.sum) if dist.active and self.step_in_epoch else None  # all ranks
        if not dist.is_main:
            self.saved_at[tag] = (self.epoch, self.step_in_epoch)
            return None
        model = self.objective.ema.module if ema and self.objective and self.objective.ema else self.parts.model
        if not all_finite(model):
            self.emit(
                Warned(
                    message=f"not saving the {tag} checkpoint: the weights hold NaN/inf values; "
                    f"checkpoints/{tag}.* keep their previous contents",
                    epoch=self.epoch,
                    global_step=self.global_step,
                    kind="nonfinite",
                )
            )
            return None
        path = checkpoint.save_checkpoint(self.ckpt_dir, tag, model, self.snapshot(sums))
        self.saved[tag] = str(path)
        self.saved_at[tag] = (self.epoch, self.step_in_epoch)
        self.emit(CheckpointSaved(path=str(path), kind=tag, epoch=self.epoch, global_step=self.global_step))
        return path

    def has_checkpoint(self, tag: str) -> bool:
        return (self.ckpt_dir / f"{tag}.safetensors").exists()

    def load_best_weights(self) -> None:
        checkpoint.load_weights(self.parts.model, self.ckpt_dir / "best.safetensors")

    def resume_from(self, run_dir: Path) -> None:
        """Restore exactly the position, phase, trainable mask, optimizer groups and state, and RNG of `last`."""
        ckpt = run_dir / "checkpoints"
        weights, saved = checkpoint.open_checkpoint(ckpt, "last")
        self._check_resumable(run_dir, saved)
        checkpoint.load_weights(self.parts.model, weights)
        self.epoch = saved["epoch"]
        self._set_trainable(saved["trainable"])  # as the run left it, hand-made changes included
        self.group_scale = {str(k): float(v) for k, v in saved.get("group_scale", {}).items()}
        missing = [n for n in saved["in_optimizer"] if n not in self._in_optimizer]
        strategy.add_groups(self.optimizer, self._param_groups(missing))
        self._in_optimizer.extend(missing)
        checkpoint.load_optimizer_state_by_name(self.optimizer, saved["optimizer"])
        self.global_step, self.phase = saved["global_step"], saved["phase"]
        self.phase_start_epoch = saved["phase_start_epoch"]
        self.skip_steps = self.step_in_epoch = self._resumed_step(run_dir, saved)
        self.history = [renamed_keys(row) for row in saved["history"]]  # a checkpoint from before `*_score`
        self.per_class, self.phase_log = saved["per_class"], [renamed_keys(e) for e in saved["phase_log"]]
        self.class_report = saved.get("class_report") or {}  # absent from checkpoints before macro-F1
        self.wall_before = saved["wall_s"]
        self._epoch_gen_state = saved["epoch_gen_state"]
        gen = getattr(self.parts.train_loader, "generator", None)
        if gen is not None and self._epoch_gen_state is not None:
            gen.set_state(self._epoch_gen_state)  # the next epoch's shuffle (replayed from its start if mid-epoch)
        self._resumed_sums = saved.get("epoch_sums") if self.parts.dist.is_main else None  # global sums: once
        self.schedule.load_state_dict(saved["schedule"])
        self.lr_scale = saved["lr_scale"]
        if saved.get("ema") is not None and self.objective is not None and self.objective.ema is not None:
            self.objective.ema.module.load_state_dict(saved["ema"])
        self.guard.skipped = int(saved.get("skipped_steps", 0))
        for name, watch in (("best", self.best), ("plateau", self.plateau), ("early", self.early)):
            watch.load(saved["watches"][name])
        checkpoint.set_rng_state(saved)
        self.saved = {t: str(ckpt / f"{t}.safetensors") for t in ("best", "last") if self.has_checkpoint(t)}
        self.saved_at["last"] = (self.epoch, self.step_in_epoch)

    def _resumed_step(self, run_dir: Path, saved: dict[str, Any]) -> int:
        """The step within the epoch to continue after. Another world size (or global batch) than the run was
        saved with still continues, with a warning: the global batches differ, so the data order is not the
        one an unbroken run would have seen; mid-epoch, the examples already seen are skipped as nearly as whole
        new batches allow."""
        step, world = saved["step_in_epoch"], self.parts.dist.world
        old_world, old_batch = saved.get("world_size", 1), saved.get("global_batch", self.global_batch())
        if old_batch == self.global_batch():
            return step
        self.notes.append(
            f"{run_dir}: --resume on {world} rank(s); the run was saved on {old_world} "
            f"(global batch {old_batch} -> {self.global_batch()}): it continues, but the data order "
            f"differs from an unbroken run"
        )
        return step * old_batch // self.global_batch()

    def _ema_state(self) -> dict[str, Any] | None:
        ema = self.objective.ema if self.objective is not None else None
        return {k: v.detach().cpu() for k, v in ema.module.state_dict().items()} if ema is not None else None

    def _check_resumable(self, run_dir: Path, saved: dict[str, Any]) -> None:
        """Refuse, in one line, a profile that cannot continue this run: other classes or another phase plan.
        (A `model.weights` file with another head is fine: the head is re-created. A resumed run is not: its
        head, optimizer state and metrics all belong to the classes it was trained on.)"""
        classes, now = saved.get("classes"), list(self.parts.bundle.classes)
        if classes is not None and list(classes) != now:
            raise UserError(
                f"{run_dir}: --resume: the run was trained on {len(classes)} classes ({_names(classes)}) but this "
                f"profile's data has {len(now)} ({_names(now)}); resume with the run's own data, or start a new run "
                f'with model.weights = "{run_dir / "checkpoints" / "last.safetensors"}"'
            )
        phase, phases = saved["phase"], self.parts.phases
        planned = saved.get("phase_groups", saved["trainable"])  # before per-group steering: the same list
        known = {g.name for g in self.parts.groups}
        if phase >= len(phases) or tuple(planned) != tuple(phases[phase]) or not set(saved["trainable"]) <= known:
            raise UserError(
                f"{run_dir}: --resume: the run stopped in phase {phase + 1} training {', '.join(planned)}, "
                f"which this profile's strategy does not plan ({len(phases)} phase(s)); resume with the run's own "
                f"strategy settings"
            )


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(str(c) for c in items[:limit])
    return shown + (", ..." if len(items) > limit else "")
