"""The `[sweep]` table of a profile: the search space over profile keys and the sweep's settings.

    [sweep]
    metric = "val_score"            # default: the profile's train.checkpoint_metric
    direction = "maximize"          # default: minimize for *_loss and RMSE (loss.kind = "mse"), else maximize
    pruner = "median"               # median, hyperband or none
    startup_trials = 2              # median: trials finished before it prunes anything
    trials = 12                     # default for --trials
    keep = "best"                   # best: ended trials but the best lose their checkpoints and export; or all
    "train.lr" = { log = [1e-5, 1e-2] }
    "strategy.kind" = ["full", "progressive", "lp_ft"]
    "strategy.lr_decay" = [0.3, 1.0]

A quoted dotted key is a profile key; its value is `{ log = [lo, hi] }`, `{ range = [lo, hi] }` (optionally with
`step`), `{ choices = [...] }`, a two-number array `[lo, hi]` (a range: integers if both are) or any other array
(choices). Every bound and choice is checked by the profile validation itself, applied to the profile as an
override, so a bad space gets the same one-line error as a bad profile, before any trial runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.config import ProfileError, RunProfile, apply_overrides, profile_from_dict
from tuitune.config.dump import toml_value
from tuitune.config.loop import METRICS, metric_name

SETTINGS = ("metric", "direction", "pruner", "startup_trials", "trials", "keep")
KEEP = ("best", "all")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Param:
    key: str  # a dotted profile key, also the Optuna parameter name
    kind: str  # "log", "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def candidates(self) -> tuple[Any, ...]:
        """The values the profile validation checks: both bounds, or every choice."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log", step=self.step)


@dataclass(frozen=True)
class SweepSpec:
    params: tuple[Param, ...]
    metric: str
    direction: str  # "maximize" or "minimize"
    pruner: str
    startup_trials: int
    trials: int
    keep: str = "best"  # whose checkpoints stay once trials end: the best trial's, or all


def override_text(key: str, value: Any) -> str:
    """`train.lr=0.001`, `strategy.kind="full"`: a `--set` item that parse_override reads back as the same value."""
    return f"{key}={toml_value(value)}"


def set_line(params: Mapping[str, Any]) -> str:
    """The command-line tail that reproduces a trial's profile from the base profile (shell-quoted)."""
    import shlex

    return " ".join(f"--set {shlex.quote(override_text(k, v))}" for k, v in params.items())


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param(key: str, value: Any, where: str) -> Param:
    """One search dimension from its TOML value."""
    if isinstance(value, list):
        if len(value) == 2 and all(_number(v) for v in value):
            kind = "int" if all(isinstance(v, int) for v in value) else "float"
            value = {"range": value} if kind == "float" else {"range": value, "step": 1}
        else:
            value = {"choices": value}
    if not isinstance(value, dict):
        raise ProfileError(
            f"{where}: expected {{ log = [lo, hi] }}, {{ range = [lo, hi] }}, {{ choices = [...] }} "
            f"or an array, got {value!r}"
        )
    forms = [k for k in ("log", "range", "choices") if k in value]
    extra = set(value) - {"log", "range", "choices", "step"}
    if len(forms) != 1 or extra:
        raise ProfileError(
            f"{where}: give exactly one of log, range, choices (and step with range), got "
            f"{', '.join(sorted(value)) or 'nothing'}"
        )
    form = forms[0]
    if form == "choices":
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ProfileError(f"{where}: choices: expected a non-empty array, got {choices!r}")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise ProfileError(f"{where}: choices: only numbers, strings and booleans, got {choices!r}")
        return Param(key, "choice", choices=tuple(choices))
    bounds = value[form]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        raise ProfileError(f"{where}: {form}: expected [low, high] numbers, got {bounds!r}")
    low, high = bounds
    if not low < high:
        raise ProfileError(f"{where}: {form}: low must be below high, got [{low!r}, {high!r}]")
    if form == "log" and low <= 0:
        raise ProfileError(f"{where}: log: bounds must be > 0, got [{low!r}, {high!r}]")
    step = value.get("step")
    if step is not None and (form != "range" or not _number(step) or step <= 0):
        raise ProfileError(f"{where}: step: a positive number, with range only, got {step!r}")
    is_int = form == "range" and isinstance(low, int) and isinstance(high, int) and isinstance(step, int)
    return Param(key, "int" if is_int else ("log" if form == "log" else "float"), low, high, step)


def _setting(table: Mapping[str, Any], name: str, default: Any, where: str, choices: tuple = ()) -> Any:
    value = table.get(name, default)
    if choices and value not in choices:
        raise ProfileError(f"{where}.{name}: {value!r} is not one of {', '.join(choices)}")
    if isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ProfileError(f"{where}.{name}: expected a positive integer, got {value!r}")
    return value


def parse_sweep(table: Mapping[str, Any], file: str, base: Path | None) -> tuple[SweepSpec, RunProfile]:
    """Parse and check the profile's `[sweep]` table against the rest of the profile (`table` without it); that
    profile, validated on the way, comes back too."""
    sweep = table.get("sweep")
    if not isinstance(sweep, dict):
        raise ProfileError(
            f'{file}: sweep: no [sweep] table (the search space: "train.lr" = {{ log = [1e-5, 1e-2] }}, ...)'
        )
    rest = {k: v for k, v in table.items() if k != "sweep"}
    profile = profile_from_dict(rest, file, base)
    unknown = [k for k in sweep if "." not in k and k not in SETTINGS]
    if unknown:
        raise ProfileError(
            f"{file}: sweep.{unknown[0]}: unknown key (settings: {', '.join(SETTINGS)}; a profile "
            f'key to search is quoted and dotted, e.g. "train.lr")'
        )
    params = tuple(_param(k, v, f'{file}: sweep."{k}"') for k, v in sweep.items() if "." in k)
    if not params:
        raise ProfileError(f'{file}: sweep: no profile key to search (e.g. "train.lr" = {{ log = [1e-5, 1e-2] }})')
    for p in params:
        for value in p.candidates():
            _validate(rest, p.key, value, file, base)
    named = {"metric": metric_name(sweep["metric"])} if "metric" in sweep else {}  # an old name reads as its new one
    metric = _setting(named, "metric", profile.train.checkpoint_metric, f"{file}: sweep", METRICS)
    direction = _setting(
        sweep, "direction", natural_direction(profile, metric), f"{file}: sweep", ("maximize", "minimize")
    )
    where = f"{file}: sweep"
    spec = SweepSpec(
        params,
        metric,
        direction,
        _setting(sweep, "pruner", "median", where, PRUNERS),
        _setting(sweep, "startup_trials", 2, where),
        _setting(sweep, "trials", 12, where),
        _setting(sweep, "keep", "best", where, KEEP),
    )
    return spec, profile


def natural_direction(profile: RunProfile, metric: str) -> str:
    """Which way `metric` improves for this profile: a *_score is RMSE under an mse loss; an F1 is better higher
    whatever the task's score."""
    lower = metric.endswith("_loss") or (profile.loss.kind == "mse" and not metric.endswith("_f1"))
    return "minimize" if lower else "maximize"


def _validate(rest: Mapping[str, Any], key: str, value: Any, file: str, base: Path | None) -> None:
    """The profile validation, on the profile with this one value applied."""
    try:
        profile_from_dict(apply_overrides(rest, [override_text(key, value)]), file, base)
    except ProfileError as e:
        inner = str(e).removeprefix(f"{file}: ")
        raise ProfileError(f'{file}: sweep."{key}" = {value!r}: {inner}') from None
