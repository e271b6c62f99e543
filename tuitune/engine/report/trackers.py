"""Experiment trackers as event sinks: `[report] to = ["tensorboard", "mlflow", "wandb", "trackio"]`.

`TrackerSink` turns the run's events into a few calls every tracker understands (`Backend`: open with the
resolved profile as parameters, metrics at a step, an event's text at a step, the summary, an artifact, close);
each tracker's library makes those calls in its own way (`backends.py`). Which name is which backend is the table
`BACKENDS`. All of it runs on the relay's thread (`relay.py`), never on the training thread.

What a tracker receives, by event:

| event              | as                                                                                  |
| ------------------ | ----------------------------------------------------------------------------------- |
| `RunStarted`       | the tracker run opens; the resolved profile as its parameters                       |
| `MetricsUpdated`   | `train/loss`, `train/<metric>`, `train/lr` (the head's), `train/samples_per_s`, ... |
| `EpochEnded`       | `val/loss`, `val/<metric>`, `epoch/train_loss`, `epoch/train_<metric>`, `epoch`, `phase` |
| `PhaseChanged`     | `phase` at its step, and an event ("phase 2/6: unfroze layer4 (manual)")            |
| `CommandApplied`, `CommandRefused`, `UnfreezeSuggested`, `LRFound`, `Warned` | an event at its step        |
| `RunFinished`      | the summary; the exported model as an artifact; the tracker run closes              |
| `RunFailed`        | the summary (status failed); the tracker run closes as failed                       |

`<metric>` is the run's score: `acc`, `rmse` or `f1`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from tuitune.config import RunProfile, dump_toml
from tuitune.config.outputs import ReportConfig
from tuitune.engine.events import (
    CommandApplied,
    CommandRefused,
    EpochEnded,
    Event,
    LRFound,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    UnfreezeSuggested,
    Warned,
)
from tuitune.engine.record.runlog import summarize
from tuitune.engine.report.backends import MLflow, RunInfo, TensorBoard, Trackio, WandB

__all__ = ["BACKENDS", "Backend", "TrackerSink", "brief_summary", "flat_params"]


class Backend(Protocol):
    """One tracker's library behind the calls `TrackerSink` makes (see `backends.py`): `prepare` at once (the
    library's import and set-up, while the run sets itself up), `open` at `RunStarted`."""

    def prepare(self, run_dir: Path, config: ReportConfig) -> None: ...

    def open(self, run: RunInfo) -> None: ...

    def log_metrics(self, values: dict[str, float], step: int) -> None: ...

    def log_event(self, title: str, text: str, step: int) -> None: ...

    def log_summary(self, summary: dict[str, Any], full: dict[str, Any]) -> None: ...

    def log_artifact(self, path: Path, name: str) -> None: ...

    def flush(self) -> None: ...

    def close(self, status: str) -> None: ...


# `[report] to` names -> the tracker each writes with (tuitune.config.outputs.TRACKERS has the same names).
BACKENDS: dict[str, Callable[[], Backend]] = {
    "tensorboard": TensorBoard,
    "mlflow": MLflow,
    "wandb": WandB,
    "trackio": Trackio,
}


def flat_params(profile: dict[str, Any]) -> dict[str, Any]:
    """The resolved profile as "section.key" -> value."""
    out: dict[str, Any] = {}
    for key, value in profile.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/..." if parts.hostname else "..."


