"""The bad-input corpus: malformed profiles, data and checkpoints, each run through the real CLI.

Every case must end with exit code 2 and exactly one line on stderr that names the file at fault and the key (or
the data file and row). Profile mistakes are caught before anything loads; data and model mistakes surface when the
run builds (or, for a corrupt image, when the loader first reads it), and the headless path still prints one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuitune.cli import main
from tuitune.config import dump_toml

ROOT = Path(__file__).resolve().parents[2]
TINY: dict = {
    "model": {
        "name": "resnet18",
        "pretrained": False,
        "img_size": 32,
        "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    },
    "data": {"kind": "synthetic", "num_samples": 48, "num_classes": 3, "batch_size": 16, "val_fraction": 0.25},
    "train": {"epochs": 1, "lr": 0.01, "log_every": 1, "schedule": "constant"},
}


def tiny_table(**sections: dict) -> dict:
    table = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return table


def write_profile(tmp: Path, table: dict | str, name: str = "bad.toml") -> Path:
    path = tmp / name
    path.write_text(table if isinstance(table, str) else dump_toml(table), encoding="utf-8")
    return path


def png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)
    return path


def image_root(tmp: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4) -> Path:
    root = tmp / "images"
    for k, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", (40 * k + 20, 10 * i, 90))
    return root


def folder_profile(tmp: Path, root: Path, **data: object) -> Path:
    return write_profile(tmp, tiny_table(data={"kind": "image_folder", "path": str(root), "batch_size": 4, **data}))


def text_profile(tmp: Path, name: str, content: str, **data: object) -> Path:
    (tmp / name).write_text(content, encoding="utf-8")
    return write_profile(tmp, tiny_table(data={"kind": "text", "path": name, **data}))


# ------------------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """`make(tmp)` writes the inputs and returns the CLI arguments after `train`; the one stderr line must contain
    every string in `expect` (with `{tmp}` replaced by the case's folder)."""

    make: Callable[[Path], list[str]]
    expect: tuple[str, ...]


def profile_text(text: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [str(write_profile(tmp, text))]


def profile_with(**sections: dict) -> Callable[[Path], list[str]]:
    return lambda tmp: [str(write_profile(tmp, tiny_table(**sections)))]


def with_set(*items: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        args = [str(write_profile(tmp, tiny_table()))]
        for item in items:
            args += ["--set", item]
        return args

    return make


def _no_utf8(tmp: Path) -> list[str]:
    path = tmp / "bad.toml"
    path.write_bytes(b'[model]\nname = "\xff\xfe"\n')
    return [str(path)]


def _empty_class(tmp: Path) -> list[str]:
    root = image_root(tmp)
    (root / "empty").mkdir()
    return [str(folder_profile(tmp, root))]


def _no_class_folders(tmp: Path) -> list[str]:
    root = tmp / "images"
    png(root / "loose.png")
    return [str(folder_profile(tmp, root))]


def _train_without_val(tmp: Path) -> list[str]:
    root = tmp / "images"
    image_root(root / "train")
    return [str(folder_profile(tmp, root))]


def _val_classes_differ(tmp: Path) -> list[str]:
    root = tmp / "images"
    shutil.move(str(image_root(tmp / "a")), root / "train")
    shutil.move(str(image_root(tmp / "b", classes=("cat", "cow"))), root / "val")
    return [str(folder_profile(tmp, root))]


def _corrupt_image(workers: int) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        root = tmp / "images"
        shutil.move(str(image_root(tmp / "a")), root / "train")
        shutil.move(str(image_root(tmp / "b", per_class=2)), root / "val")
        (root / "train" / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        return [str(folder_profile(tmp, root, num_workers=workers))]

    return make


def _weights_file(tmp: Path, tensors: dict, name: str = "w.safetensors") -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(tmp / name))
    return tmp / name


def _weights_other_arch(tmp: Path) -> list[str]:
    import torch

    _weights_file(tmp, {"encoder.weight": torch.zeros(4, 4), "encoder.bias": torch.zeros(4)})
    return [str(write_profile(tmp, tiny_table(model={"weights": "w.safetensors"})))]


def _weights_pickle_with_code(tmp: Path) -> list[str]:
    """A .pth whose unpickling would run a shell command: weights_only=True refuses it, and nothing runs."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'PWNED'}",))

    (tmp / "w.pth").write_bytes(pickle.dumps({"state_dict": Exploit()}))
    return [str(write_profile(tmp, tiny_table(model={"weights": "w.pth"})))]


def _weights_npz(tmp: Path) -> list[str]:
    (tmp / "w.npz").write_bytes(b"PK\x03\x04")
    return [str(write_profile(tmp, tiny_table(model={"weights": "w.npz"})))]


def _hf_without_config(tmp: Path) -> list[str]:
    (tmp / "my-bert").mkdir()
    (tmp / "my-bert" / "model.safetensors").write_bytes(b"")
    return [str(write_profile(tmp, tiny_table(model={"source": "hf", "name": str(tmp / "my-bert")})))]


def _existing_run(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "events.jsonl").write_text("{}\n")
    return [str(write_profile(tmp, tiny_table())), "--out", str(tmp / "run")]


CASES: dict[str, Case] = {
    # --- profile syntax and schema: caught before anything loads
    "toml-syntax": Case(profile_text("[model\nname = 1"), ("{tmp}/bad.toml", "TOML syntax error", "line 1")),
    "toml-duplicate-key": Case(profile_text('[model]\nname = "a"\nname = "b"'), ("{tmp}/bad.toml", "TOML syntax")),
    "not-utf8": Case(_no_utf8, ("{tmp}/bad.toml", "cannot read")),
    "missing-profile": Case(lambda tmp: [str(tmp / "nope.toml")], ("{tmp}/nope.toml", "no such profile file")),
    "unknown-section": Case(profile_text('[modle]\nname = "x"'), ("{tmp}/bad.toml", "modle: unknown key")),
    "unknown-key": Case(profile_text('[model]\nname = "x"\nnmae = 1'), ("{tmp}/bad.toml", "model.nmae: unknown")),
    "unknown-top-level-key": Case(profile_text('epochs = 3\n[model]\nname = "x"'), ("bad.toml", "epochs: unknown")),
    "section-not-table": Case(profile_text('model = "resnet18"'), ("bad.toml", "model: expected a [model] table")),
    "string-for-int": Case(profile_with(train={"epochs": "ten"}), ("bad.toml", "train.epochs: expected an integer")),
    "bool-for-int": Case(profile_with(train={"epochs": True}), ("bad.toml", "train.epochs: expected an integer")),
    "float-for-int": Case(profile_with(data={"batch_size": 1.5}), ("bad.toml", "data.batch_size: expected an int")),
    "string-for-bool": Case(profile_with(model={"pretrained": "no"}), ("bad.toml", "model.pretrained: expected a b")),
    "negative-lr": Case(profile_with(train={"lr": -0.1}), ("bad.toml", "train.lr: must be > 0, got -0.1")),
    "nan-lr": Case(profile_text('[model]\nname = "x"\n[train]\nlr = nan'), ("bad.toml", "train.lr: must be a finite")),
    "zero-batch-size": Case(profile_with(data={"batch_size": 0}), ("bad.toml", "data.batch_size: must be >= 1")),
    "zero-epochs": Case(profile_with(train={"epochs": 0}), ("bad.toml", "train.epochs: must be >= 1")),
    "momentum-above-1": Case(profile_with(train={"momentum": 1.5}), ("bad.toml", "train.momentum: must be <= 1")),
    "negative-max-skipped": Case(profile_with(train={"max_skipped": -1}), ("bad.toml", "train.max_skipped")),
    "bad-choice": Case(profile_with(strategy={"kind": "sideways"}), ("bad.toml", "strategy.kind: 'sideways'")),
    "bad-on-nonfinite": Case(profile_with(train={"on_nonfinite": "ignore"}), ("bad.toml", "train.on_nonfinite")),
    "missing-model-name": Case(profile_text("[train]\nepochs = 1"), ("bad.toml", "model.name: required")),
    "val-fraction-too-big": Case(profile_with(data={"val_fraction": 0.95}), ("bad.toml", "data.val_fraction")),
    "fractions-sum": Case(profile_with(data={"val_fraction": 0.6, "test_fraction": 0.5}), ("data.test_fraction",)),
    "digit-out-of-range": Case(profile_with(data={"kind": "digits", "classes": [5, 12]}), ("data.classes",)),
    "folder-without-path": Case(profile_with(data={"kind": "image_folder"}), ("bad.toml", "data.path: required")),
    "groups-without-names": Case(profile_with(strategy={"kind": "groups"}), ("bad.toml", "strategy.groups")),
    "set-without-value": Case(with_set("train.epochs"), ("--set train.epochs", "KEY=VALUE")),
    "set-unknown-key": Case(with_set("train.epohcs=3"), ("{tmp}/bad.toml", "train.epohcs: unknown key")),
    "set-out-of-range": Case(with_set("data.batch_size=0"), ("{tmp}/bad.toml", "data.batch_size: must be >= 1")),
    "set-into-a-value": Case(with_set("model.name.x=1"), ("--set model.name.x=1", "name is not a section")),
    "out-dir-has-a-run": Case(_existing_run, ("{tmp}/run", "--out", "--force")),
    # --- caught when the run builds: model, weights, device, optimizer, groups
    "unknown-timm-model": Case(
        profile_with(model={"name": "resnt18"}), ("{tmp}/bad.toml", "model.name", "'resnt18'", "did you mean resnet18")
    ),
    "timm-kwargs-rejected": Case(profile_with(model={"kwargs": {"bogus": 1}}), ("bad.toml", "model.kwargs")),
    "hf-folder-without-config": Case(_hf_without_config, ("{tmp}/bad.toml", "model.name", "no config.json")),
    "hf-not-a-folder": Case(
        profile_with(model={"source": "hf", "name": "./nowhere"}),
        ("bad.toml", "model.name", "not a Hugging Face model folder"),
    ),
    "weights-missing": Case(
        profile_with(model={"weights": "nope.safetensors"}),
        ("{tmp}/bad.toml", "model.weights", "{tmp}/nope.safetensors"),
    ),
    "weights-other-architecture": Case(_weights_other_arch, ("{tmp}/w.safetensors", "do not fit timm model")),
    "weights-pickle-with-code": Case(_weights_pickle_with_code, ("model.weights", "{tmp}/w.pth", "cannot read")),
    "weights-unknown-format": Case(_weights_npz, ("model.weights", "{tmp}/w.npz", "unknown format")),
    "unknown-device": Case(profile_with(train={"device": "tpu"}), ("{tmp}/bad.toml", "train.device: 'tpu'")),
    "unknown-optimizer": Case(profile_with(train={"optimizer": "adamm"}), ("bad.toml", "train.optimizer: unknown")),
    "unknown-layer-group": Case(
        profile_with(strategy={"kind": "groups", "groups": ["layer9"]}),
        ("{tmp}/bad.toml", "strategy.groups", "'layer9'"),
    ),
    # --- data: folders, images, text files
    "data-path-missing": Case(
        profile_with(data={"kind": "image_folder", "path": "nowhere"}), ("{tmp}/nowhere", "data.path: no such folder")
    ),
    "empty-class-folder": Case(_empty_class, ("{tmp}/images/empty", "data.path", "no images")),
    "no-class-folders": Case(_no_class_folders, ("{tmp}/images", "data.path: no class folders")),
    "train-without-val": Case(_train_without_val, ("{tmp}/images/val", "data.path", "val/ folder")),
    "val-classes-differ": Case(_val_classes_differ, ("{tmp}/images/val", "missing: dog", "extra: cow")),
    "corrupt-image": Case(_corrupt_image(0), ("{tmp}/images/train/dog/2.png", "cannot read image")),
    "corrupt-image-in-worker": Case(_corrupt_image(1), ("{tmp}/images/train/dog/2.png", "cannot read image")),
    "csv-without-label-column": Case(
        lambda tmp: [str(text_profile(tmp, "t.csv", "text,y\nhello,a\nbye,b\n"))],
        ("{tmp}/t.csv", "data.label_column", "no column 'label'", "columns: text, y"),
    ),
    "csv-empty-text-row": Case(
        lambda tmp: [str(text_profile(tmp, "t.csv", "text,label\nhi,a\n,b\nyo,a\n"))],
        ("{tmp}/t.csv", "row 3", "'text' must be non-empty"),
    ),
    "jsonl-bad-row": Case(
        lambda tmp: [str(text_profile(tmp, "t.jsonl", '{"text": "a", "label": 1}\n{"text": \n'))],
        ("{tmp}/t.jsonl", "row 2", "invalid JSON"),
    ),
    "csv-no-rows": Case(lambda tmp: [str(text_profile(tmp, "t.csv", "text,label\n"))], ("{tmp}/t.csv", "no rows")),
    "text-file-missing": Case(
        profile_with(data={"kind": "text", "path": "nope.csv"}), ("{tmp}/nope.csv", "data.path: no such file")
    ),
    "text-file-wrong-format": Case(lambda tmp: [str(text_profile(tmp, "t.xlsx", "x"))], ("{tmp}/t.xlsx", "expected")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = CASES[case]
    args = spec.make(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    code = main(["train", *args, "--headless"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("tuitune: error: "), line
    for part in spec.expect:
        assert part.replace("{tmp}", str(tmp_path)) in line, line
    assert not (tmp_path / "PWNED").exists()  # nothing in a profile or a weights file ever runs


# ------------------------------------------------------------------------------------------- resume mistakes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch progressive run (3 classes, in phase 2 at the end), copied by each test that resumes it."""
    tmp = tmp_path_factory.mktemp("finished")
    profile = write_profile(
        tmp, tiny_table(strategy={"kind": "progressive", "every_epochs": 1}, train={"epochs": 2}), "run.toml"
    )
    assert main(["train", str(profile), "--headless", "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def _copy(run: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(run, tmp / "run"))


RESUME_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # The same run dir with another dataset's class count: one clear line (a `model.weights` file with another
    # head is fine, see test_weights_with_another_head_are_fine; a resumed run is not).
    "other-class-count": (
        ["--set", "data.num_classes=5"],
        ("{run}: --resume", "trained on 3 classes (c0, c1, c2)", "has 5", "model.weights"),
    ),
    "other-strategy": (
        ["--set", "strategy.kind=head_only"],
        ("{run}: --resume", "phase 2", "does not plan"),
    ),
    "other-model": (["--set", "model.kwargs={}"], ("{run}/checkpoints/last.safetensors", "does not fit")),
    "corrupt-state": (["corrupt"], ("{run}/checkpoints/last.state.pt", "cannot read checkpoint state")),
    "no-checkpoint": (["nockpt"], ("{run}: --resume: no checkpoints/last.state.pt",)),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_bad_resume_gives_one_line_and_exit_2(
    case: str, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, expect = RESUME_CASES[case]
    run = _copy(finished_run, tmp_path)
    if args == ["corrupt"]:
        (run / "checkpoints" / "last.state.pt").write_bytes(b"PK\x03\x04 truncated")
        args = []
    elif args == ["nockpt"]:
        shutil.rmtree(run / "checkpoints")
        args = []
    # the run finished its 2 epochs: only a resume that trains on (more epochs) reads its checkpoint
    code = main(["train", "--resume", str(run), "--headless", "--set", "train.epochs=3", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    for part in expect:
        assert part.replace("{run}", str(run)) in lines[0], lines[0]


def test_weights_with_another_head_are_fine(finished_run: Path, tmp_path: Path) -> None:
    """A class-count mismatch in `model.weights` is expected (fine-tuning to new classes): the head is re-created."""
    weights = finished_run / "checkpoints" / "last.safetensors"
    profile = write_profile(tmp_path, tiny_table(model={"weights": str(weights)}, data={"num_classes": 5}), "ok.toml")
    assert main(["train", str(profile), "--headless", "--out", str(tmp_path / "run")]) == 0


# ------------------------------------------------------------------------------------------- through a process


@pytest.mark.parametrize("case", ["unknown-key", "csv-without-label-column"])
def test_bad_input_through_a_subprocess(case: str, tmp_path: Path) -> None:
    """The installed entry point: exit 2 and one stderr line, with nothing else on stderr (no warnings, no
    traceback) even when the failure comes from the engine."""
    args = CASES[case].make(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tuitune", "train", *args, "--headless", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("tuitune: error: ") and str(tmp_path) in lines[0]
