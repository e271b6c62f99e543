"""Experiment trackers (`[report] to`): ONE tiny real run with every installed tracker on and an `UnfreezeNext`
applied at step 2, shared by the tests of this file; each tracker's record is read back with that tracker's own
library (TensorBoard's event accumulator, `MlflowClient` on the run's SQLite store, the W&B offline run's
transaction log decoded with wandb's protobuf records, Trackio's `SQLiteStorage`): every epoch's metrics and every
intervention are there. A tracker that is not installed skips its test (they are extras, not in `test`)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tests.engine.webhook_server import Hook
from tuitune.cli import main
from tuitune.config import dump_toml, profile_to_dict
from tuitune.config.outputs import TRACKERS
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import CommandApplied, EpochEnded, MetricsUpdated, PhaseChanged, RunFinished, Warned
from tuitune.engine.report.trackers import BACKENDS
from tuitune.engine.session import run_training

INSTALLED = [name for name, module in TRACKERS.items() if importlib.util.find_spec(module) is not None]


@dataclass
class Tracked:
    run_dir: Path
    events: list
    trackers: list[str]
    posted: list[dict[str, Any]]  # what the run's webhook received (it shares the relay with the trackers)

    @property
    def epochs(self) -> list[EpochEnded]:
        return of_type(self.events, EpochEnded)

    def matches(self, series: list[tuple[int, float]]) -> bool:
        """`series` is (step, val score) at every epoch's end, as the run's `EpochEnded` events say."""
        expected = [(e.global_step, e.val_score) for e in self.epochs]
        return [s for s, _ in series] == [s for s, _ in expected] and [v for _, v in series] == pytest.approx(
            [v for _, v in expected], rel=1e-6
        )

    def needs(self, name: str) -> None:
        if name not in self.trackers:
            pytest.skip(f"{name} is not installed (pip install 'tuitune[{name}]')")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    """The shared run: 2 epochs of 4 steps, progressive (manual), `u` pressed once at step 2, and a webhook (its
    URL must reach no tracker whole). W&B with no mode and no key (offline is the default then); Trackio's store and
    W&B's caches inside the test's folder."""
    if not INSTALLED:
        pytest.skip("no tracker is installed (pip install 'tuitune[tensorboard]' ...)")
    root = tmp_path_factory.mktemp("tracked")
    # Trackio reads TRACKIO_DIR when it is imported: already imported here, it would write to the user's store
    trackers = [t for t in INSTALLED if not (t == "trackio" and "trackio" in sys.modules)]
    hook = Hook()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("NETRC", str(root / "no-netrc"))  # no `wandb login` key either
        for var in ("TRACKIO_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            mp.setenv(var, str(root / var.lower()))
        events: list = []
        control = Control()

        def emit(event: Any) -> None:
            events.append(event)
            if isinstance(event, MetricsUpdated) and event.global_step == 2:
                control.put(UnfreezeNext())  # as the dashboard's `u`

        profile = tiny_profile(
            strategy={"kind": "progressive", "trigger": "manual"},
            train={"epochs": 2, "log_every": 2, "max_steps_per_epoch": 4},
            report={"to": trackers},
            notify={"webhook": hook.url},
        )
        run_dir = root / "tracked-run"
        try:
            run_training(profile, run_dir, emit, control, interactive=True)
        finally:
            hook.close()
        yield Tracked(run_dir, events, trackers, hook.bodies)


def test_the_run_and_its_interventions(tracked: Tracked) -> None:
    final = tracked.events[-1]
    assert isinstance(final, RunFinished) and final.status == "finished"
    assert not of_type(tracked.events, Warned)  # every tracker took every call
    assert [(c.command, c.global_step) for c in of_type(tracked.events, CommandApplied)] == [("UnfreezeNext", 2)]
    assert [(p.global_step, p.unfrozen) for p in of_type(tracked.events, PhaseChanged)] == [(2, ("layer4",))]
    assert [e.global_step for e in tracked.epochs] == [4, 8]
    assert (tracked.run_dir / "report.log").exists()  # what the libraries printed, off the console
    assert [(b["type"], b["status"]) for b in tracked.posted] == [("RunFinished", "finished")]


def test_tensorboard(tracked: Tracked) -> None:
    tracked.needs("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(tracked.run_dir / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    assert tracked.matches([(s.step, s.value) for s in acc.Scalars("val/acc")])
    assert [s.step for s in acc.Scalars("train/loss")] == [2, 4, 6, 8]
    texts = {
        t.step: tensor_util.make_ndarray(t.tensor_proto).item().decode() for t in acc.Tensors("events/text_summary")
    }
    assert texts == {2: "**phase**: phase 2/6: unfroze layer4 (manual)  \n**command**: UnfreezeNext"}
    profile = tensor_util.make_ndarray(acc.Tensors("profile/text_summary")[0].tensor_proto).item().decode()
    assert "lr = 0.01" in profile


def test_mlflow(tracked: Tracked) -> None:
    tracked.needs("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked.run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tuitune").experiment_id])
    assert (run.info.run_name, run.info.status) == ("tracked-run", "FINISHED")
    assert tracked.matches([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc")])
    assert run.data.params["train.lr"] == "0.01" and run.data.params["strategy.kind"] == "progressive"
    assert run.data.params["notify.webhook"] == "http://127.0.0.1/..."  # the hook's secret path is not a parameter
    events = {k: v for k, v in run.data.tags.items() if k.startswith("event.")}
    assert events == {
        "event.0001": "step 2 · phase: phase 2/6: unfroze layer4 (manual)",
        "event.0002": "step 2 · command: UnfreezeNext",
    }
    assert run.data.metrics["summary/best_val_score"] == pytest.approx(tracked.events[-1].best["value"])
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/classes.json"} <= model  # the best export
    summary = json.loads(
        Path(client.download_artifacts(run.info.run_id, "summary.json", str(tracked.run_dir / "dl"))).read_text()
    )
    assert summary["status"] == "finished" and summary["epochs"] == 2


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (`run-ID.wandb`), decoded with wandb's own protobuf `Record`. The
    file frames them as a LevelDB log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
    each `crc32c (4) | length (2) | type (1: full, 2: first, 3: middle, 4: last)`. wandb 0.31 reads it in Go
    (`wandb sync`, `wandb beta leet`), so the framing is read here; the records are wandb's."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline(tracked: Tracked) -> None:
    tracked.needs("wandb")
    (log,) = (tracked.run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # offline: no mode, no key
    rows: dict[int, dict[str, Any]] = {}
    config, artifacts, exit_code = {}, [], None
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[row["_step"]] = row
        elif kind == "run":
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            assert record.run.display_name == "tracked-run" and record.run.project == "tuitune"
        elif kind == "artifact":
            artifacts.append((record.artifact.type, record.artifact.name))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert tracked.matches([(step, row["val/acc"]) for step, row in sorted(rows.items()) if "val/acc" in row])
    assert rows[2]["event"] == "phase: phase 2/6: unfroze layer4 (manual) | command: UnfreezeNext"
    assert config["train"]["lr"] == 0.01 and config["strategy"]["kind"] == "progressive"
    assert config["notify"]["webhook"] == "http://127.0.0.1/..."
    assert ("model", "tracked-run-model") in artifacts and exit_code == 0


def test_trackio(tracked: Tracked) -> None:
    tracked.needs("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tuitune", "tracked-run")
    assert tracked.matches([(row["step"], row["val/acc"]) for row in logs if "val/acc" in row])
    alerts = {(a["step"], a["title"], a["text"]) for a in SQLiteStorage.get_alerts("tuitune", run_name="tracked-run")}
    assert {(2, "phase", "phase 2/6: unfroze layer4 (manual)"), (2, "command", "UnfreezeNext")} <= alerts
    assert any(title == "run finished" for _, title, _ in alerts)
    assert SQLiteStorage.get_run_config("tuitune", "tracked-run")["train.lr"] == 0.01
    output = SQLiteStorage.get_run_artifacts("tuitune", "tracked-run", None)["output"]
    assert [(a["name"], a["type"]) for a in output] == [("tracked-run-model", "model")]


# ----------------------------------------------------------------------------------------------- failures


def test_tracker_names_are_one_table() -> None:
    assert list(BACKENDS) == list(TRACKERS)


def test_a_tracker_not_installed_is_one_line_at_profile_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(TRACKERS, "wandb", "wandb_is_not_installed_here")
    path = tmp_path / "p.toml"
    table = profile_to_dict(tiny_profile())
    table["report"]["to"] = ["wandb"]
    path.write_text(dump_toml(table))
    assert main(["train", str(path), "--headless", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"tuitune: error: {path}: report.to: 'wandb' is not installed: pip install 'tuitune[wandb]'"
    ]
    assert not (tmp_path / "run").exists()


def test_a_failing_tracker_is_one_warning_and_training_goes_on(tmp_path: Path) -> None:
    if "tensorboard" not in INSTALLED:
        pytest.skip("tensorboard is not installed")
    (tmp_path / "tensorboard").write_text("a file where the tracker wants its folder")
    profile = tiny_profile(
        train={"epochs": 2, "max_steps_per_epoch": 2, "log_every": 1}, report={"to": ["tensorboard"]}
    )
    events: list = []
    final = run_training(profile, tmp_path, events.append, Control(), interactive=False)
    assert isinstance(final, RunFinished) and final.status == "finished" and final.epochs == 2
    (warned,) = of_type(events, Warned)
    assert warned.kind == "report" and warned.message.startswith("report: tensorboard failed and is off for this run: ")
