"""Each tracker's own library behind `trackers.Backend`: TensorBoard (torch's `SummaryWriter`), MLflow
(`MlflowClient`), W&B (`wandb.init`) and Trackio (`trackio.init`). Their formats are theirs: nothing here writes
one by hand. Each library is imported in `prepare`, which the relay's thread runs once the session has imported
the engine, while the training thread builds the model and the data, so the first training steps share the
interpreter less with the trackers' imports and set-up; `open` starts the tracker's run at `RunStarted`.

| tracker     | where                                   | events                     | summary      | artifact  |
| ----------- | --------------------------------------- | -------------------------- | ------------ | --------- |
| tensorboard | `RUN/tensorboard`                       | text (Text tab), per step  | text         | (none)    |
| mlflow      | `RUN/mlflow.db` + `RUN/mlartifacts` (*) | tags `event.NNNN`, a file  | metrics, file | `model/` |
| wandb       | `RUN/wandb` (offline unless set up)     | `event` in history, table  | run summary  | model     |
| trackio     | its local store (`TRACKIO_DIR`)         | alerts                     | metrics, alert | model   |

(*) unless `report.mlflow_uri` or `MLFLOW_TRACKING_URI` names a store.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.config.outputs import ReportConfig

__all__ = ["MLflow", "RunInfo", "TensorBoard", "Trackio", "WandB"]


@dataclass(frozen=True)
class RunInfo:
    """What a tracker run opens with."""

    name: str  # the run directory's name: unique, and what `tuitune runs` lists
    run_dir: Path
    project: str
    profile: dict[str, Any]  # the resolved profile, nested (W&B's config takes it so)
    params: dict[str, Any]  # the same, flat: "train.lr" -> 0.001
    profile_toml: str


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _safe_name(name: str) -> str:
    """An artifact name W&B and Trackio accept: letters, digits, `-`, `_`, `.`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120] or "model"


