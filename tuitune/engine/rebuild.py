"""A finished run's model back from its directory (`profile.toml` + `checkpoints/<tag>.safetensors`), for what
comes after or on top of a run: export, compression, distillation from a run's teacher. Kept with the run's records
(and below training) so that the loop's teacher and the after-run tools share it without importing each other."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from tuitune.config import ModelConfig, RunProfile, load_profile
from tuitune.engine.data.kinds import class_names, input_task, target_kind
from tuitune.engine.events import Event
from tuitune.engine.model.backbone import build_backbone
from tuitune.engine.model.groups import Backbone
from tuitune.engine.model.lora import apply_lora, uses_lora
from tuitune.engine.record.checkpoint import load_weights
from tuitune.errors import UserError

__all__ = ["profile_backbone", "rebuild_model", "run_classes"]


def profile_backbone(
    profile: RunProfile,
    model_cfg: ModelConfig | None = None,
    emit: Callable[[Event], None] | None = None,
    classes: tuple[str, ...] | None = None,
) -> tuple[Backbone, tuple[str, ...], list[str]]:
    """The profile's backbone as training builds it (the head sized for the loss's target: one output for mse),
    under LoRA with its adapters: the backbone, its outputs (`classes`, given: a run's recorded ones) and LoRA's
    notes. `model_cfg`: the model section to build from (default `profile.model`)."""
    if classes is None:
        classes = class_names(profile.data, target_kind(profile.loss.kind))
    model_cfg = profile.model if model_cfg is None else model_cfg
    backbone = build_backbone(
        model_cfg, len(classes), task=input_task(profile.data, profile.model), coarse=profile.strategy.coarse, emit=emit
    )
    notes: list[str] = []
    if uses_lora(profile.strategy):  # the same injected names a checkpoint is saved under
        backbone, notes = apply_lora(backbone, profile.strategy)
    return backbone, classes, list(notes)


def run_classes(run_dir: Path, profile: RunProfile) -> tuple[str, ...]:
    """The run's class names: from its `RunStarted` event (the data may have moved since), else from the data."""
    events = run_dir / "events.jsonl"
    if events.is_file():
        with open(events, encoding="utf-8") as f:
            for line in f:
                if '"type":"RunStarted"' in line:
                    return tuple(json.loads(line)["classes"])
    return class_names(profile.data)


Builder = Callable[..., tuple[Backbone, tuple[str, ...], list[str]]]  # `profile_backbone`'s signature


def rebuild_model(
    run_dir: Path, tag: str = "best", builder: Callable[[RunProfile], Builder] | None = None
) -> tuple[RunProfile, Backbone, tuple[str, ...]]:
    """The run's model with `checkpoints/<tag>.safetensors` loaded, on the CPU, in eval mode. `builder`: the
    profile's model builder (its task's: `tuitune.engine.train.tasks.rebuild_run` passes it); a classifier's
    (`profile_backbone`) when not given."""
    run_dir = Path(run_dir)
    if not (run_dir / "profile.toml").is_file():
        raise UserError(f"{run_dir}: no profile.toml here (is this a tuitune run directory?)")
    weights = run_dir / "checkpoints" / f"{tag}.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: no such checkpoint (tags: best, last)")
    profile = load_profile(run_dir / "profile.toml")
    # random init: the checkpoint has every tensor, so neither the hub cache nor `weights` is needed
    model_cfg = dataclasses.replace(profile.model, pretrained=False, weights="")
    profile = dataclasses.replace(profile, model=model_cfg)
    build = builder(profile) if builder is not None else profile_backbone
    backbone, classes, _ = build(profile, classes=run_classes(run_dir, profile))
    load_weights(backbone.model, weights)
    backbone.model.eval()
    return profile, backbone, classes
