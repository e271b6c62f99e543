"""The `layers` and `demo` commands, and the hub staying offline when asked, through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import tiny_profile
from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.cli import main
from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.events import EpochEnded, PhaseChanged, RunStarted
from tuitune.engine.record.runlog import read_events

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------------ layers


SMALL_DATA = ["--set", "data.num_samples=16", "--set", "data.batch_size=4"]  # the memory plan's batch: cheap


def test_layers_of_a_timm_name_as_json(capsys: pytest.CaptureFixture) -> None:
    import timm

    assert main(["layers", "resnet18", "--json", *SMALL_DATA]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["layers"]
    assert [r["name"] for r in rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert all(r["trainable"] for r in rows)  # the default strategy (full) trains every group
    model = timm.create_model("resnet18", num_classes=4)  # the default synthetic data has 4 classes
    params = sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in rows) == params
    # one phase (full): its peak holds at least the weights, their gradients and AdamW's two states
    assert [p["groups"] for p in out["phases"]] == [[r["name"] for r in rows]]
    assert out["phases"][0]["peak_bytes"] > 4 * 4 * params


def test_layers_sizes_the_head_for_the_loss_as_training_does(capsys: pytest.CaptureFixture) -> None:
    """Regression (loss.kind = mse) has one output: `layers` builds the head training builds, not a class head."""
    import timm

    assert main(["layers", "resnet18", "--json", "--set", "loss.kind=mse", *SMALL_DATA]) == 0
    head = json.loads(capsys.readouterr().out)["layers"][-1]
    model = timm.create_model("resnet18", num_classes=1)
    assert head["name"] == "head" and head["params"] == sum(p.numel() for p in model.fc.parameters())


def test_layers_of_a_profile_shows_its_first_phase(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = profile_to_dict(tiny_profile(strategy={"kind": "progressive"}))
    (tmp_path / "p.toml").write_text(dump_toml(table))
    assert main(["layers", str(tmp_path / "p.toml"), "--set", "strategy.groups_per_phase=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("timm resnet18") and lines[0].endswith("6 layer groups")
    end = next(i for i, line in enumerate(lines) if line.split()[:1] == ["total"])
    rows = {line.split()[1]: line.split() for line in lines[2:end]}
    assert list(rows) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert rows["head"][-1] == "trainable" and all(rows[g][-1] == "frozen" for g in list(rows)[:-1])
    total = int(lines[end].split()[-1].replace(",", ""))
    assert total == sum(int(r[2].replace(",", "")) for r in rows.values())
    # under the table, the memory plan: a line per phase (head; then two groups more at a time)
    assert lines[end + 1].startswith("memory plan (batch 16, cpu")
    assert [line.split(":")[0].strip() for line in lines[end + 2 :]] == [
        "phase 1 (head)",
        "phase 2 (layer3, layer4, head)",
        "phase 3 (layer1 … head, 5 groups)",
        "phase 4 (stem … head, 6 groups)",
    ]


def test_layers_of_a_hugging_face_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_tiny_hf_dir(tmp_path, "bert")
    assert main(["layers", str(folder), "--json", *SMALL_DATA]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)["layers"]]
    assert names[0] == "embeddings" and names[-1] == "head" and {"layer.0", "layer.1"} <= set(names)


def test_layers_of_an_unknown_name_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", "resnet_does_not_exist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet_does_not_exist" in err[0]


# -------------------------------------------------------------------------------------------------------- demo


def test_demo_headless_runs_the_packaged_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`tuitune demo --headless`, cut short with overrides: the packaged profile and backbone, offline, to the end
    (source-task accuracy tracked, phases moved, the model exported)."""
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--headless",
            "--out",
            str(out),
            "--set",
            "train.epochs=2",
            "--set",
            "train.max_steps_per_epoch=3",
            "--set",
            'strategy.trigger="epochs"',
            "--set",
            "strategy.every_epochs=1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    events = read_events(out)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.run_name == "demo" and started.classes == ("5", "6", "7", "8", "9")
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    assert len(epochs) == 2 and all(0.5 <= e.extra["source_acc"] <= 1.0 for e in epochs)  # the 0-4 head works
    assert [e.reason for e in events if isinstance(e, PhaseChanged)] == ["epochs"]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "export" / "model.safetensors").exists() and "exported to" in printed


def test_demo_opens_the_dashboard_on_the_packaged_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tuitune.ui.launch as launch

    apps: list = []
    monkeypatch.setattr(launch, "_run", lambda app: apps.append(app) or 0)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    (app,) = apps
    assert app.mode == "train" and app.profile.name == "demo" and app.run_dir == tmp_path / "d"
    assert app.profile.model.weights.endswith("demo_backbone.safetensors") and Path(app.profile.model.weights).exists()


# ------------------------------------------------------------------------------------------------ hub offline

# A fresh interpreter in which every network attempt (DNS lookup or connect) is recorded and refused, so a test
# never reaches the internet and sees any attempt tuitune (or a library it calls) makes.
GUARDED_MAIN = """
    import io, json, socket, sys, contextlib
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network refused by the test")

    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    socket.socket.connect = lambda self, *a: refuse(*a)
    socket.socket.connect_ex = lambda self, *a: refuse(*a)
    from tuitune.cli import main
    results = {{}}
    for name, profile in {profiles}.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["train", profile, "--headless", "--out", profile[:-5] + "-run"])
        results[name] = {{"code": code, "err": err.getvalue()}}
    print(json.dumps({{"results": results, "attempts": attempts}}))
"""


def test_pretrained_weights_asked_offline_touch_no_network(tmp_path: Path) -> None:
    """`pretrained = true` with HF_HUB_OFFLINE=1 and an empty cache: each kind of weights (timm on the hub, timm at
    a plain URL that torch.hub would fetch, a transformers model) fails with one line and exit code 2, and no
    connection, not even a DNS lookup, is attempted.

    NOTE: this is the HF_HUB_OFFLINE=1 half of the rule "`pretrained = true` downloads unless HF_HUB_OFFLINE=1 or
    `--offline`"; `tuitune train --offline` does not exist on this branch yet. When it lands, add the same run with
    `--offline` and HF_HUB_OFFLINE removed from the environment."""
    models = {
        "timm-hub": {"source": "timm", "name": "resnet18"},
        "timm-url": {"source": "timm", "name": "gcvit_xxtiny"},
        "hf": {"source": "hf", "name": "tuitune-test/no-such-bert"},
    }
    profiles = {}
    for case, model in models.items():
        table = profile_to_dict(tiny_profile(model={**model, "pretrained": True, "kwargs": {}}))
        if model["source"] == "hf":
            table["model"].pop("img_size", None)
            table["data"] = {"kind": "synthetic", "num_samples": 16, "num_classes": 2}
        path = tmp_path / f"{case}.toml"
        path.write_text(dump_toml(table))
        profiles[case] = str(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TORCH_HOME"))}
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        TORCH_HOME=str(tmp_path / "torch-home"),
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    code = textwrap.dedent(GUARDED_MAIN.format(profiles=repr(profiles)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    for case, result in report["results"].items():
        lines = result["err"].strip().splitlines()
        assert result["code"] == 2 and len(lines) == 1, (case, result)
        assert lines[0].startswith("tuitune: error: ") and "model." in lines[0], (case, lines[0])
    for case in ("timm-hub", "timm-url"):
        assert "no cached pretrained weights" in report["results"][case]["err"], case
    assert "not in the local cache" in report["results"]["hf"]["err"]
