"""An LR finder that serves phases (`strategy.phase_lr = "find"`): the LR sweep at a phase's start, how long it may
be, and what its answer sets.

Three measured ways a finder run at every phase went wrong on real data (issue 24): the head alone wants a high LR,
but each later sweep over all the trainable groups found a lower valley (the deep groups blow up first), and made
it the head's LR too, so the LRs shrank phase by phase into uselessness; and four 100-step sweeps cost more than
the epochs they served. So:

- `strategy.phase_lr_rule = "new_groups"`: the first phase's sweep sets the head's LR (deeper groups keep their
  `lr_decay` ratios); a later phase keeps the LRs of the groups already training and sweeps the groups it adds,
  alone (the others hold still), whose LR becomes the sweep's answer, never above the LR of the deepest group
  already training (`new_groups_lrs`). `"head"` is the rule before: every answer becomes the head's LR.
- a sweep costs at most `strategy.phase_lr_budget` of its phase's planned steps (`sweep_steps`), and it runs on
  the feature cache where the phase has one (only the layers above the frozen part run; a head on cached features
  sweeps its full `phase_lr_steps` for almost nothing). A sweep too short to read (under `MIN_STEPS`) is not run:
  the rule's fallback applies (the new groups get the profile's LR for them, never above the deepest trained
  group's; the head keeps its LR).

`PhaseLR` is the controller's part that does it, with the dashboard's countdown for a person to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuitune.engine.commands import ApplyLR, Control
from tuitune.engine.events import CommandApplied, Event, LRFound
from tuitune.engine.train import strategy
from tuitune.engine.train.lr_sweep import find_lr_in_run
from tuitune.engine.train.strategy import planned_phase_epochs

if TYPE_CHECKING:
    from tuitune.config import RunProfile
    from tuitune.engine.train.cache_keeper import CacheKeeper
    from tuitune.engine.train.distributed import DistContext
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.tasks import TaskObjective
    from tuitune.engine.train.trainer_state import TrainerState

MIN_STEPS = 10  # a sweep shorter than this reads nothing off its curve


def sweep_steps(max_steps: int, phase_steps: int, budget: float, cheap: bool) -> int:
    """A phase sweep's length: `max_steps`, at most `budget` of the phase's `phase_steps` (0: no limit), unless a
    step costs next to nothing (`cheap`: a head on cached features); 0 when that leaves fewer than `MIN_STEPS`."""
    steps = max_steps if cheap or budget <= 0 else min(max_steps, int(budget * phase_steps))
    return steps if steps >= MIN_STEPS else 0


def new_groups_lrs(
    found: float | None, trained_lr: float, decay: float, new: list[str], profile_lr: float
) -> dict[str, float]:
    """`phase_lr_rule = "new_groups"`: the base LRs of the groups a phase adds (`new`, input -> output). The top
    one gets the sweep's answer `found`, or without one `profile_lr` (the LR the profile gives it: `train.lr` with
    `lr_decay`), never above `trained_lr` (the deepest group already training: a deeper group should not move
    faster than those above it); each one further down `decay` times the one above, as discriminative LRs do.

    Not the head's LR as a fallback: a head on cached features wants a high LR (the finder chose 1e-2 and more on
    real data), and a transformer layer given it forgot what it knew (SMS spam: macro-F1 0.52 -> 0.47, every text
    called ham)."""
    top = min(found if found is not None and found > 0 else profile_lr, trained_lr)
    return {name: top * decay**i for i, name in enumerate(reversed(new))}


class PhaseLR:
    """The LR at each phase's start, and the in-run sweeps (`sweep`, also for the `FindLR` command). `hold(command)`
    keeps a command that arrived while the engine waited for a person's answer, for the next step boundary."""

    # in a live dashboard: how much longer than the on-screen countdown the engine waits for the answer (a person
    # typing a value) before it applies the suggestion itself. Never forever: a detached or abandoned run goes on.
    answer_grace_s = 30.0

    def __init__(
        self,
        profile: RunProfile,
        run_dir: Path,
        *,
        interactive: bool,
        control: Control,
        dist: DistContext,
        emit: Callable[[Event], None],
        parts: RunParts,
        obj: TaskObjective,
        st: TrainerState,
        cache: CacheKeeper,
        hold: Callable[[Any], None],
    ) -> None:
        self.profile, self.run_dir, self.interactive = profile, run_dir, interactive
        self.control, self.dist, self.emit, self.hold = control, dist, emit, hold
        self.parts, self.obj, self.st, self.cache = parts, obj, st, cache

    def new_groups(self) -> list[str]:
        """The groups the current phase added (none in the first phase, or under the `head` rule)."""
        st, cfg = self.st, self.profile.strategy
        if cfg.phase_lr_rule != "new_groups" or st.phase == 0:
            return []
        before = set(self.parts.phases[st.phase - 1])
        return [g for g in self.parts.phases[st.phase] if g not in before and g in st.trainable]

    def find(self) -> None:
        """At a phase's start: sweep (within its budget, on the feature cache where there is one) and set the LR the
        rule says; say what was set, and why, as an `ApplyLR`."""
        st, cfg = self.st, self.profile.strategy
        new = self.new_groups()
        self.cache.refresh()  # the phase's cache now, not at the next epoch: the sweep runs on it
        cheap = self.cache.cache.active and st.trainable == (self.parts.groups[-1].name,)
        phase_steps = planned_phase_epochs(self.profile, st.epoch) * self.parts.steps_per_epoch
        steps = sweep_steps(cfg.phase_lr_steps, phase_steps, cfg.phase_lr_budget, cheap)
        found = None
        if steps:
            wait_s = cfg.phase_lr_wait_s if self.interactive and not new else 0.0
            found = self.sweep(steps, phase=st.phase, wait_s=wait_s, groups=tuple(new))
        skipped = f"no sweep: {cfg.phase_lr_budget:g} of the phase's {phase_steps} steps is under {MIN_STEPS}"
        if new:
            self._set_new_groups(new, found, skipped)
        else:
            self._set_head(found, skipped)
        self.emit(st.layers_changed(with_grad=False))

    def _set_head(self, found: LRFound | None, skipped: str) -> None:
        st = self.st
        lr, how, sender = st.head_base_lr(), f"kept: {skipped}", ""
        if found is not None and not found.found:  # nothing to apply: the run goes on at its LR
            how = f"kept: the sweep stopped after {len(found.lrs)} steps with no valley"
        elif found is not None:
            lr, how = found.suggestion, "the finder's suggestion"
            if found.wait_s > 0:
                lr, how, sender = self._await_answer(found)
        st.set_head_lr(lr)
        detail = f"phase {st.phase + 1} head LR {lr:.3g}, {how}; deeper groups keep their ratios"
        self._applied(lr, detail, sender)

    def _set_new_groups(self, new: list[str], found: LRFound | None, skipped: str) -> None:
        st = self.st
        base = st.base_lrs()
        trained = min(base[g] for g in st.trainable if g not in new and g in base)
        answer = found.suggestion if found is not None and found.found else None
        cfg, names = self.profile.strategy, [g.name for g in self.parts.groups]
        own = strategy.group_lr(self.profile.train.lr, names, new[-1], cfg.lr_decay) * st.group_scale.get(new[-1], 1.0)
        lrs = new_groups_lrs(answer, trained, cfg.lr_decay, new, own)
        for name, lr in lrs.items():
            st.scale_group_lr(name, lr / base[name])
        how = (
            f"the sweep of {', '.join(new)} alone suggested {answer:.3g}"
            if answer is not None
            else f"{skipped if found is None else 'the sweep found no valley'}: the profile's LR for them"
        )
        capped = " (capped at the LR of the groups above)" if (answer or own) > trained else ""
        top = lrs[new[-1]]
        detail = (
            f"phase {st.phase + 1}: {', '.join(new)} LR {top:.3g}, {how}{capped}; the groups already training keep "
            f"their LRs"
        )
        self._applied(top, detail, "")

    def _applied(self, lr: float, detail: str, sender: str) -> None:
        st = self.st
        self.emit(
            CommandApplied(
                command="ApplyLR", epoch=st.epoch, global_step=st.global_step, value=lr, detail=detail, sender=sender
            )
        )

    def sweep(self, steps: int, **where: Any) -> LRFound:
        """The in-run LR sweep (`lr_sweep.find_lr_in_run`, on the feature cache when in use), its curve written by
        rank 0; emitted."""
        out_dir = self.run_dir if self.dist.is_main else None
        found = find_lr_in_run(
            self.profile, self.parts, self.st, self.obj, steps=steps, out_dir=out_dir, cache=self.cache.cache, **where
        )
        self.emit(found)
        return found

    def _await_answer(self, found: LRFound) -> tuple[float, str, str]:
        """The person's `ApplyLR` (the LR, how it was chosen, its sender), or the suggestion once `wait_s` plus a
        grace has passed or a stop is asked. Other commands arriving meanwhile are held, in order, for the next
        step boundary."""
        deadline = time.monotonic() + found.wait_s + self.answer_grace_s
        while not self.control.stop_requested:
            for command in self.control.drain():
                if isinstance(command, ApplyLR):
                    sender = self.control.sender_of(command)
                    if command.lr == found.suggestion:
                        how = "the finder's suggestion, from the dashboard (accepted, or its countdown ended)"
                        return command.lr, how, sender
                    return command.lr, f"chosen in the dashboard (suggested {found.suggestion:.3g})", sender
                self.hold(command)
            left = deadline - time.monotonic()
            if left <= 0:
                return found.suggestion, "the finder's suggestion (no answer came)", ""
            self.control.wait(min(0.1, left))
        return found.suggestion, "the finder's suggestion (stopping)", ""
