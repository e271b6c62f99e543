"""The memory plan on screen: the line under the dashboard's layer table (`layer_table_subtitle`) and the composing
screen's `MemoryLine`, which plans the profile being composed in a worker thread (torch loads there, never when
this module is imported) and shows each phase's peak, and what to change when one will not fit.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import get_current_worker

from tuitune.config import RunProfile
from tuitune.engine.events import MemoryPlanned
from tuitune.engine.memory_plan import budget_clause, fmt_bytes
from tuitune.errors import UserError
from tuitune.ui.keys import LAYER_TABLE_HINT
from tuitune.ui.state import DashboardState


def layer_table_subtitle(state: DashboardState) -> str:
    """`phase 2 ~1.42 GB of 11.6 GB · ↑↓ select · ...`: the planned peak of the phase in progress, then the keys."""
    plan = state.memory
    if plan is None or not plan.phases:
        return LAYER_TABLE_HINT
    i = min(state.phase, len(plan.phases) - 1)
    of = f" of {fmt_bytes(plan.budget)}" if plan.budget > 0 else ""
    return f"phase {i + 1} ~{fmt_bytes(plan.phases[i].peak)}{of} · {LAYER_TABLE_HINT}"


def plan_text(plan: MemoryPlanned) -> Group:
    """The composing screen's view: the heading, the phases' peaks (a phase over the budget in red), the advice."""
    where = f"; {budget_clause(plan.budget_source, plan.budget)}" if plan.budget > 0 else ""
    head = Text(f"memory at batch {plan.batch_size} ({plan.device}{where})", "dim")
    peaks = Text("  ")
    for i, p in enumerate(plan.phases):
        over = plan.budget > 0 and p.peak > plan.budget
        peaks.append(f"{' · ' if i else ''}phase {i + 1} ~{fmt_bytes(p.peak)}", "bold red" if over else "")
    lines: list[Any] = [head, peaks]
    if plan.note:
        lines.insert(0, Text(plan.note, "dim"))
    if plan.advice:
        lines.append(Text(plan.advice, "red"))
    return Group(*lines)


def memory_key(profile: RunProfile) -> str:
    """What a plan depends on (not the name, the LR, the epochs): a new plan only when one of these changed."""
    t = profile.train
    train = (t.optimizer, t.momentum, t.device, t.memory_gb, t.gradient_checkpointing, t.feature_cache)
    more = (t.cache_memory_gb, t.accumulate_steps, t.ema_decay, t.channels_last)
    rest = (profile.model, profile.data, profile.strategy, profile.loss, profile.regularization, profile.distill)
    return repr((train, more, rest))


class MemoryPlanRead(Message):
    """From the worker: the plan (`plan`) or why there is none (`error`, one line), for the profile `key` names."""

    def __init__(self, plan: MemoryPlanned | None, error: str, key: str) -> None:
        super().__init__()
        self.plan, self.error, self.key = plan, error, key


class MemoryLine(Static):
    """The composed profile's memory plan: `plan_for(profile)` after every valid edit. A new plan is made (in a
    thread: it builds the data and the model and runs one batch per phase) only when something it depends on
    changed, and only once the edits pause for `SETTLE_S` (typing `128` plans once, not three times); an answer
    for an older profile is dropped."""

    SETTLE_S = 0.5

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = ""
        self.plan: MemoryPlanned | None = None
        self._timer: Timer | None = None

    def plan_for(self, profile: RunProfile) -> None:
        key = memory_key(profile)
        if key == self.key:
            return
        self.key, self.plan = key, None
        self.update(Text("planning memory…", "italic dim"))
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(self.SETTLE_S, lambda: self._start(profile, key), name="memory-plan")

    def _start(self, profile: RunProfile, key: str) -> None:
        self._timer = None
        self.run_worker(
            lambda: self._plan(profile, key), thread=True, exclusive=True, group="memory", exit_on_error=False
        )

    def _plan(self, profile: RunProfile, key: str) -> None:
        try:
            from tuitune.engine.tools.memory import plan_profile

            answer = MemoryPlanRead(plan_profile(profile), "", key)
        except UserError as e:  # data that is not there, a model that cannot be built: its own line
            answer = MemoryPlanRead(None, " ".join(str(e).split()), key)
        except Exception as e:  # anything else is shown too: the screen goes on
            answer = MemoryPlanRead(None, " ".join(f"{type(e).__name__}: {e}".split()), key)
        if not get_current_worker().is_cancelled:
            self.post_message(answer)

    def on_memory_plan_read(self, message: MemoryPlanRead) -> None:
        message.stop()
        if message.key != self.key:
            return
        self.plan = message.plan
        if message.plan is None:
            self.update(Text(f"memory: cannot plan: {message.error}", "dim red"))
        else:
            self.update(plan_text(message.plan))
