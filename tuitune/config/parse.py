"""Reading a profile: TOML in, `--set` overrides applied, every key checked against its declaration in
`tuitune.config.schema`, then the rules that span keys. A bad profile is one `ProfileError` line naming the file
and the dotted key; what comes out is a frozen, fully validated `RunProfile`.

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuitune.config.declare import ProfileError, field_default
from tuitune.config.loop import metric_name
from tuitune.config.outputs import check_outputs
from tuitune.config.schema import SECTIONS, AugmentConfig, DataConfig, RunProfile
from tuitune.config.tasks import COMMON_METRICS, TASK_RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# The data keys that only a Hugging Face dataset reads (`data.kind = "hf"`).
HF_DATA_KEYS = ("name", "config", "revision", "split", "val_split", "test_split", "image_column")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")  # huggingface_hub's repo id rules
# Names other tools use for our keys, for the did-you-mean of an unknown key.
ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "wd": "weight_decay",
    "opt": "optimizer",
    "sched": "schedule",
    "lr_scheduler": "schedule",
    "batch": "batch_size",
    "model_name": "name",
    "smoothing": "label_smoothing",
    "clip_grad": "grad_clip",
}


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_value(f: dataclasses.Field, value: Any, where: str, base: Path | None) -> Any:
    """Validate one key against its declaration; return the value to store (paths resolved)."""
    default = field_default(f)
    expected = type(default)
    if isinstance(value, str) and value in f.metadata.get("words", ()):
        return value  # a word the key takes besides its type (`batch_size = "auto"`)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        words = "".join(f" or {w!r}" for w in f.metadata.get("words", ()))
        raise ProfileError(f"{where}: expected {_type_name(default)}{words}, got {_type_name(value)} {value!r}")
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ProfileError(f"{where}: must be a finite number, got {value!r}")  # TOML allows nan and inf
    if meta["choices"] and metric_name(value) in meta["choices"]:
        value = metric_name(value)  # a metric's name before the scores were renamed: old profiles keep working
    if meta["choices"] and value not in meta["choices"]:
        raise ProfileError(f"{where}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta["min"] is not None and value < meta["min"]:
        raise ProfileError(f"{where}: must be >= {meta['min']:g}, got {value!r}")
    if meta["gt"] is not None and value <= meta["gt"]:
        raise ProfileError(f"{where}: must be > {meta['gt']:g}, got {value!r}")
    if meta["max"] is not None and value > meta["max"]:
        raise ProfileError(f"{where}: must be <= {meta['max']:g}, got {value!r}")
    if meta["path"] and value and base is not None and not Path(value).expanduser().is_absolute():
        value = str((base / Path(value).expanduser()).resolve())
    if isinstance(value, list):
        value = tuple(value)  # frozen all the way down
    return value


def _build(cls: type, table: Mapping[str, Any], prefix: str, file: str, base: Path | None) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = (
                [ALIASES[key]]
                if ALIASES.get(key) in fields
                else difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            )
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(fields))}"
            raise ProfileError(f"{file}: {dotted}: unknown key ({hint})")
        f = fields[key]
        if key in SECTIONS and cls is RunProfile:
            if not isinstance(value, dict):
                raise ProfileError(f"{file}: {dotted}: expected a [{key}] table, got {_type_name(value)}")
            values[key] = _build(SECTIONS[key], value, f"{dotted}.", file, base)
        else:
            values[key] = _check_value(f, value, f"{file}: {dotted}", base)
    return cls(**values)


def _cross_check(p: RunProfile, file: str) -> None:
    """Rules that span keys."""
    if not p.model.name:
        raise ProfileError(f"{file}: model.name: required (a timm model name or a Hugging Face model)")
    _check_task(p, file)
    if p.data.kind in ("image_folder", "text", "chat") and not p.data.path:
        raise ProfileError(f"{file}: data.path: required for data.kind = {p.data.kind!r}")
    _check_hf_data(p.data, file)
    if p.strategy.kind == "groups" and not p.strategy.groups:
        raise ProfileError(f"{file}: strategy.groups: required for strategy.kind = 'groups'")
    if p.data.val_fraction + p.data.test_fraction >= 1.0:
        raise ProfileError(f"{file}: data.test_fraction: val_fraction + test_fraction must be < 1")
    for key in ("classes", "source_classes"):
        values = getattr(p.data, key)
        if any(not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= 9 for c in values):
            raise ProfileError(f"{file}: data.{key}: expected digits 0-9, got {list(values)!r}")
    if p.data.source_classes and p.data.kind != "digits":
        raise ProfileError(f'{file}: data.source_classes: only for data.kind = "digits"')
    if p.distill.teacher and p.model.source != "timm":
        raise ProfileError(f'{file}: distill.teacher: distillation needs a timm model (model.source = "timm")')
    if any(not isinstance(g, str) for g in p.strategy.groups):
        raise ProfileError(f"{file}: strategy.groups: expected an array of group names")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in p.loss.class_weights):
        raise ProfileError(f"{file}: loss.class_weights: expected non-negative numbers")
    if p.loss.kind in ("mse", "bce"):  # macro-F1 is counted from single-label predictions
        for key, metric in (
            ("train.checkpoint_metric", p.train.checkpoint_metric),
            ("strategy.plateau_metric", p.strategy.plateau_metric),
            ("early_stopping.metric", p.early_stopping.metric),
        ):
            if metric == "val_macro_f1":
                raise ProfileError(
                    f"{file}: {key}: val_macro_f1 needs a classification loss (cross_entropy, "
                    f"focal), not loss.kind = {p.loss.kind!r}"
                )
    if p.train.restart == "phase" and p.train.schedule not in ("cosine", "onecycle"):
        raise ProfileError(
            f"{file}: train.restart: 'phase' restarts a cosine or onecycle shape, not schedule = {p.train.schedule!r}"
        )
    if p.train.ema_for_best and not p.train.ema_decay:
        raise ProfileError(f"{file}: train.ema_for_best: needs an EMA of the weights (train.ema_decay > 0, e.g. 0.999)")
    if p.train.ema_for_best and p.train.checkpoint_metric not in ("val_score", "val_loss"):  # what the EMA reports
        raise ProfileError(
            f"{file}: train.ema_for_best: the EMA model is scored on the val set; "
            f"train.checkpoint_metric must be val_score or val_loss"
        )
    _check_augment(p, file)
    check_outputs(p.report, p.notify, file)


def _check_task(p: RunProfile, file: str) -> None:
    """What the task reads (`tuitune.config.tasks`): its data kinds, model sources and metrics, and nothing it has
    no use for."""
    task, rules = p.model.task, TASK_RULES[p.model.task]
    if p.data.kind not in rules.data_kinds:
        raise ProfileError(
            f"{file}: data.kind: {p.data.kind!r} data does not fit model.task = {task!r} "
            f"(it reads {', '.join(rules.data_kinds)})"
        )
    if p.model.source not in rules.sources:
        raise ProfileError(
            f"{file}: model.source: model.task = {task!r} is built from {' or '.join(rules.sources)} models, "
            f"not {p.model.source!r}"
        )
    for key, metric in (
        ("train.checkpoint_metric", p.train.checkpoint_metric),
        ("strategy.plateau_metric", p.strategy.plateau_metric),
        ("early_stopping.metric", p.early_stopping.metric),
    ):
        if metric not in COMMON_METRICS + rules.metrics:
            raise ProfileError(f"{file}: {key}: model.task = {task!r} reports no {metric}")
        for needed_by, dotted in rules.needs:
            section, _, name = dotted.partition(".")
            if metric == needed_by and not getattr(getattr(p, section), name):
                raise ProfileError(f"{file}: {key}: {metric} needs {dotted} > 0 (how many examples to score)")
    for dotted in rules.unused:
        section, _, key = dotted.partition(".")
        default = field_default(next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key))
        value = getattr(getattr(p, section), key)
        if (tuple(value) if isinstance(value, list) else value) != (
            tuple(default) if isinstance(default, list) else default
        ):
            raise ProfileError(f"{file}: {dotted}: not used by model.task = {task!r}; remove the key")


def _check_hf_data(d: DataConfig, file: str) -> None:
    """A Hugging Face dataset is named by exactly one of a hub id and a local path; its own keys are refused for
    the other kinds (never silently ignored)."""
    if d.kind != "hf":
        defaults = DataConfig()
        for key in HF_DATA_KEYS:
            if getattr(d, key) != getattr(defaults, key):
                raise ProfileError(f'{file}: data.{key}: only for data.kind = "hf"')
        return
    if bool(d.name) == bool(d.path):
        which = "not both" if d.name else "one of them"
        raise ProfileError(
            f'{file}: data.name: data.kind = "hf" reads a hub id (data.name, e.g. "stanfordnlp/imdb") or a local '
            f"folder or file (data.path), {which}"
        )
    if d.name and (not HUB_ID.fullmatch(d.name) or "--" in d.name or ".." in d.name):
        raise ProfileError(f"{file}: data.name: {d.name!r} is not a hub dataset id (org/name)")
    for key in ("config", "revision"):
        if d.path and getattr(d, key):
            raise ProfileError(f"{file}: data.{key}: only for a hub dataset (data.name), not a local data.path")
    if not d.split:
        raise ProfileError(f"{file}: data.split: required (the split to train on, e.g. train)")
    for key, other in (("val_split", "split"), ("test_split", "split"), ("test_split", "val_split")):
        if getattr(d, key) and getattr(d, key) == getattr(d, other):
            raise ProfileError(f"{file}: data.{key}: {getattr(d, key)!r} is data.{other} already")


def _check_augment(p: RunProfile, file: str) -> None:
    """Augmentation keys are used or refused, never silently ignored."""
    defaults = AugmentConfig()
    changed = [
        f.name for f in dataclasses.fields(AugmentConfig) if getattr(p.augment, f.name) != getattr(defaults, f.name)
    ]
    if p.data.kind in ("text", "chat") and changed:
        raise ProfileError(f"{file}: augment.{changed[0]}: text data has no augmentation in tuitune; remove the key")
    timm_only = [k for k in changed if k not in ("train_transform", "mixup", "cutmix")]
    if timm_only and p.augment.train_transform != "timm":
        raise ProfileError(f'{file}: augment.{timm_only[0]}: only used with augment.train_transform = "timm"')
    if (p.augment.mixup or p.augment.cutmix) and p.loss.kind in ("mse", "bce"):
        raise ProfileError(f"{file}: augment.mixup: mixup/cutmix need a single-label loss (cross_entropy, focal)")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.epochs=1` -> (['train', 'epochs'], 1). The value is read as TOML, else taken as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {item}: expected KEY=VALUE, e.g. --set train.epochs=1")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(table: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A deep copy of `table` with the `--set KEY=VALUE` overrides applied: `table` (a sweep's base, reused for
    every trial) is never changed, however deep the key."""
    out = copy.deepcopy(dict(table))
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ProfileError(f"--set {item}: {k} is not a section")
        node[keys[-1]] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: TOML syntax error: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read: {e}") from None


def profile_from_dict(table: Mapping[str, Any], file: str = "<profile>", base: Path | None = None) -> RunProfile:
    profile = _build(RunProfile, table, "", file, base)
    if not profile.name:
        profile = dataclasses.replace(profile, name=Path(file).stem if file != "<profile>" else "run")
    _cross_check(profile, file)
    return dataclasses.replace(profile, source_path=file)


def load_profile(path: str | Path, overrides: list[str] | None = None) -> RunProfile:
    """Read, override and validate a profile. Relative paths inside resolve against the profile's own folder
    (after following a symlink, so `profiles/demo.toml -> tuitune/profiles/demo.toml` finds its weights)."""
    path = Path(path)
    table = apply_overrides(read_toml(path), overrides or [])
    table.pop("sweep", None)  # the search space of `tuitune sweep` (tuitune/sweep/space.py checks it there)
    return profile_from_dict(table, str(path), path.resolve().parent)
