"""`tuitune train --branch RUN_DIR[@CKPT]`: a new run from a finished tiny run's checkpoint with another LR, the
parent untouched, and `compare` naming the parent and starting the child's curve at the branch epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_bad_input import tiny_table, write_profile
from tuitune.cli import main
from tuitune.engine.events import RunStarted
from tuitune.engine.record.history import read_history
from tuitune.engine.train.state_checkpoint import Checkpointer
from tuitune.runs.compare import compare_dict, format_compare, load_runs


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch tiny run (LR 0.01)."""
    tmp = tmp_path_factory.mktemp("parent")
    profile = write_profile(tmp, tiny_table(train={"epochs": 2, "seed": 0}), "run.toml")
    assert main(["train", str(profile), "--headless", "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_branch_starts_from_the_parent_checkpoint_with_the_new_lr(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _digest(parent)
    start_weights: dict[str, torch.Tensor] = {}
    resume_from = Checkpointer.resume_from

    def spy(self: Checkpointer, run_dir: Path) -> None:
        resume_from(self, run_dir)
        start_weights.update({k: v.detach().clone() for k, v in self.state.parts.model.state_dict().items()})

    monkeypatch.setattr(Checkpointer, "resume_from", spy)
    child = tmp_path / "child"
    argv = ["train", "--branch", f"{parent}@last", "--out", str(child), "--headless"]
    assert main([*argv, "--set", "train.lr=0.003", "--set", "train.epochs=3"]) == 0

    saved = load_file(str(parent / "checkpoints" / "last.safetensors"))
    assert saved and all(torch.equal(start_weights[k], v) for k, v in saved.items())
    started = [e for e in read_history(child) if isinstance(e, RunStarted)]
    assert started[0].start_epoch == 2 and started[0].profile["train"]["lr"] == 0.003
    state = torch.load(child / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["epoch"] == 3
    old = torch.load(parent / "checkpoints" / "last.state.pt", weights_only=True)["optimizer"]["param_groups"]
    old_lr = {tuple(g["param_names"]): g["base_lr"] for g in old}
    new = state["optimizer"]["param_groups"]
    assert [g["base_lr"] for g in new] == [pytest.approx(old_lr[tuple(g["param_names"])] * 0.3) for g in new]
    assert max(g["base_lr"] for g in new) == pytest.approx(0.003)  # the head's: train.lr
    branch = json.loads((child / "branch.json").read_text())
    assert branch == {"parent": str(parent.resolve()), "checkpoint": "last", "epoch": 2, "global_step": 6}
    assert _digest(parent) == before  # the parent is only read

    runs = load_runs([parent, child])
    out = compare_dict(runs)
    assert [p["epoch"] for p in out["runs"][1]["curve"]] == [3]
    assert out["runs"][1]["parent"] == str(parent.resolve()) and out["runs"][1]["branch_epoch"] == 2
    assert runs[1].origin is not None and runs[1].origin.epoch == 2  # the plot starts at the parent's epoch 2
    assert runs[1].origin == runs[0].curve[-1]
    text = format_compare(runs)
    assert f"child: branch of {parent.resolve()} at epoch 2" in text


BAD = {
    "not-a-run": ("{tmp}", "--branch: not a run directory"),
    "unknown-at": ("{parent}@latest", "unknown checkpoint 'latest'"),
    "no-epoch": ("{parent}@7", "no checkpoint of epoch 7 is kept"),
    "no-best": ("{nobest}@best", "no best checkpoint"),
    "nothing-to-train": ("{parent}@last", "leaves nothing to train"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_branch_gives_one_line_and_exit_2(
    case: str, parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    spec, expect = BAD[case]
    nobest = Path(shutil.copytree(parent, tmp_path / "nobest"))
    for f in (nobest / "checkpoints").glob("best.*"):
        f.unlink()
    before = _digest(parent)
    child = tmp_path / "child"
    spec = spec.format(tmp=tmp_path, parent=parent, nobest=nobest)
    code = main(["train", "--branch", spec, "--out", str(child), "--headless", "--set", "train.epochs=2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert expect in lines[0], lines[0]
    assert not child.exists() and _digest(parent) == before
