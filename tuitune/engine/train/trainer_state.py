"""The mutable state of a run: position, phase, optimizer, watches, history — and its checkpoint round trip.

Kept apart from the loop so that the loop reads as a loop, and so that what a checkpoint holds is written in one
place: whatever `snapshot()` saves, `resume_from()` restores.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from tuitune.engine.record import checkpoint
from tuitune.engine.train import strategy
from tuitune.engine.events import CheckpointSaved, LayerInfo, LayersChanged, Warned, renamed_keys
from tuitune.engine.train.guards import NonFiniteGuard, all_finite
from tuitune.engine.train.running_sums import RunningSums
from tuitune.engine.train.watch import MetricWatch
from tuitune.errors import UserError

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.objective import Objective
    from tuitune.engine.train.parts import RunParts


class TrainerState:
    def __init__(self, parts: RunParts, profile: RunProfile, run_dir: Path, emit: Callable,
                 objective: Objective | None = None) -> None:
        from tuitune.engine.train.scoring import Scorer
        from tuitune.engine.train.schedule import LRSchedule

        self.parts, self.profile, self.emit, self.objective = parts, profile, emit, objective
        scorer = objective.scorer if objective is not None else Scorer("class")
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.step_in_epoch = 0
        self.skip_steps = 0
        self.phase = 0
        self.phase_start_epoch = 0
        self.wall_before = 0.0
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self.per_class: dict[str, float] = {}
        self.class_report: dict[str, dict[str, float]] = {}  # last val epoch's per-class precision / recall / F1
        self.phase_log: list[dict[str, Any]] = []
        up = scorer.higher_is_better  # the `*_score` metrics carry the task's score (RMSE is lower-is-better)
        ema_best = profile.train.ema_for_best and profile.train.ema_decay > 0  # the EMA model's val metric
        self.best = MetricWatch(("ema_" if ema_best else "") + profile.train.checkpoint_metric, score_higher=up)
        self.plateau = MetricWatch(profile.strategy.plateau_metric, profile.strategy.plateau_min_delta, score_higher=up)
        es = profile.early_stopping
        self.early = MetricWatch(es.metric, es.min_delta, score_higher=up)
        self.schedule = LRSchedule(profile.train, parts.steps_per_epoch)
        # ApplyLR and the plan's per-phase LR scales (LP-FT) rescale every group's base LR, later groups included
        self.lr_scale = parts.plan.lr_scales[0]
        self.saved: dict[str, str] = {}
        self.saved_at: dict[str, tuple[int, int]] = {}  # tag -> (epoch, step in epoch) of its last save
        self.guard = NonFiniteGuard(profile.train.on_nonfinite, profile.train.max_skipped, parts.device)
        self.epoch_sums = RunningSums(parts.device, scorer)  # this epoch's train metrics, on the device
        self._resumed_sums: dict[str, Any] | None = None
        self._epoch_gen_state: torch.Tensor | None = None
        self._grad_norms: dict[str, float] = {}
        self._drift: dict[str, float] = {}
        self._params = dict(parts.model.named_parameters())  # looked up at every metric read: built once
        self._w0 = {n: p.detach().to("cpu", copy=True) for n, p in self._params.items()}
        self._in_optimizer: list[str] = []
        self.notes: list[str] = []  # warnings found while resuming, for RunStarted
        # The groups that train now: the phase's, as changed since by `SetGroupTrainable` (a phase change adds
        # the groups its phase adds; a group frozen by hand stays frozen). Per-group LR factors set by
        # `ScaleGroupLR`, for the groups that join the optimizer later (those in it carry theirs in `base_lr`).
        self.trainable: tuple[str, ...] = ()
        self.group_scale: dict[str, float] = {}
        self._bn = strategy.batchnorms_by_group(parts.model, parts.groups)
        self._set_trainable(parts.phases[0])
        self.optimizer = strategy.build_optimizer(
            self._param_groups(parts.phases[0]), name=profile.train.optimizer, lr=profile.train.lr,
            weight_decay=profile.train.weight_decay, momentum=profile.train.momentum)
        self._in_optimizer = list(parts.phases[0])
        self.phase_log.append(self._phase_entry(0))

    # ------------------------------------------------------------------------------------------- phases / LR
    def _param_groups(self, names: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        t, s = self.profile.train, self.profile.strategy
        groups = strategy.param_groups(self.parts.model, self.parts.groups, names, base_lr=t.lr * self.lr_scale,
                                       lr_decay=s.lr_decay, weight_decay=t.weight_decay)
        for g in groups:
            g["joined_step"] = self.global_step  # a newly unfrozen group may warm up on its own
            scale = self.group_scale.get(g["layer_group"], 1.0)
            g["base_lr"], g["lr"] = g["base_lr"] * scale, g["lr"] * scale
        return groups

    def _set_trainable(self, names: tuple[str, ...] | list[str]) -> None:
        """Make exactly `names` trainable (kept in the model's group order), with frozen BatchNorm (and, with
        `strategy.freeze_dropout`, frozen modules) in eval mode."""
        wanted = set(names)
        self.trainable = tuple(g.name for g in self.parts.groups if g.name in wanted)
        strategy.set_trainable(self.parts.model, self.parts.groups, self.trainable)
        strategy.train_mode(self.parts.model, self.profile.strategy)

    def _join(self, names: tuple[str, ...] | list[str]) -> None:
        """Groups that just became trainable: new param groups for those never in the optimizer; those frozen by
        hand before (still in it, their state kept) start their unfreeze warm-up again from this step."""
        added = [n for n in names if n not in self._in_optimizer]
        strategy.add_groups(self.optimizer, self._param_groups(added))
        self._in_optimizer.extend(added)
        for group in self.optimizer.param_groups:
            if group["layer_group"] in names and group["layer_group"] not in added:
                group["joined_step"] = self.global_step

    def _phase_entry(self, index: int) -> dict[str, Any]:
        return {"index": index, "groups": list(self.trainable), "start_epoch": self.epoch, "epochs": 0,
                "best_val_score": None, "time_s": 0.0}

    def enter_phase(self, index: int) -> tuple[str, ...]:
        """Unfreeze the groups `phases[index]` adds to the phase before (groups frozen or unfrozen by hand keep
        their state); those not yet in the optimizer join it as new param groups. Returns the groups unfrozen."""
        before = set(self.parts.phases[index - 1]) if index else set()
        added = tuple(n for n in self.parts.phases[index] if n not in before and n not in self.trainable)
        self._set_trainable((*self.trainable, *added))
        if self.parts.plan.lr_scales[index] != 1.0:
            self.scale_lr(self.parts.plan.lr_scales[index])
        self._join(added)
        self.phase, self.phase_start_epoch = index, self.epoch
        self.plateau.reset()
        self.phase_log.append(self._phase_entry(index))
        self.apply_lr()
        return added

    def apply_lr(self) -> None:
        self.schedule.apply(self.optimizer, self.global_step)

    def scale_lr(self, factor: float) -> None:
        """Multiply every group's base LR (and those of groups still to come), keeping their ratios."""
        self.lr_scale *= factor
        for group in self.optimizer.param_groups:
            group["base_lr"] *= factor
        self.apply_lr()

    def set_group_trainable(self, name: str, trainable: bool) -> str:
        """Freeze or unfreeze one group (`SetGroupTrainable`); returns what happened, for the event log. A frozen
        group stays in the optimizer, skipped (no gradient) with its state kept; the phase index is unchanged."""
        if name not in {g.name for g in self.parts.groups}:
            return f"unknown group {name!r}: nothing changed"
        if (name in self.trainable) == trainable:
            return f"{name} was already {'trainable' if trainable else 'frozen'}"
        if not trainable and self.trainable == (name,):
            return f"{name} is the only trainable group: not frozen"
        if not trainable:
            self._set_trainable(tuple(n for n in self.trainable if n != name))
            return f"{name} frozen (optimizer state kept)"
        joined = name not in self._in_optimizer
        self._set_trainable((*self.trainable, name))
        self._join((name,))
        self.apply_lr()
        how = "new param group" if joined else "optimizer state kept"
        return f"{name} trainable ({how}), LR {self.group_lrs()[name]:.2e}"

    def scale_group_lr(self, name: str | None, factor: float) -> str:
        """`ScaleGroupLR`: one group's base LR times `factor` (every group's, later ones included, for None)."""
        if name is None:
            self.scale_lr(factor)
            return f"all groups x{factor:.3g}"
        if name not in {g.name for g in self.parts.groups}:
            return f"unknown group {name!r}: nothing changed"
        self.group_scale[name] = self.group_scale.get(name, 1.0) * factor
        for group in self.optimizer.param_groups:
            if group["layer_group"] == name:
                group["base_lr"] *= factor
        self.apply_lr()
        lr = self.group_lrs().get(name)
        return f"{name} x{factor:.3g}" + (f", LR {lr:.2e}" if lr is not None and name in self.trainable else "")

    def head_base_lr(self) -> float:
        head = self.parts.groups[-1].name
        return next(g["base_lr"] for g in self.optimizer.param_groups if g["layer_group"] == head)

    def group_lrs(self) -> dict[str, float]:
        return {g["layer_group"]: g["lr"] for g in self.optimizer.param_groups}

    def current_lrs(self) -> tuple[float, ...]:
        """The LRs of the trainable groups (a group frozen by hand is still in the optimizer, but not training)."""
        lrs = self.group_lrs()
        return tuple(lrs[g] for g in self.trainable if g in lrs)

    # ------------------------------------------------------------------------------------------ layer table
    def _measure_grad_norms(self) -> None:
        """Per-group gradient norms, computed on the device, read in one sync."""
        params = self._params
        names, norms = [], []
        for group in self.parts.groups:
            grads = [params[n].grad for n in group.param_names if params[n].grad is not None]
            if grads:
                names.append(group.name)
                norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        values = torch.stack(norms).tolist() if norms else []
        self._grad_norms = dict(zip(names, values))

    def _measure_drift(self) -> None:
        """||w - w0|| / ||w0|| per group since the run started (pretrained weights, or the resumed ones)."""
        params = self._params
        for group in self.parts.groups:
            diff = base = 0.0
            for n in group.param_names:
                w = params[n].detach().float().cpu()
                diff += float((w - self._w0[n].float()).pow(2).sum())
                base += float(self._w0[n].float().pow(2).sum())
            self._drift[group.name] = math.sqrt(diff) / math.sqrt(base) if base > 0 else 0.0

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        trainable = set(self.trainable)
        lrs = self.group_lrs()
        # a group with nothing to train (under LoRA: no adapted layer in it) shows as frozen, as it is
        return tuple(LayerInfo(name=g.name, params=g.params, trainable=g.name in trainable and bool(g.trained),
                               lr=lrs.get(g.name) if g.name in trainable else None,
                               grad_norm=self._grad_norms.get(g.name) if g.name in trainable else None,
                               drift=self._drift.get(g.name), bn=strategy.bn_mode(self._bn.get(g.name, ())),
                               adapters=g.adapter_params)
                     for g in self.parts.groups)

    def layers_changed(self, *, with_grad: bool, with_drift: bool = False) -> LayersChanged:
        if with_grad:
            self._measure_grad_norms()
        if with_drift:
            self._measure_drift()
        return LayersChanged(layers=self.layer_infos(), global_step=self.global_step)

    # ---------------------------------------------------------------------------------------------- epochs
    def begin_epoch(self) -> None:
        gen = getattr(self.parts.train_loader, "generator", None)
        if gen is not None:
            if self.skip_steps and self._epoch_gen_state is not None:
                gen.set_state(self._epoch_gen_state)  # resume mid-epoch: the same shuffle as before
            self._epoch_gen_state = gen.get_state()
        self.epoch_sums.reset()
        if self.skip_steps and self._resumed_sums is not None:  # and the same running sums
            self.epoch_sums.load_state_dict(self._resumed_sums)
        self._resumed_sums = None

    def record_epoch(self, metrics: dict[str, float], per_class: dict[str, float], epoch_s: float,
                     extra: dict[str, float] | None = None, report: dict[str, dict[str, float]] | None = None
                     ) -> bool:
        """Log an epoch's metrics into the watches; True when it is the best epoch so far. The watches read the
        extras too (`val_macro_f1` can decide the best checkpoint, early stopping and the plateau trigger)."""
        self.step_in_epoch = 0
        self.history.append({"epoch": self.epoch, "phase": self.phase, **metrics, **(extra or {})})
        self.per_class, self.class_report = per_class, report or {}
        entry = self.phase_log[-1]
        entry["epochs"] += 1
        entry["time_s"] += epoch_s
        if entry["best_val_score"] is None or self.best.better(metrics["val_score"], entry["best_val_score"]):
            entry["best_val_score"] = metrics["val_score"]
        watched = {**(extra or {}), **metrics}
        self.plateau.update(watched[self.plateau.metric], self.epoch)
        self.early.update(watched[self.early.metric], self.epoch)
        return self.best.update(watched[self.best.metric], self.epoch)

    def early_stop_reason(self) -> str:
        es = self.profile.early_stopping
        if es.enabled and self.early.stale >= es.patience:
            return (f"early stopping: {es.metric} did not improve by more than {es.min_delta:g} "
                    f"for {es.patience} epochs (best {self.early.best:.4f} at epoch {self.early.best_epoch})")
        return ""

    def elapsed(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def samples_per_s(self, wall_s: float) -> float:
        samples = self.global_step * self.global_batch() * self.profile.train.accumulate_steps
        return samples / wall_s if wall_s > 0 else 0.0

    def global_batch(self) -> int:
        """Examples per batch over all ranks (see `data.batch_scope`); an optimizer step takes
        `train.accumulate_steps` of them."""
        data, world = self.profile.data, self.parts.dist.world
        return data.batch_size * (world if data.batch_scope == "rank" else 1)

    def gpu_memory(self) -> tuple[float | None, float | None]:
        if self.parts.device.type != "cuda":
            return None, None
        return (torch.cuda.memory_allocated(self.parts.device) / 1e9,
                torch.cuda.max_memory_allocated(self.parts.device) / 1e9)

    # ------------------------------------------------------------------------------------------ summaries
    def best_summary(self) -> dict[str, Any]:
        return {"metric": self.best.metric, "value": self.best.best, "epoch": self.best.best_epoch}

    def final_metrics(self) -> dict[str, Any]:
        return dict(self.history[-1]) if self.history else {}

    def phase_table(self) -> tuple[dict[str, Any], ...]:
        return tuple(dict(e) for e in self.phase_log)

    def checkpoint_paths(self) -> dict[str, str]:
        return dict(self.saved)

    def checkpoint_note(self) -> str:
        """Where the run can continue from, for failure messages."""
        if "last" not in self.saved_at:
            return "no checkpoint was saved yet"
        epoch, step = self.saved_at["last"]
        at = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        return f"the last checkpoint ({self.ckpt_dir / 'last.safetensors'}, {at}) is intact"

    # ---------------------------------------------------------------------------------------- checkpoints
    def snapshot(self, epoch_sums: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint holds. `epoch_sums`: the mid-epoch train sums (several ranks: already summed over
        them, so a resumed rank 0 carries the whole partial epoch); this rank's own when not given."""
        if epoch_sums is None and self.step_in_epoch:
            epoch_sums = self.epoch_sums.state_dict()
        return {
            "epoch": self.epoch, "global_step": self.global_step, "step_in_epoch": self.step_in_epoch,
            "phase": self.phase, "phase_start_epoch": self.phase_start_epoch,
            "trainable": list(self.trainable), "phase_groups": list(self.parts.phases[self.phase]),
            "group_scale": dict(self.group_scale), "in_optimizer": list(self._in_optimizer),
            "optimizer": checkpoint.optimizer_state_by_name(self.optimizer),
            "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
            "rng_numpy": checkpoint.numpy_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch_gen_state": self._loader_gen_state(), "history": self.history, "per_class": self.per_class,
            "class_report": self.class_report,
            "phase_log": self.phase_log, "wall_s": self.elapsed(), "classes": list(self.parts.bundle.classes),
            "skipped_steps": self.guard.skipped,
            "epoch_sums": epoch_sums if self.step_in_epoch else None,
            "schedule": self.schedule.state_dict(), "lr_scale": self.lr_scale,
            "ema": self._ema_state(), "world_size": self.parts.dist.world, "global_batch": self.global_batch(),
            "watches": {"best": self.best.to_dict(), "plateau": self.plateau.to_dict(),
                        "early": self.early.to_dict()},
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
            self.emit(Warned(message=f"not saving the {tag} checkpoint: the weights hold NaN/inf values; "
                                     f"checkpoints/{tag}.* keep their previous contents",
                             epoch=self.epoch, global_step=self.global_step, kind="nonfinite"))
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
        torch.set_rng_state(saved["rng_torch"])
        random.setstate(saved["rng_python"])
        if saved.get("rng_numpy") is not None:  # mixup / CutMix draws (older checkpoints lack it)
            checkpoint.set_numpy_rng_state(saved["rng_numpy"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
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
        self.notes.append(f"{run_dir}: --resume on {world} rank(s); the run was saved on {old_world} "
                          f"(global batch {old_batch} -> {self.global_batch()}): it continues, but the data order "
                          f"differs from an unbroken run")
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
                f"with model.weights = \"{run_dir / 'checkpoints' / 'last.safetensors'}\"")
        phase, phases = saved["phase"], self.parts.phases
        planned = saved.get("phase_groups", saved["trainable"])  # before per-group steering: the same list
        known = {g.name for g in self.parts.groups}
        if phase >= len(phases) or tuple(planned) != tuple(phases[phase]) or not set(saved["trainable"]) <= known:
            raise UserError(
                f"{run_dir}: --resume: the run stopped in phase {phase + 1} training {', '.join(planned)}, "
                f"which this profile's strategy does not plan ({len(phases)} phase(s)); resume with the run's own "
                f"strategy settings")


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(str(c) for c in items[:limit])
    return shown + (", ..." if len(items) > limit else "")
