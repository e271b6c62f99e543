"""What steers a run between optimizer steps: phase changes and the plateau question, the commands (`commands.py`),
pause and stop, AdaBN and the domain-shift readings, phases rolled back; the LR at a phase's start is `phase_lr`'s,
the feature cache kept in step with the trainable set `cache_keeper`'s.

`loop.Trainer` owns one `RunController` and one `CacheKeeper`, built with everything they touch passed in; the
trainer calls `between_steps` at each step boundary, `maybe_next_phase` at each epoch end, and reads `stop_status`.
With several ranks, every command is applied on every rank at the same step (`between_steps`; see `distributed`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    Control,
    FindLR,
    GenerateSamples,
    Pause,
    Resume,
    RollBackPhase,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import (
    CommandApplied,
    CommandRefused,
    Event,
    PhaseChanged,
    UnfreezeSuggested,
)
from tuitune.engine.train import strategy
from tuitune.engine.train.domain_shift import adapt_in_run, shift_event
from tuitune.engine.train.phase_lr import PhaseLR

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.cache_keeper import CacheKeeper
    from tuitune.engine.train.distributed import DistContext
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.phase_best import PhaseBest
    from tuitune.engine.train.state_checkpoint import Checkpointer
    from tuitune.engine.train.tasks import TaskObjective
    from tuitune.engine.train.trainer_state import TrainerState

Emit = Callable[[Event], None]
# What a command did, for its `CommandApplied`: the detail line and the value it set (an LR), if any.
Applied = tuple[str, float | None]


class RunController:
    """Phase changes, commands, pause and stop of one run (see the module). `stop_status` is None while the run
    goes on, else the (status, reason) it ends with."""

    def __init__(
        self,
        profile: RunProfile,
        run_dir: Path,
        *,
        interactive: bool,
        control: Control,
        dist: DistContext,
        emit: Emit,
        parts: RunParts,
        obj: TaskObjective,
        st: TrainerState,
        checkpoints: Checkpointer,
        cache: CacheKeeper,
        phase_best: PhaseBest,
    ) -> None:
        self.profile, self.run_dir, self.interactive = profile, run_dir, interactive
        self.control, self.dist, self.emit = control, dist, emit
        self.parts, self.obj, self.st, self.checkpoints, self.cache = parts, obj, st, checkpoints, cache
        self.phase_best = phase_best
        self.phase_lr = PhaseLR(
            profile,
            run_dir,
            interactive=interactive,
            control=control,
            dist=dist,
            emit=emit,
            parts=parts,
            obj=obj,
            st=st,
            cache=cache,
            hold=lambda command: self._held.append(command),
        )
        self.paused = False
        self.stop_status: tuple[str, str] | None = None
        self._held: list[Any] = []  # commands that arrived while the engine waited for an LR answer
        self._suggested_phase = -1
        self._handlers: dict[type, Callable[[Any], Applied]] = {
            UnfreezeNext: self._unfreeze_next,
            StopEarly: self._stop_early,
            Pause: self._pause,
            Resume: self._resume,
            SaveCheckpoint: self._save_checkpoint,
            FindLR: self._find_lr,
            ApplyLR: self._apply_lr,
            SetGroupTrainable: self._set_group_trainable,
            AdaptBatchNorm: self._adapt_batchnorm,
            ScaleGroupLR: self._scale_group_lr,
            GenerateSamples: self._generate_samples,
            RollBackPhase: self._roll_back_phase,
        }

    def stop(self, status: str, reason: str) -> None:
        """End the run at the next boundary the trainer checks, as `status` (`RunFinished.status`)."""
        self.stop_status = (status, reason)

    # ---------------------------------------------------------------------------------------------- phases
    def maybe_next_phase(self) -> None:
        """At an epoch end: the next phase when the strategy's trigger says so, or the plateau question asked."""
        st, cfg = self.st, self.profile.strategy
        due = strategy.phase_due(
            cfg,
            interactive=self.interactive,
            phase=st.phase,
            num_phases=len(self.parts.phases),
            epoch=st.epoch,
            total_epochs=self.profile.train.epochs,
            phase_start_epoch=st.phase_start_epoch,
            stale_epochs=st.plateau.stale,
        )
        if due == "epochs" or (due == "plateau" and not self.interactive):
            self.next_phase(due)
        elif due == "plateau" and self._suggested_phase != st.phase:  # a person decides: suggest, once a phase
            self._suggested_phase = st.phase
            self.emit(
                UnfreezeSuggested(
                    metric=cfg.plateau_metric,
                    epochs=st.plateau.stale,
                    next_groups=tuple(g for g in self.parts.next_groups(st.phase) if g not in st.trainable),
                    epoch=st.epoch,
                    waiting=cfg.plateau_wait,
                )
            )
            if cfg.plateau_wait:  # hold here: the answer comes as UnfreezeNext and/or Resume (or a stop)
                self._wait_for_answer()

    def _wait_for_answer(self) -> None:
        """Paused until the plateau question is answered. A "no" (Resume alone) keeps the phase and asks again
        after another `plateau_patience` flat epochs, so the run pauses for the person again."""
        phase = self.st.phase
        self.paused = True
        self.between_steps()
        if self.st.phase == phase and self.stop_status is None:
            self.st.plateau.stale = 0
            self._suggested_phase = -1

    def next_phase(self, reason: str) -> bool:
        st = self.st
        if st.phase + 1 >= len(self.parts.phases):
            return False
        restored = self._restore_phase_best(st.phase) if self.profile.strategy.restore_best_phase else None
        added = st.enter_phase(st.phase + 1)  # also in mid-epoch (`u`): newly trainable modules leave eval mode
        self._trainable_changed()
        self.emit(
            PhaseChanged(
                phase=st.phase,
                num_phases=len(self.parts.phases),
                trainable=st.trainable,
                unfrozen=added,
                epoch=st.epoch,
                global_step=st.global_step,
                reason=reason,
                restored_epoch=restored,
            )
        )
        self.emit(st.layers_changed(with_grad=False))
        self.auto_adabn("phase")
        if self.profile.strategy.phase_lr == "find":
            self.phase_lr.find()
        return True

    def _restore_phase_best(self, phase: int) -> int | None:
        """The weights of `phase`'s best epoch put back (its number, or None when the phase kept none); the feature
        cache dropped if they changed what a frozen group computes."""
        changed = self.phase_best.restore(phase)
        if changed is None:
            return None
        owner = {n.rsplit(".", 1)[0]: g.name for g in self.parts.groups for n in g.param_names}
        if any(owner.get(n.rsplit(".", 1)[0]) not in self.st.trainable for n in changed):
            self.cache.drop()
        return self.phase_best.best_epoch(phase)

    def _roll_back_phase(self, command: RollBackPhase) -> Applied:
        """Undo the current phase: the phase before's best weights, its trainable set (see `leave_phase`)."""
        st = self.st
        if st.phase == 0:
            return "already in the first phase: nothing to roll back", None
        to = st.phase - 1
        if not self.phase_best.has(to):
            return (
                f"phase {to + 1} kept no best weights (no epoch of it ended, or its file is gone): nothing changed",
                None,
            )
        epoch = self._restore_phase_best(to)
        undone = st.leave_phase()
        self.phase_best.rolled_back(to)
        self.cache.drop()  # the groups frozen again changed: what the cache would hold above them is stale
        self._trainable_changed()
        self.emit(
            PhaseChanged(
                phase=st.phase,
                num_phases=len(self.parts.phases),
                trainable=st.trainable,
                unfrozen=(),
                epoch=st.epoch,
                global_step=st.global_step,
                reason="rollback",
                refrozen=undone,
                restored_epoch=epoch,
            )
        )
        self.emit(st.layers_changed(with_grad=False))
        frozen = ", ".join(undone)
        return f"phase {to + 2} rolled back: the weights of epoch {epoch} (phase {to + 1}'s best); froze {frozen}", None

    def _trainable_changed(self) -> None:
        """Every rank is at this step: the new trainable set gets DDP's hooks, and the feature cache follows."""
        self.parts.rewrap()
        self.cache.trainable_changed()

    # ------------------------------------------------------------------------------------------ boundaries
    def between_steps(self, step: int = 0) -> bool:
        """Apply queued commands; wait while paused. False when the epoch must end now. With several ranks, rank
        0's commands and any rank's stop request are exchanged at the metric reads only (no other per-step sync),
        so every rank applies them at the same step; while paused the ranks meet every half second."""
        d = self.dist
        if d.active and step % self.profile.train.log_every:
            return True
        while True:
            if d.is_main:
                self._log_refusals()
            held, self._held = self._held + (self.control.drain() if d.is_main else []), []
            commands, stop = d.exchange(held, self.control.stop_requested)
            for command in commands:
                self.apply(command)
            if self._held and not d.active:  # commands kept during an LR answer: this boundary too (several
                continue  # ranks: at the next exchange, on every rank alike)
            if stop and self.stop_status is None:
                self.stop(*self.control.stop_status)
            if self.stop_status is not None:
                return False
            if not self.paused:
                return True
            if d.is_main:  # the other ranks wait for it in the next exchange
                self.control.wait(0.5 if d.active else 0.1)

    def stop_agreed(self) -> bool:
        """Was a stop asked for (on any rank)? Every rank gets the same answer."""
        return self.dist.exchange([], self.control.stop_requested)[1]

    def _log_refusals(self) -> None:
        """The commands refused where they entered (socket, dashboard): one `CommandRefused` each, in the log."""
        st = self.st
        for r in self.control.drain_refusals():
            self.emit(CommandRefused(r.command, r.reason, epoch=st.epoch, global_step=st.global_step, sender=r.sender))

    def _unknown_group(self, command: Any) -> str | None:
        """Why a command naming a layer group is refused here (the run lacks the group), or None."""
        group = getattr(command, "group", None)
        names = [g.name for g in self.parts.groups]
        if group is None or group in names:
            return None
        return f"{type(command).__name__}: 'group' {group!r} is not a layer group of this run ({', '.join(names)})"

    def apply(self, command: Any) -> None:
        """One command, by its type's handler (a type without one changes nothing); then `CommandApplied`."""
        sender = self.control.sender_of(command)
        reason = self._unknown_group(command)
        if reason is not None:  # nothing changes
            st = self.st
            name = type(command).__name__
            self.emit(CommandRefused(name, reason, st.epoch, st.global_step, sender=sender, queued=True))
            return
        handler = self._handlers.get(type(command))
        detail, value = handler(command) if handler is not None else ("", None)
        self.emit(
            CommandApplied(
                command=type(command).__name__,
                epoch=self.st.epoch,
                global_step=self.st.global_step,
                detail=detail,
                value=value,
                sender=sender,
            )
        )

    # -------------------------------------------------------------------------------------------- commands
    def _unfreeze_next(self, command: UnfreezeNext) -> Applied:
        return ("" if self.next_phase("manual") else "already in the last phase"), None

    def _stop_early(self, command: StopEarly) -> Applied:
        self.stop("stopped_early", f"stopped by the user at epoch {self.st.epoch + 1}")
        return "", None

    def _pause(self, command: Pause) -> Applied:
        self.paused = True
        return "", None

    def _resume(self, command: Resume) -> Applied:
        self.paused = False
        return "", None

    def _save_checkpoint(self, command: SaveCheckpoint) -> Applied:
        path = self.checkpoints.save("manual")
        return (str(path) if path is not None else "not saved: the weights are not finite"), None

    def _find_lr(self, command: FindLR) -> Applied:
        found = self.phase_lr.sweep(command.steps)
        name = Path(found.path).name
        return f"suggested {found.suggestion:.3g} (current {found.current_lr:.3g}); curve in {name}", None

    def _apply_lr(self, command: ApplyLR) -> Applied:
        self.st.set_head_lr(command.lr)
        self.emit(self.st.layers_changed(with_grad=False))
        return f"head LR {command.lr:.3g}; deeper groups keep their ratios", command.lr

    def _set_group_trainable(self, command: SetGroupTrainable) -> Applied:
        detail = self.st.set_group_trainable(command.group, command.trainable)
        self._trainable_changed()
        self.emit(self.st.layers_changed(with_grad=False))
        return detail, None

    def _scale_group_lr(self, command: ScaleGroupLR) -> Applied:
        detail = self.st.scale_group_lr(command.group, command.factor)
        self.emit(self.st.layers_changed(with_grad=False))
        return detail, None

    def _generate_samples(self, command: GenerateSamples) -> Applied:
        """A language model's samples now (a classifier says it has none); the model back in its training mode."""
        detail, event = self.obj.generate_now(self.parts, self.st.epoch, self.st.global_step)
        strategy.train_mode(self.parts.model, self.profile.strategy)
        if event is not None:
            self.emit(event)
        return detail, None

    def _adapt_batchnorm(self, command: AdaptBatchNorm) -> Applied:
        """AdaBN at a step boundary, then the shift measured again; the feature cache (stale features) rebuilt."""
        layers, read = adapt_in_run(self.parts, command.batches, self._train_mode)
        if not layers:
            return "no BatchNorm layers: nothing to adapt", None
        self.cache.rebuild()
        after = [v for v in self.measure_shift("AdaptBatchNorm") if v is not None]
        mean = f"; mean shift now {sum(after) / len(after):.3g}" if after else ""
        return f"running statistics of {layers} BatchNorm layers re-estimated on {read} target batches{mean}", None

    def _train_mode(self, model: Any) -> None:
        strategy.train_mode(model, self.profile.strategy)

    def auto_adabn(self, when: str) -> None:
        """`strategy.adabn`: AdaBN at the run's start ("start") or at a phase change ("phase"), when the profile
        asks for it then; said like the `b` key's, as the command it is (`CommandApplied`, detail first)."""
        asked = self.profile.strategy.adabn
        if not asked or (when == "phase" and asked != "phase"):
            return
        detail, _ = self._adapt_batchnorm(AdaptBatchNorm(batches=self.profile.strategy.adabn_batches))
        st = self.st
        self.emit(
            CommandApplied(
                command="AdaptBatchNorm",
                epoch=st.epoch,
                global_step=st.global_step,
                detail=f"strategy.adabn = {asked!r} ({when}): {detail}",
            )
        )

    # ------------------------------------------------------------------------------------------ readings
    def measure_shift(self, reason: str) -> list[float | None]:
        """Emit the domain shift per group (nothing when the model has no BatchNorm and no source data)."""
        if not self.profile.train.domain_shift and reason != "AdaptBatchNorm":
            return []
        event = shift_event(self.parts, self.st.epoch, self.st.global_step, reason)
        strategy.train_mode(self.parts.model, self.profile.strategy)
        if event is None:
            return []
        self.emit(event)
        return list(event.shifts)
