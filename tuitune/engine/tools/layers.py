"""A profile's layer groups and which of them train in the first phase, without training: what `tuitune layers`
prints, for the picker's composing screen, which reads them in a worker thread while a person edits the strategy.

The model is built once per `groups_key` (the groups do not depend on the strategy's kind, trigger or phase sizes,
only on the grouping and on LoRA); the phases are then planned by the strategy's own `plan_phases` on every edit.
torch, timm, transformers and peft load inside `read_groups` only: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuitune.engine.train.strategy import PhasePlan, plan_phases

if TYPE_CHECKING:
    from tuitune.config import RunProfile, StrategyConfig
    from tuitune.engine.events import Event
    from tuitune.engine.model.groups import LayerGroup


@dataclass(frozen=True)
class GroupsRead:
    """The backbone's groups (input -> head; under LoRA with their adapters) and what they were read for."""

    description: str
    groups: tuple[LayerGroup, ...]
    notes: tuple[str, ...]
    key: tuple[Any, ...]


def groups_key(strategy: StrategyConfig) -> tuple[Any, ...]:
    """What the groups depend on besides the model and the data: the grouping and the LoRA adapters. Imports peft's
    side of the engine (torch): call it once `read_groups` has run."""
    from tuitune.engine.model.lora import uses_lora

    lora = (strategy.lora_rank, strategy.lora_alpha, tuple(strategy.lora_targets)) if uses_lora(strategy) else ()
    return (strategy.coarse, uses_lora(strategy), lora)


def read_groups(
    profile: RunProfile, random_init: bool = True, emit: Callable[[Event], None] | None = None
) -> GroupsRead:
    """Build the profile's backbone (its task's builder, as training does), read its groups, then let it go.
    `random_init` (the composing screen): the groups and their sizes do not depend on the weights, and reading
    them there must neither download nor load a checkpoint. `tuitune layers` loads the weights the profile names
    (`random_init=False`), `emit` showing a download's progress."""
    from tuitune.engine.train.tasks import task_of

    model_cfg = dataclasses.replace(profile.model, pretrained=False, weights="") if random_init else None
    backbone, _, notes = task_of(profile).build(profile, model_cfg, emit=emit)
    return GroupsRead(backbone.description, backbone.groups, tuple(notes), groups_key(profile.strategy))


def first_phase_rows(read: GroupsRead, strategy: StrategyConfig) -> tuple[list[dict], PhasePlan]:
    """The layer table's rows (name, params, adapters, trainable in the first phase) and the whole plan; a
    `UserError` when the strategy does not fit these groups (an unknown `strategy.groups` name)."""
    from tuitune.engine.model.backbone import layer_table

    plan = plan_phases([g.name for g in read.groups], strategy)
    return layer_table(read.groups, set(plan.phases[0])), plan
