"""Where a run is told to the world outside its run directory: experiment trackers (`[report]`). The engine's sinks
for them are in `tuitune/engine/report/`; here are their keys and the checks made when a profile is read: a tracker
that is not installed is one line naming the key (exit 2) before anything runs.

Imported by the picker: it must stay free of torch, timm and transformers (and of the trackers themselves:
`importlib.util.find_spec` finds a package without importing it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from tuitune.config.declare import ProfileError, opt

# `[report] to` names -> the package each needs; `pip install 'tuitune[NAME]'` installs it (pyproject's extras).
# The engine's table of sinks (tuitune/engine/report/trackers.py, BACKENDS) has the same names.
TRACKERS = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "trackio": "trackio",
}


@dataclass(frozen=True)
class ReportConfig:
    to: list = opt(
        [],
        "Experiment trackers that receive the run, any of `tensorboard` (event files in `RUN/tensorboard`), "
        "`mlflow` (a SQLite store in the run directory unless `mlflow_uri` or `MLFLOW_TRACKING_URI` says "
        "otherwise), `wandb` (offline into `RUN/wandb` unless W&B is set up: `WANDB_MODE`, `WANDB_API_KEY` or "
        "`wandb login`) and `trackio` (its local store: `trackio show`). Each gets the metrics at every log "
        "step and epoch, the resolved profile as parameters, phase changes, applied commands and questions as "
        "events, the summary and (MLflow, W&B, Trackio) the exported model as an artifact. Each is an extra: "
        "`pip install 'tuitune[wandb]'`. Written off the training thread; a tracker that fails is one "
        "warning and training goes on.",
    )
    project: str = opt("tuitune", "The MLflow experiment, W&B project and Trackio project runs go into.")
    mlflow_uri: str = opt(
        "",
        "MLflow tracking URI (`sqlite:///...`, `http://host:5000`); empty = `MLFLOW_TRACKING_URI` when set, "
        "else `RUN/mlflow.db` with artifacts in `RUN/mlartifacts` (`mlflow ui --backend-store-uri "
        "sqlite:///RUN/mlflow.db`).",
    )


def check_outputs(report: ReportConfig, file: str) -> None:
    """`[report] to`: known names, each once, each installed."""
    seen: set[str] = set()
    for name in report.to:
        if not isinstance(name, str) or name not in TRACKERS:
            raise ProfileError(f"{file}: report.to: {name!r} is not one of {', '.join(TRACKERS)}")
        if name in seen:
            raise ProfileError(f"{file}: report.to: {name!r} is named twice")
        seen.add(name)
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ProfileError(f"{file}: report.to: {name!r} is not installed: pip install 'tuitune[{name}]'")
    if report.to and not report.project.strip():
        raise ProfileError(f"{file}: report.project: must not be empty")
