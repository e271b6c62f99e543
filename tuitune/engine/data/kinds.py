"""Data kinds as one table: for each `data.kind`, the outputs it yields (found without building anything), how its
datasets are built, and what a model must read to take it. Adding a kind is one builder and one `KINDS` entry; the
engine asks nothing else about `data.kind` (the profile check in config/parse.py and the picker's detail line in
ui/profiles.py name a kind or two for their own messages)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuitune.config import DataConfig, ModelConfig
from tuitune.engine.data import chat, datasets, hfkind, synthetic, text
from tuitune.engine.data.datasets import DataBundle
from tuitune.engine.events import Event
from tuitune.errors import DataError, UserError

__all__ = [
    "KINDS",
    "BuildInputs",
    "DataKind",
    "build_datasets",
    "class_names",
    "data_kind",
    "describe_data",
    "input_task",
    "prepare_data",
]


@dataclass(frozen=True)
class BuildInputs:
    """What a builder may need from the model and the run: `task` is "image" or "text"; `data_config` is timm's
    resolved data config (input_size, mean, std, interpolation, crop_pct); `target` is "class", "value"
    (regression) or "multi" (multi-label), see `tuitune.engine.train.scoring`; `emit` gets `SetupProgressed` for
    the long parts (a folder scan, tokenization)."""

    task: str
    data_config: dict
    tokenizer: Any = None
    max_length: int = 128
    seed: int = 0
    target: str = "class"
    emit: Callable[[Event], None] | None = None


@dataclass(frozen=True)
class DataKind:
    classes: Callable[[DataConfig, str], tuple[str, ...]]  # (cfg, target) -> output names, label order
    build: Callable[[DataConfig, BuildInputs], DataBundle]
    reads: str  # "image", "text", or "either" (synthetic data is made for whatever the model reads)
    class_targets_only: bool = False  # one class per example: no regression or multi-label targets
    transform: dict[str, Any] = field(default_factory=dict)  # overrides of the model's image transform
    # Fetch what the data needs before anything reads it (a download), while the run's setup shows progress.
    prepare: Callable[[DataConfig, Callable[[Event], None] | None], None] | None = None
    # What the data itself says the model reads, for a kind that `reads` "either" (a dataset's image column).
    task_of: Callable[[DataConfig], str] | None = None
    # A few lines on what the data holds (the composing screen); default: its classes.
    describe: Callable[[DataConfig, Callable[[Event], None] | None], tuple[str, ...]] | None = None


def _build_synthetic(cfg: DataConfig, a: BuildInputs) -> DataBundle:
    # looked up on the module at call time, so a benchmark may share one build across runs by patching it
    if a.task == "text":
        return synthetic.build_synthetic_text(cfg, a.tokenizer, a.max_length, a.seed, a.target, a.emit)
    return synthetic.build_synthetic_images(cfg, a.data_config, a.seed, a.target)


KINDS: dict[str, DataKind] = {
    "digits": DataKind(
        classes=datasets.digit_classes,
        reads="image",
        class_targets_only=True,
        build=lambda cfg, a: datasets.build_digits(cfg, a.data_config, a.seed),
        transform=datasets.DIGITS_TRANSFORM,
    ),
    "image_folder": DataKind(
        classes=datasets.image_folder_classes,
        reads="image",
        class_targets_only=True,
        build=lambda cfg, a: datasets.build_image_folder(cfg, a.data_config, a.seed, a.emit),
    ),
    "text": DataKind(
        classes=datasets.text_classes,
        reads="text",
        build=lambda cfg, a: text.build_text(cfg, a.tokenizer, a.max_length, a.seed, a.target, a.emit),
    ),
    "chat": DataKind(
        classes=chat.chat_classes,
        reads="text",
        build=lambda cfg, a: chat.build_chat(cfg, a.tokenizer, a.max_length, a.seed, a.emit),
    ),
    "hf": DataKind(
        classes=hfkind.hf_classes,
        reads="either",
        build=lambda cfg, a: hfkind.build_hf(
            cfg, a.task, a.data_config, a.tokenizer, a.max_length, a.seed, a.target, a.emit
        ),
        prepare=hfkind.prepare,
        task_of=hfkind.hf_task,
        describe=hfkind.describe,
    ),
    "synthetic": DataKind(classes=synthetic.synthetic_classes, reads="either", build=_build_synthetic),
}


def data_kind(cfg: DataConfig) -> DataKind:
    if cfg.kind not in KINDS:
        raise DataError(f"data.kind: unknown kind {cfg.kind!r} (one of {', '.join(KINDS)})")
    return KINDS[cfg.kind]


def prepare_data(cfg: DataConfig, emit: Callable[[Event], None] | None = None) -> None:
    """Fetch the data now if its kind fetches anything (a hub dataset), with progress to `emit`."""
    kind = data_kind(cfg)
    if kind.prepare is not None:
        kind.prepare(cfg, emit)


def describe_data(cfg: DataConfig, emit: Callable[[Event], None] | None = None) -> tuple[str, ...]:
    """A few lines on what the data holds, for the composing screen (a hub dataset is fetched first: `emit` gets
    the progress); a `UserError` when it cannot be read."""
    kind = data_kind(cfg)
    if kind.describe is not None:
        return kind.describe(cfg, emit)
    classes = class_names(cfg)
    return (f"{len(classes)} classes: {', '.join(classes[:8])}{', …' if len(classes) > 8 else ''}",)


def target_kind(loss_kind: str) -> str:
    """What the head predicts for a loss: `value` (regression, mse), `multi` (multi-label, bce), else `class`."""
    return {"mse": "value", "bce": "multi"}.get(loss_kind, "class")


def class_names(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    """The outputs `build_datasets` will yield (class names; ("value",) for regression), found without building
    anything: the model's head is sized from them before the datasets (which need the model's transform or
    tokenizer) exist."""
    kind = data_kind(cfg)
    _check_target(cfg, kind, target)
    return kind.classes(cfg, target)


def _check_target(cfg: DataConfig, kind: DataKind, target: str) -> None:
    if target != "class" and kind.class_targets_only:
        raise DataError(
            f"loss.kind: {cfg.kind} data has one class per example; regression (mse) and multi-label "
            f"(bce) need text or synthetic data"
        )


def input_task(data: DataConfig, model: ModelConfig) -> str:
    """ "image" or "text": what the model reads. The data kind decides (a Hugging Face dataset by its columns),
    except for synthetic data, where a Hugging Face model's own config does (a vision config has an image size)."""
    kind = data_kind(data)
    if kind.reads != "either":
        return kind.reads
    if kind.task_of is not None:
        return kind.task_of(data)
    config_file = Path(model.name) / "config.json"
    if model.source == "hf" and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return "image" if "image_size" in config or "vision_config" in config else "text"
    return "image"


def build_datasets(
    cfg: DataConfig,
    *,
    task: str,
    data_config: dict,
    tokenizer: Any = None,
    max_length: int = 128,
    seed: int = 0,
    target: str = "class",
    emit: Callable[[Event], None] | None = None,
) -> DataBundle:
    """Build train / val / (test) datasets for `cfg.kind` (see `BuildInputs` for the arguments)."""
    if task not in ("image", "text"):
        raise ValueError(f"task must be 'image' or 'text', got {task!r}")
    kind = data_kind(cfg)
    if kind.reads not in (task, "either"):
        raise UserError(f"data.kind: {cfg.kind!r} data does not fit a {task} model")
    if task == "text" and tokenizer is None:
        raise UserError("data.kind: text data needs the model's tokenizer, and none was given")
    _check_target(cfg, kind, target)
    return kind.build(cfg, BuildInputs(task, data_config, tokenizer, max_length, seed, target, emit))