class TensorBoard:
    """Event files in `RUN/tensorboard` (`tensorboard --logdir runs` shows every run). Events are text summaries:
    each step's under `events`, and at the end the whole list under `events/all` (TensorBoard shows 10 samples of
    a text tag unless told `--samples_per_plugin text=N`). TensorBoard keeps no artifacts."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.pending: dict[int, list[str]] = {}
        self.events: list[tuple[int, str, str]] = []
        self.step = 0

    def prepare(self, run_dir: Path, config: ReportConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), flush_secs=10)

    def open(self, run: RunInfo) -> None:
        self.writer.add_text("profile", "```toml\n" + run.profile_toml + "```", 0)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.step = max(self.step, step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_event(self, title: str, text: str, step: int) -> None:
        self.step = max(self.step, step)
        self.pending.setdefault(step, []).append(f"**{title}**: {text}")
        self.events.append((step, title, text))

    def log_summary(self, summary: dict[str, Any], full: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=2) + "\n```", self.step)

    def log_artifact(self, path: Path, name: str) -> None:
        pass  # TensorBoard keeps no files

    def flush(self) -> None:
        for step, texts in sorted(self.pending.items()):  # one entry per step: TensorBoard shows one per step
            self.writer.add_text("events", "  \n".join(texts), step)
        self.pending.clear()

    def close(self, status: str) -> None:
        self.flush()
        if self.events:
            rows = "\n".join(f"| {s} | {t} | {x.replace('|', '/')} |" for s, t, x in self.events)
            self.writer.add_text("events/all", "| step | kind | event |\n| --- | --- | --- |\n" + rows, self.step)
        self.writer.close()


class MLflow:
    """An MLflow run through `MlflowClient`: by default in a SQLite store in the run directory (MLflow 3 refuses
    a new file store), or in the store `report.mlflow_uri` / `MLFLOW_TRACKING_URI` names. Metrics are buffered and
    written in batches (`log_batch`) at most every `BATCH_S` seconds: each batch is a SQLite transaction of ~7 ms
    CPU, too much for every log step; events are tags (`event.0001` ...) and, at the end, `events.txt`."""

    BATCH_S = 5.0

    def __init__(self) -> None:
        self.client: Any = None
        self.experiment = ""
        self.run_id = ""
        self.metrics: list[Any] = []
        self.tags: list[Any] = []
        self.events: list[str] = []
        self.step = 0
        self.written = 0.0  # time.monotonic() of the last batch

    def prepare(self, run_dir: Path, config: ReportConfig) -> None:
        """The client and its store (creating a new SQLite store's tables takes seconds) and the experiment."""
        from mlflow.tracking import MlflowClient

        uri = config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        artifacts = None
        if not uri:
            uri = "sqlite:///" + str((run_dir / "mlflow.db").resolve())
            artifacts = (run_dir / "mlartifacts").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(config.project)
        self.experiment = (
            found.experiment_id if found else self.client.create_experiment(config.project, artifact_location=artifacts)
        )

    def open(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        tags = {"tuitune.run_dir": str(run.run_dir.resolve())}
        self.run_id = self.client.create_run(self.experiment, run_name=run.name, tags=tags).info.run_id
        params = [Param(k[:250], _param_text(v)) for k, v in run.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, run.profile_toml, "profile.toml")

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self.step = max(self.step, step)
        now = int(time.time() * 1000)
        self.metrics.extend(Metric(k, v, now, step) for k, v in values.items())

    def log_event(self, title: str, text: str, step: int) -> None:
        from mlflow.entities import RunTag

        line = f"step {step} · {title}: {text}"
        self.events.append(line)
        self.tags.append(RunTag(f"event.{len(self.events):04d}", line[:5000]))

    def log_summary(self, summary: dict[str, Any], full: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.log_metrics({f"summary/{k}": v for k, v in _numbers(summary).items()}, self.step)
        self.tags += [RunTag("status", str(summary["status"])), RunTag("stop_reason", str(summary["stop_reason"]))]
        self.write()
        self.client.log_dict(self.run_id, full, "summary.json")

    def log_artifact(self, path: Path, name: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path="model")

    def flush(self) -> None:
        if time.monotonic() - self.written >= self.BATCH_S:
            self.write()

    def write(self) -> None:
        self.written = time.monotonic()
        while self.metrics or self.tags:  # at most 1000 metrics and 100 tags a batch
            metrics, self.metrics = self.metrics[:1000], self.metrics[1000:]
            tags, self.tags = self.tags[:100], self.tags[100:]
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def close(self, status: str) -> None:
        self.write()
        if self.events:
            self.client.log_text(self.run_id, "\n".join(self.events) + "\n", "events.txt")
        ended = {"finished": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        self.client.set_terminated(self.run_id, ended)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit for a parameter's value


class WandB:
    """A W&B run, offline into `RUN/wandb` unless the user has set W&B up (`WANDB_MODE` is honoured as it is;
    else an API key, from `WANDB_API_KEY` or `wandb login`, means online). `wandb sync RUN/wandb/offline-run-*`
    uploads an offline run later. A step's metrics and events go in one history row (a W&B row is per step); the
    events as the row's `event` text, and all of them as the `events` table at the end."""

    def __init__(self) -> None:
        self.run: Any = None
        self.row: dict[str, Any] = {}
        self.row_step: int | None = None
        self.events: list[list[Any]] = []
        self.step = 0

    def prepare(self, run_dir: Path, config: ReportConfig) -> None:
        import wandb

        wandb.setup()  # starts W&B's service process now, not at the first step

    def open(self, run: RunInfo) -> None:
        import wandb

        # WANDB_MODE set: W&B's own choice (None reads it); else online only with a key
        mode: Any = None if os.environ.get("WANDB_MODE") else "online" if _wandb_logged_in() else "offline"
        self.run = wandb.init(
            project=run.project,
            name=run.name,
            dir=str(run.run_dir),
            config=run.profile,
            reinit="create_new",  # several runs in one process (a sweep, the dashboard's next run) stay apart
            settings=wandb.Settings(console="off", silent=True),  # console="off": leave sys.stdout to tuitune
            mode=mode,
        )

    def _at(self, step: int) -> None:
        if self.row_step is not None and step != self.row_step:
            self._commit()
        self.row_step, self.step = step, max(self.step, step)

    def _commit(self) -> None:
        if self.row and self.row_step is not None:
            self.run.log(self.row, step=self.row_step)
        self.row = {}

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._at(step)
        self.row.update(values)

    def log_event(self, title: str, text: str, step: int) -> None:
        self._at(step)
        line = f"{title}: {text}"
        self.row["event"] = f"{self.row['event']} | {line}" if "event" in self.row else line
        self.events.append([step, title, text])

    def log_summary(self, summary: dict[str, Any], full: dict[str, Any]) -> None:
        self.run.summary.update(summary)

    def log_artifact(self, path: Path, name: str) -> None:
        import wandb

        artifact = wandb.Artifact(_safe_name(name), type="model")
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact)

    def flush(self) -> None:
        self._commit()

    def close(self, status: str) -> None:
        import wandb

        self._commit()
        if self.events:
            self.run.log({"events": wandb.Table(columns=["step", "kind", "event"], data=self.events)}, step=self.step)
        self.run.finish(exit_code=1 if status == "failed" else 0)


def _wandb_logged_in() -> bool:
    """An API key W&B would use: the environment's, or the one `wandb login` saved in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import wbnetrc

        return bool(wbnetrc.read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))
    except Exception:  # an older or newer wandb without this reader: no key found, offline
        return False


class Trackio:
    """A Trackio run in its local store (`TRACKIO_DIR`, by default in the Hugging Face cache: `trackio show`), or
    where `TRACKIO_SPACE_ID` / `TRACKIO_SERVER_URL` send it. Events are alerts (shown on the dashboard, at their
    step); the summary is `summary/...` metrics and an alert; the model an artifact."""

    def __init__(self) -> None:
        self.run: Any = None
        self.step = 0

    def prepare(self, run_dir: Path, config: ReportConfig) -> None:
        import trackio  # noqa: F401 (imported now, used at `open`)

    def open(self, run: RunInfo) -> None:
        import trackio

        config = {
            k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in run.params.items()
        }
        self.run = trackio.init(project=run.project, name=run.name, config=config, embed=False)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.step = max(self.step, step)
        self.run.log(values, step=step)

    def log_event(self, title: str, text: str, step: int) -> None:
        from trackio import AlertLevel

        level = AlertLevel.WARN if title in ("warning", "question") else AlertLevel.INFO
        self.run.alert(title=title, text=text, level=level, step=step)

    def log_summary(self, summary: dict[str, Any], full: dict[str, Any]) -> None:
        from trackio import AlertLevel

        self.run.log({f"summary/{k}": v for k, v in _numbers(summary).items()}, step=self.step)
        failed = summary["status"] == "failed"
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items() if v != "")
        self.run.alert(
            title=f"run {summary['status']}", text=text, level=AlertLevel.ERROR if failed else AlertLevel.INFO
        )

    def log_artifact(self, path: Path, name: str) -> None:
        self.run.log_artifact(path, name=_safe_name(name), type="model")

    def flush(self) -> None:
        pass  # Trackio's own thread writes its queue every half second

    def close(self, status: str) -> None:
        self.run.finish()
