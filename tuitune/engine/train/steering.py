"""What a person (or a trigger) steers in a run, at step boundaries: phase changes and the plateau question,
the commands (`commands.py`), pause and stop, the LR finder's answer, AdaBN and the domain-shift readings.

`Steering` is a base class of `loop.Trainer`, kept in its own module so the loop reads as the story of a step;
its methods read and set the trainer's attributes listed below (set by `Trainer.__init__`) and call its
`_rewrap`, `_cache_after_change` and `_refresh_cache`. With several ranks, every command is applied on every rank at
the same step (`_between_steps`; see `distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    Control,
    FindLR,
    Pause,
    Resume,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import CommandApplied, CommandRefused, Event, LRFound, PhaseChanged, UnfreezeSuggested
from tuitune.engine.train import strategy
from tuitune.engine.train.domain_shift import adapt_batchnorm, shift_event
from tuitune.engine.train.lr_sweep import find_lr_in_run

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.distributed import DistContext
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.objective import Objective
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.trainer_state import TrainerState


class Steering:
    """Phase changes and commands of `loop.Trainer` (see the module)."""

    # strategy.phase_lr = "find" in a live dashboard: how much longer than the on-screen countdown the engine waits
    # for the answer (a person typing a value) before it applies the suggestion itself. Never forever: a detached or
    # abandoned run goes on.
    lr_answer_grace_s = 30.0

    profile: RunProfile
    run_dir: Path
    emit: Callable[[Event], None]
    control: Control
    interactive: bool
    dist: DistContext
    parts: RunParts
    obj: Objective
    st: TrainerState
    cache: FeatureCache
    paused: bool
    _held: list[Any]
    stop_status: tuple[str, str] | None
    _suggested_phase: int

    def _maybe_next_phase(self) -> None:
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
        self._between_steps()
        if self.st.phase == phase and self.stop_status is None:
            self.st.plateau.stale = 0
            self._suggested_phase = -1

    def next_phase(self, reason: str) -> bool:
        st = self.st
        if st.phase + 1 >= len(self.parts.phases):
            return False
        added = st.enter_phase(st.phase + 1)  # also in mid-epoch (`u`): newly trainable modules leave eval mode
        self._rewrap()  # every rank is at this step: the new trainable set gets DDP's hooks
        self._cache_after_change()
        self.emit(
            PhaseChanged(
                phase=st.phase,
                num_phases=len(self.parts.phases),
                trainable=st.trainable,
                unfrozen=added,
                epoch=st.epoch,
                global_step=st.global_step,
                reason=reason,
            )
        )
        self.emit(st.layers_changed(with_grad=False))
        if self.profile.strategy.phase_lr == "find":
            self._find_phase_lr()
        return True

    def _find_phase_lr(self) -> None:
        """`strategy.phase_lr = "find"`: sweep the LR of the groups that train from now on (weights, optimizer, BN
        statistics, RNG and loader restored after), then make the answer the head's LR, the deeper groups keeping
        their discriminative ratios. Headless: the suggestion, at once. A live dashboard shows the curve and has
        `wait_s` to answer with an `ApplyLR`; the engine waits here, at a step boundary, watching its stop flag."""
        st, cfg = self.st, self.profile.strategy
        wait_s = cfg.phase_lr_wait_s if self.interactive else 0.0
        found = find_lr_in_run(
            self.profile,
            self.parts,
            st,
            self.obj,
            steps=cfg.phase_lr_steps,
            out_dir=self.run_dir if self.dist.is_main else None,
            phase=st.phase,
            wait_s=wait_s,
        )
        self.emit(found)
        lr, how = found.suggestion, "the finder's suggestion"
        if not found.found:  # nothing to apply: the run goes on at its LR
            how = f"kept: the sweep stopped after {len(found.lrs)} steps with no valley"
        elif found.wait_s > 0:
            lr, how = self._await_lr_answer(found)
        st.set_head_lr(lr)
        self.emit(
            CommandApplied(
                command="ApplyLR",
                epoch=st.epoch,
                global_step=st.global_step,
                value=lr,
                detail=f"phase {st.phase + 1} head LR {lr:.3g}, {how}; deeper groups keep their ratios",
            )
        )
        self.emit(st.layers_changed(with_grad=False))

    def _await_lr_answer(self, found: LRFound) -> tuple[float, str]:
        """The person's `ApplyLR`, or the suggestion once `wait_s` plus a grace has passed or a stop is asked.
        Other commands arriving meanwhile are kept, in order, for the next step boundary."""
        deadline = time.monotonic() + found.wait_s + self.lr_answer_grace_s
        while not self.control.stop_requested:
            for command in self.control.drain():
                if isinstance(command, ApplyLR):
                    if command.lr == found.suggestion:
                        how = "the finder's suggestion, from the dashboard (accepted, or its countdown ended)"
                        return command.lr, how
                    return command.lr, f"chosen in the dashboard (suggested {found.suggestion:.3g})"
                self._held.append(command)
            left = deadline - time.monotonic()
            if left <= 0:
                return found.suggestion, "the finder's suggestion (no answer came)"
            self.control.wait(min(0.1, left))
        return found.suggestion, "the finder's suggestion (stopping)"

    def _between_steps(self, step: int = 0) -> bool:
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
                self._apply(command)
            if self._held and not d.active:  # commands kept during an LR answer: this boundary too (several
                continue  # ranks: at the next exchange, on every rank alike)
            if stop and self.stop_status is None:
                self.stop_status = ("interrupted", "interrupted by the user")
            if self.stop_status is not None:
                return False
            if not self.paused:
                return True
            if d.is_main:  # the other ranks wait for it in the next exchange
                self.control.wait(0.5 if d.active else 0.1)

    def _stop_agreed(self) -> bool:
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

    def _apply(self, command: Any) -> None:
        st = self.st
        detail, value = "", None
        reason = self._unknown_group(command)
        if reason is not None:  # nothing changes
            self.emit(CommandRefused(type(command).__name__, reason, epoch=st.epoch, global_step=st.global_step))
            return
        if isinstance(command, UnfreezeNext):
            if not self.next_phase("manual"):
                detail = "already in the last phase"
        elif isinstance(command, StopEarly):
            self.stop_status = ("stopped_early", f"stopped by the user at epoch {st.epoch + 1}")
        elif isinstance(command, Pause):
            self.paused = True
        elif isinstance(command, Resume):
            self.paused = False
        elif isinstance(command, SaveCheckpoint):
            path = st.save("manual")
            detail = str(path) if path is not None else "not saved: the weights are not finite"
        elif isinstance(command, FindLR):
            found = find_lr_in_run(
                self.profile,
                self.parts,
                st,
                self.obj,
                steps=command.steps,
                out_dir=self.run_dir if self.dist.is_main else None,
            )
            self.emit(found)
            detail = (
                f"suggested {found.suggestion:.3g} (current {found.current_lr:.3g}); curve in {Path(found.path).name}"
            )
        elif isinstance(command, ApplyLR):
            st.set_head_lr(command.lr)
            detail, value = f"head LR {command.lr:.3g}; deeper groups keep their ratios", command.lr
            self.emit(st.layers_changed(with_grad=False))
        elif isinstance(command, SetGroupTrainable):
            detail = st.set_group_trainable(command.group, command.trainable)
            self._rewrap()  # every rank is at this step: DDP's hooks for the new trainable set
            self._cache_after_change()
            self.emit(st.layers_changed(with_grad=False))
        elif isinstance(command, AdaptBatchNorm):
            detail = self._adapt_batchnorm(command.batches)
        elif isinstance(command, ScaleGroupLR):
            detail = st.scale_group_lr(command.group, command.factor)
            self.emit(st.layers_changed(with_grad=False))
        self.emit(
            CommandApplied(
                command=type(command).__name__, epoch=st.epoch, global_step=st.global_step, detail=detail, value=value
            )
        )

    def _measure_shift(self, reason: str) -> list[float | None]:
        """Emit the domain shift per group (nothing when the model has no BatchNorm and no source data)."""
        if not self.profile.train.domain_shift and reason != "AdaptBatchNorm":
            return []
        event = shift_event(self.parts, self.st.epoch, self.st.global_step, reason)
        strategy.train_mode(self.parts.model, self.profile.strategy)
        if event is None:
            return []
        self.emit(event)
        return list(event.shifts)

    def _adapt_batchnorm(self, batches: int) -> str:
        """AdaBN at a step boundary, then the shift measured again; the feature cache (stale features) rebuilt."""
        p = self.parts
        gen = p.train_loader.generator  # its shuffle draws must not move: resume replays the same order
        state = gen.get_state() if gen is not None else None
        try:
            layers, read = adapt_batchnorm(p.model, p.train_loader, p.device, p.autocast, batches)
        finally:
            if gen is not None:
                gen.set_state(state)
        strategy.train_mode(p.model, self.profile.strategy)
        if not layers:
            return "no BatchNorm layers: nothing to adapt"
        if self.cache.active:
            self.cache.drop()
            self._refresh_cache()
        after = [v for v in self._measure_shift("AdaptBatchNorm") if v is not None]
        mean = f"; mean shift now {sum(after) / len(after):.3g}" if after else ""
        return f"running statistics of {layers} BatchNorm layers re-estimated on {read} target batches{mean}"