def redacted_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The resolved profile as trackers get it: the webhook's URL, a secret (its path is the key), as its scheme and
    host only."""
    notify = profile.get("notify")
    if isinstance(notify, dict) and notify.get("webhook"):
        return {**profile, "notify": {**notify, "webhook": redact_url(notify["webhook"])}}
    return profile


def brief_summary(full: dict[str, Any]) -> dict[str, Any]:
    """The summary's figures a tracker shows at a glance (numbers and short strings; summary.json has the rest)."""
    out: dict[str, Any] = {"status": full.get("status"), "stop_reason": full.get("stop_reason") or ""}
    for key in ("epochs", "global_step", "samples_per_s", "wall_s"):
        if isinstance(full.get(key), (int, float)):
            out[key] = full[key]
    best = full.get("best") or {}
    if isinstance(best.get("value"), (int, float)):
        out[f"best_{best.get('metric', 'val_score')}"] = best["value"]
        out["best_epoch"] = best.get("epoch")
    for part in ("final", "test"):
        for key, value in (full.get(part) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{part}_{key}"] = value
    return out


class TrackerSink:
    """One tracker fed by the relay: the run's events as `Backend` calls (the table in the module docstring)."""

    wants = frozenset(
        {
            RunStarted,
            MetricsUpdated,
            EpochEnded,
            PhaseChanged,
            CommandApplied,
            CommandRefused,
            UnfreezeSuggested,
            LRFound,
            Warned,
            RunFinished,
            RunFailed,
        }
    )

    def __init__(self, name: str, backend: Backend, profile: RunProfile, run_dir: Path) -> None:
        self.name = name
        self.backend = backend
        self.config = profile.report
        self.run_dir = run_dir
        self.started: RunStarted | None = None
        self.metric = "score"
        self.step = 0  # the latest global step seen: where a question (no step of its own) is placed
        self.closed = False

    @classmethod
    def named(cls, name: str, profile: RunProfile, run_dir: Path) -> TrackerSink:
        return cls(name, BACKENDS[name](), profile, run_dir)

    def start(self) -> None:
        self.backend.prepare(self.run_dir, self.config)

    def handle(self, event: Event) -> None:
        if self.started is None and not isinstance(event, RunStarted):
            return  # nothing is open before the run starts (a run that fails first has nothing to close)
        self.step = max(self.step, getattr(event, "global_step", 0))
        _HANDLERS[type(event)](self, event)

    def flush(self) -> None:
        if self.started is not None and not self.closed:
            self.backend.flush()

    def close(self) -> None:
        if self.started is not None and not self.closed:  # the run's end never came (the relay gave up)
            self.closed = True
            self.backend.close("failed")

    # --------------------------------------------------------------------------------------------- handlers
    def _started(self, e: RunStarted) -> None:
        self.started, self.metric = e, e.metric
        profile = redacted_profile(e.profile)
        self.backend.open(
            RunInfo(
                name=self.run_dir.name,
                run_dir=self.run_dir,
                project=self.config.project,
                profile=profile,
                params=flat_params(profile),
                profile_toml=dump_toml(profile),
            )
        )

    def _metrics(self, e: MetricsUpdated) -> None:
        values = {
            "train/loss": e.train_loss,
            f"train/{self.metric}": e.train_score,
            "train/samples_per_s": e.samples_per_s,
        }
        if e.lrs:
            values["train/lr"] = e.lrs[-1]
        if e.gpu_mem_gb is not None:
            values["train/gpu_mem_gb"] = e.gpu_mem_gb
        values.update({f"train/{k}": v for k, v in e.extra.items()})
        self.backend.log_metrics(_finite(values), e.global_step)

    def _epoch(self, e: EpochEnded) -> None:
        values = {
            "epoch": e.epoch,
            "phase": e.phase + 1,
            "val/loss": e.val_loss,
            f"val/{self.metric}": e.val_score,
            "epoch/train_loss": e.train_loss,
            f"epoch/train_{self.metric}": e.train_score,
            "epoch/seconds": e.epoch_s,
        }
        values.update({f"epoch/{k}": v for k, v in e.extra.items()})
        self.backend.log_metrics(_finite(values), e.global_step)

    def _phase(self, e: PhaseChanged) -> None:
        self.backend.log_metrics({"phase": e.phase + 1}, e.global_step)
        unfrozen = f": unfroze {', '.join(e.unfrozen)}" if e.unfrozen else ""
        self.backend.log_event("phase", f"phase {e.phase + 1}/{e.num_phases}{unfrozen} ({e.reason})", e.global_step)

    def _command(self, e: CommandApplied) -> None:
        text = e.command + (f": {e.detail}" if e.detail else "") + (f" (from {e.sender})" if e.sender else "")
        self.backend.log_event("command", text, e.global_step)

    def _refused(self, e: CommandRefused) -> None:
        self.backend.log_event("command refused", e.reason + (f" (from {e.sender})" if e.sender else ""), self.step)

    def _asked(self, e: UnfreezeSuggested) -> None:
        text = f"{e.metric} flat for {e.epochs} epochs: unfreeze {', '.join(e.next_groups)}?"
        self.backend.log_event("question", text + (" (the run waits)" if e.waiting else ""), self.step)

    def _lr(self, e: LRFound) -> None:
        text = f"suggests LR {e.suggestion:.3g} (now {e.current_lr:.3g})" if e.found else e.no_suggestion_text()
        self.backend.log_event("lr finder", text, e.global_step)

    def _warned(self, e: Warned) -> None:
        self.backend.log_event("warning", e.message, e.global_step or self.step)

    def _summary(self, e: RunFinished | RunFailed) -> dict[str, Any]:
        """summary.json's content, the webhook's URL redacted."""
        full = summarize(e, self.started)
        if isinstance(full.get("profile"), dict):
            full["profile"] = redacted_profile(full["profile"])
        return full

    def _finished(self, e: RunFinished) -> None:
        full = self._summary(e)
        self.backend.log_summary(brief_summary(full), full)
        if e.export_dir and Path(e.export_dir).is_dir():
            self.backend.log_artifact(Path(e.export_dir), f"{self.run_dir.name}-model")
        self.closed = True
        self.backend.close(e.status)

    def _failed(self, e: RunFailed) -> None:
        full = self._summary(e)
        self.backend.log_summary(brief_summary(full), full)
        self.closed = True
        self.backend.close("failed")


def _finite(values: dict[str, float]) -> dict[str, float]:
    """Numbers a tracker accepts (MLflow refuses NaN; a skipped step's loss can be one)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


_HANDLERS: dict[type, Callable[[TrackerSink, Any], None]] = {
    RunStarted: TrackerSink._started,
    MetricsUpdated: TrackerSink._metrics,
    EpochEnded: TrackerSink._epoch,
    PhaseChanged: TrackerSink._phase,
    CommandApplied: TrackerSink._command,
    CommandRefused: TrackerSink._refused,
    UnfreezeSuggested: TrackerSink._asked,
    LRFound: TrackerSink._lr,
    Warned: TrackerSink._warned,
    RunFinished: TrackerSink._finished,
    RunFailed: TrackerSink._failed,
}
