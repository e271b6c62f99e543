"""Run profiles: TOML files parsed into frozen dataclasses and validated at the edge.

- `declare`: how a key is declared (`opt(...)`) and read back;
- `schema`: every key, declared once with its default, its documentation and its rules (`opt(...)`), and the whole
  profile (`RunProfile`); `loop`: the training loop's sections (`[train]`, `[strategy]`, `[early_stopping]`);
- `parse`: reading a file, `--set` overrides, validation against the declarations and across keys;
- `dump`: the resolved profile back to plain data and TOML (what a run directory records).

The names below are the package's public face: the rest of tuitune imports them from `tuitune.config`.
Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

from tuitune.config.declare import ProfileError, opt
from tuitune.config.dump import dump_toml, profile_to_dict, toml_value
from tuitune.config.loop import METRICS, OLD_VALUES, EarlyStoppingConfig, StrategyConfig, TrainConfig, metric_name
from tuitune.config.parse import (
    ALIASES,
    apply_overrides,
    load_profile,
    parse_override,
    profile_from_dict,
    read_toml,
)
from tuitune.config.schema import (
    SECTIONS,
    AugmentConfig,
    CompressConfig,
    DataConfig,
    DistillConfig,
    GenerateConfig,
    LossConfig,
    ModelConfig,
    RegularizationConfig,
    RunProfile,
)

__all__ = [
    "ALIASES",
    "METRICS",
    "OLD_VALUES",
    "SECTIONS",
    "AugmentConfig",
    "CompressConfig",
    "DataConfig",
    "DistillConfig",
    "EarlyStoppingConfig",
    "GenerateConfig",
    "LossConfig",
    "ModelConfig",
    "ProfileError",
    "RegularizationConfig",
    "RunProfile",
    "StrategyConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_toml",
    "load_profile",
    "metric_name",
    "opt",
    "parse_override",
    "profile_from_dict",
    "profile_to_dict",
    "read_toml",
    "toml_value",
]
