"""The mutable state of a run: position, phase, optimizer, watches, history.

Kept apart from the loop so that the loop reads as a loop. What a checkpoint holds of it, and how it comes back, is
`state_checkpoint.Checkpointer`'s, which is given this state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from tuitune.engine.events import LayerInfo, LayersChanged, LayersMeasured
from tuitune.engine.train import strategy
from tuitune.engine.train.guards import NonFiniteGuard
from tuitune.engine.train.running_sums import RunningSums
from tuitune.engine.train.watch import MetricWatch

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.scoring import Scorer


class TrainerState:
    """Where a run is and what trains: `parts` are the run's fixed parts; `scorer` (the objective's) sets which
    way the watched scores improve, a classifier's when not given."""

    def __init__(self, parts: RunParts, profile: RunProfile, scorer: Scorer | None = None) -> None:
        from tuitune.engine.train.schedule import LRSchedule
        from tuitune.engine.train.scoring import Scorer

        self.parts, self.profile = parts, profile
        scorer = scorer if scorer is not None else Scorer("class")
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
        self.best, self.plateau, self.early = self._watches(profile, scorer.higher_is_better)
        self.schedule = LRSchedule(profile.train, parts.steps_per_epoch)
        # ApplyLR and the plan's per-phase LR scales (LP-FT) rescale every group's base LR, later groups included
        self.lr_scale = parts.plan.lr_scales[0]
        self.guard = NonFiniteGuard(profile.train.on_nonfinite, profile.train.max_skipped, parts.device)
        self.epoch_sums = RunningSums(parts.device, scorer)  # this epoch's train metrics, on the device
        self.resumed_sums: dict[str, Any] | None = None  # a resumed mid-epoch's train sums, for its first epoch
        self.epoch_gen_state: torch.Tensor | None = None  # the shuffle generator's state at this epoch's start
        self._grad_norms: dict[str, float] = {}
        self._drift: dict[str, float] = {}
        self._rows_sent: tuple[LayerInfo, ...] | None = None  # the rows the last layers_changed reported
        self._params = dict(parts.model.named_parameters())  # looked up at every metric read: built once
        self._w0 = {n: p.detach().to("cpu", copy=True) for n, p in self._params.items()}
        self.in_optimizer: list[str] = []  # the groups with param groups in the optimizer (frozen by hand or not)
        # The groups that train now: the phase's, as changed since by `SetGroupTrainable` (a phase change adds
        # the groups its phase adds; a group frozen by hand stays frozen). Per-group LR factors set by
        # `ScaleGroupLR`, for the groups that join the optimizer later (those in it carry theirs in `base_lr`).
        self.trainable: tuple[str, ...] = ()
        self.group_scale: dict[str, float] = {}
        self._bn = strategy.batchnorms_by_group(parts.model, parts.groups)
        # `strategy.train_bn`: the norm layers train in every group, frozen or not; those of the groups outside
        # the first phase get param groups of their own, and a group unfrozen later joins without them
        self._always = strategy.norm_params(parts.model) if profile.strategy.train_bn else ()
        self._in_already: tuple[str, ...] = ()
        self._set_trainable(parts.phases[0])
        self.optimizer = strategy.build_optimizer(
            self._param_groups(parts.phases[0]),
            name=profile.train.optimizer,
            lr=profile.train.lr,
            weight_decay=profile.train.weight_decay,
            momentum=profile.train.momentum,
        )
        rest = [g.name for g in parts.groups if g.name not in parts.phases[0]]
        strategy.add_groups(self.optimizer, self._param_groups(rest, only=self._always) if self._always else [])
        self._in_already = self._always
        self.in_optimizer = list(parts.phases[0])
        self.phase_log.append(self._phase_entry(0))
        if len(parts.phases) > 1:
            self._restart_schedule()  # the first phase's cycle (resuming: the saved cycle replaces it)

    @staticmethod
    def _watches(profile: RunProfile, up: bool) -> tuple[MetricWatch, MetricWatch, MetricWatch]:
        """The best checkpoint's, the plateau trigger's and early stopping's watches; `up`: the task's score is
        higher-better (the `*_score` metrics carry it: RMSE is lower-better)."""
        ema_best = profile.train.ema_for_best and profile.train.ema_decay > 0  # the EMA model's val metric
        best = MetricWatch(("ema_" if ema_best else "") + profile.train.checkpoint_metric, score_higher=up)
        plateau = MetricWatch(profile.strategy.plateau_metric, profile.strategy.plateau_min_delta, score_higher=up)
        es = profile.early_stopping
        return best, plateau, MetricWatch(es.metric, es.min_delta, score_higher=up)

    # ------------------------------------------------------------------------------------------- phases / LR
    def _param_groups(
        self, names: tuple[str, ...] | list[str], only: tuple[str, ...] | None = None
    ) -> list[dict[str, Any]]:
        t, s = self.profile.train, self.profile.strategy
        groups = strategy.param_groups(
            self.parts.model,
            self.parts.groups,
            names,
            base_lr=t.lr * self.lr_scale,
            lr_decay=s.lr_decay,
            weight_decay=t.weight_decay,
            only=only,
            skip=self._in_already,
        )
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
        strategy.set_trainable(self.parts.model, self.parts.groups, self.trainable, self._always)
        strategy.train_mode(self.parts.model, self.profile.strategy)

    def _join(self, names: tuple[str, ...] | list[str]) -> None:
        """Groups that just became trainable: new param groups for those never in the optimizer; those frozen by
        hand before (still in it, their state kept) start their unfreeze warm-up again from this step."""
        added = [n for n in names if n not in self.in_optimizer]
        strategy.add_groups(self.optimizer, self._param_groups(added))
        self.in_optimizer.extend(added)
        for group in self.optimizer.param_groups:
            if group["layer_group"] in names and group["layer_group"] not in added:
                group["joined_step"] = self.global_step

    def _phase_entry(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "groups": list(self.trainable),
            "start_epoch": self.epoch,
            "epochs": 0,
            "best_val_score": None,
            "time_s": 0.0,
        }

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
        self._restart_schedule()
        self.apply_lr()
        return added

    def _restart_schedule(self) -> None:
        """`train.restart = "phase"`: the schedule's shape starts again with the phase, over its planned epochs."""
        if self.profile.train.restart == "phase":
            epochs = strategy.planned_phase_epochs(self.profile, self.epoch)
            self.schedule.restart(self.global_step, epochs * self.parts.steps_per_epoch)

    def leave_phase(self) -> tuple[str, ...]:
        """`RollBackPhase`: back to the phase before. The groups this phase unfroze are frozen again and their
        optimizer state dropped (unfrozen again later, they start afresh, as they did the first time); the phase's
        LR scale (LP-FT's) is taken back. Returns the groups frozen again. The caller puts the weights back."""
        index, names = self.phase - 1, {g.name: g for g in self.parts.groups}
        undone = tuple(n for n in self.parts.phases[self.phase] if n not in self.parts.phases[index])
        self._set_trainable(tuple(n for n in self.trainable if n not in undone))
        for name in undone:
            for p in names[name].param_names:
                self.optimizer.state.pop(self._params[p], None)
        if self.parts.plan.lr_scales[self.phase] != 1.0:
            self.scale_lr(1.0 / self.parts.plan.lr_scales[self.phase])
        self.phase_log[-1]["rolled_back"] = True
        self.phase, self.phase_start_epoch = index, self.epoch
        self.plateau.reset()
        self.phase_log.append(self._phase_entry(index))
        self._restart_schedule()
        self.apply_lr()
        return undone

    def restore_trainable(self, trainable: list[str], group_scale: dict[str, float], in_optimizer: list[str]) -> None:
        """Resuming: exactly the trainable set a run left (hand-made changes included), its per-group LR factors,
        and param groups for every group that was in its optimizer (their state is loaded after, by name)."""
        self._set_trainable(trainable)
        self.group_scale = dict(group_scale)
        missing = [n for n in in_optimizer if n not in self.in_optimizer]
        strategy.add_groups(self.optimizer, self._param_groups(missing))
        self.in_optimizer.extend(missing)

    def apply_lr(self) -> None:
        self.schedule.apply(self.optimizer, self.global_step)

    def scale_lr(self, factor: float) -> None:
        """Multiply every group's base LR (and those of groups still to come), keeping their ratios."""
        self.lr_scale *= factor
        for group in self.optimizer.param_groups:
            group["base_lr"] *= factor
        self.apply_lr()

    def set_head_lr(self, lr: float) -> None:
        """Make `lr` the head's base LR (`ApplyLR`, a phase's found LR); the other groups keep their ratios to it."""
        self.scale_lr(lr / self.head_base_lr())

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
        joined = name not in self.in_optimizer
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

    def base_lrs(self) -> dict[str, float]:
        """Each layer group's base LR (before the schedule's shape and warm-ups)."""
        return {g["layer_group"]: g["base_lr"] for g in reversed(self.optimizer.param_groups)}

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

    def rescale_by_rgn(self) -> None:
        """`strategy.kind = "auto_rgn"`, at an epoch's first step (see `strategy.rescale_by_rgn`)."""
        strategy.rescale_by_rgn(self.optimizer, self.parts.groups, self._params)

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
        return tuple(
            LayerInfo(
                name=g.name,
                params=g.params,
                trainable=g.name in trainable and bool(g.trained),
                lr=lrs.get(g.name) if g.name in trainable else None,
                grad_norm=self._grad_norms.get(g.name) if g.name in trainable else None,
                drift=self._drift.get(g.name),
                bn=strategy.bn_mode(self._bn.get(g.name, ())),
                adapters=g.adapter_params,
            )
            for g in self.parts.groups
        )

    def layers_changed(self, *, with_grad: bool, with_drift: bool = False) -> LayersChanged | LayersMeasured:
        """The layer table now. At a metric read (`with_grad` alone) where only LRs and gradient norms moved: just
        those columns (`LayersMeasured`), so events.jsonl does not repeat every row at every log step."""
        if with_grad:
            self._measure_grad_norms()
        if with_drift:
            self._measure_drift()
        rows, sent = self.layer_infos(), self._rows_sent
        self._rows_sent = rows
        if with_grad and not with_drift and sent is not None and _same_but_measures(sent, rows):
            lrs, norms = tuple(r.lr for r in rows), tuple(r.grad_norm for r in rows)
            return LayersMeasured(lrs=lrs, grad_norms=norms, global_step=self.global_step)
        return LayersChanged(layers=rows, global_step=self.global_step)

    # ---------------------------------------------------------------------------------------------- epochs
    def begin_epoch(self) -> None:
        gen = getattr(self.parts.train_loader, "generator", None)
        if gen is not None:
            if self.skip_steps and self.epoch_gen_state is not None:
                gen.set_state(self.epoch_gen_state)  # resume mid-epoch: the same shuffle as before
            self.epoch_gen_state = gen.get_state()
        self.epoch_sums.reset()
        if self.skip_steps and self.resumed_sums is not None:  # and the same running sums
            self.epoch_sums.load_state_dict(self.resumed_sums)
        self.resumed_sums = None

    def record_epoch(
        self,
        metrics: dict[str, float],
        per_class: dict[str, float],
        epoch_s: float,
        extra: dict[str, float] | None = None,
        report: dict[str, dict[str, float]] | None = None,
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
            return (
                f"early stopping: {es.metric} did not improve by more than {es.min_delta:g} "
                f"for {es.patience} epochs (best {self.early.best:.4f} at epoch {self.early.best_epoch})"
            )
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
        assert isinstance(data.batch_size, int), 'data.batch_size = "auto" is chosen before the state is made'
        return data.batch_size * (world if data.batch_scope == "rank" else 1)

    def gpu_memory(self) -> tuple[float | None, float | None]:
        if self.parts.device.type != "cuda":
            return None, None
        return (
            torch.cuda.memory_allocated(self.parts.device) / 1e9,
            torch.cuda.max_memory_allocated(self.parts.device) / 1e9,
        )

    # ------------------------------------------------------------------------------------------ summaries
    def best_summary(self) -> dict[str, Any]:
        return {"metric": self.best.metric, "value": self.best.best, "epoch": self.best.best_epoch}

    def final_metrics(self) -> dict[str, Any]:
        return dict(self.history[-1]) if self.history else {}

    def phase_table(self) -> tuple[dict[str, Any], ...]:
        return tuple(dict(e) for e in self.phase_log)


def _same_but_measures(a: tuple[LayerInfo, ...], b: tuple[LayerInfo, ...]) -> bool:
    """Whether two tables differ in their LRs and gradient norms only."""
    return len(a) == len(b) and all(
        dataclasses.replace(x, lr=None, grad_norm=None) == dataclasses.replace(y, lr=None, grad_norm=None)
        for x, y in zip(a, b)
    )
