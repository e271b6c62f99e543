"""Where a run is told to the world outside its run directory: experiment trackers (`[report]`) and a webhook
(`[notify]`). The engine's sinks for them are in `tuitune/engine/report/`; here are their keys and the checks made
when a profile is read: a tracker that is not installed, or a webhook that is not an http(s) URL, is one line naming
the key (exit 2) before anything runs.

Imported by the picker: it must stay free of torch, timm and transformers (and of the trackers themselves:
`importlib.util.find_spec` finds a package without importing it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from urllib.parse import urlsplit

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


@dataclass(frozen=True)
class NotifyConfig:
    webhook: str = opt(
        "",
        "An http(s) URL to POST to when the run finishes, fails, or asks a person a question (the plateau "
        "trigger's unfreeze, a phase's LR); empty = off. Sent off the training thread; a delivery that still "
        "fails after `tries` is one warning.",
    )
    format: str = opt(
        "auto",
        'The body: `slack` (`{"text": ...}`), `discord` (`{"content": ...}`), `json` (the event\'s '
        "fields, `run`, `run_dir` and `text`); `auto` = slack for hooks.slack.com, discord for discord.com, "
        "else json.",
        choices=("auto", "slack", "discord", "json"),
    )
    timeout_s: float = opt(10.0, "Seconds to wait for the webhook's answer, each try.", gt=0.0, max=300.0)
    tries: int = opt(3, "Tries per notification (1, 2, 4 ... s apart) before it counts as failed.", min=1, max=10)


def check_outputs(report: ReportConfig, notify: NotifyConfig, file: str) -> None:
    """`[report] to`: known names, each once, each installed; `[notify] webhook`: an http(s) URL with a host."""
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
    if notify.webhook:
        _check_url(notify.webhook, f"{file}: notify.webhook")


def _check_url(url: str, where: str) -> None:
    """An http(s) URL with a host. The message never repeats the URL: a webhook's path is its secret."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ProfileError(f"{where}: a URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as e:
        raise ProfileError(f"{where}: not a URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        got = f"{parts.scheme}:" if parts.scheme else "no scheme"
        raise ProfileError(f"{where}: expected an http:// or https:// URL, got {got}")
    if not host:
        raise ProfileError(f"{where}: the URL has no host")
