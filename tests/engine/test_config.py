"""Profiles: good and bad fixture files, overrides, path resolution, and the documentation kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuitune.config import ProfileError, load_profile
from tuitune.profile_docs import docs_markdown

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
ROOT = Path(__file__).resolve().parents[2]


def test_good_profile_and_relative_paths() -> None:
    p = load_profile(FIXTURES / "good.toml")
    assert (p.name, p.model.name, p.train.epochs, p.strategy.kind) == ("good", "resnet18", 3, "progressive")
    assert p.model.weights == str((FIXTURES / "weights" / "backbone.safetensors").resolve())
    assert p.data.path == str((FIXTURES / "data" / "images").resolve())
    assert p.train.lr == 1e-3 and p.train.optimizer == "adamw"  # defaults fill the rest


def test_old_metric_names_still_read() -> None:
    """`val_acc` / `train_acc` (the names before `*_score`) in a profile or an override mean the new names."""
    p = load_profile(FIXTURES / "good.toml", ["train.checkpoint_metric=train_acc"])
    assert p.early_stopping.metric == "val_score" and p.train.checkpoint_metric == "train_score"


def test_demo_profile_is_valid_and_finds_its_weights() -> None:
    p = load_profile(ROOT / "profiles" / "demo.toml")
    assert Path(p.model.weights).is_file()
    assert p.strategy.kind == "progressive" and list(p.data.classes) == [5, 6, 7, 8, 9]


def test_overrides_use_the_same_validation() -> None:
    p = load_profile(FIXTURES / "good.toml", ["train.epochs=1", "strategy.kind=full", "model.kwargs={a=1}"])
    assert (p.train.epochs, p.strategy.kind, p.model.kwargs) == (1, "full", {"a": 1})
    with pytest.raises(ProfileError, match=r"good.toml: train.epochs: must be >= 1, got 0"):
        load_profile(FIXTURES / "good.toml", ["train.epochs=0"])
    with pytest.raises(ProfileError, match="expected KEY=VALUE"):
        load_profile(FIXTURES / "good.toml", ["train.epochs"])


BAD = {
    "syntax": ("[model\nname = 1", "TOML syntax error"),
    "unknown_section": ('[modle]\nname = "x"', r"modle: unknown key"),
    "unknown_key": ('[model]\nname = "x"\nnmae = 1', r"model\.nmae: unknown key"),
    "wrong_type": ('[model]\nname = "x"\n[train]\nepochs = "ten"', r"train\.epochs: expected an integer, got a string"),
    "bool_for_int": ('[model]\nname = "x"\n[train]\nepochs = true', r"train\.epochs: expected an integer"),
    "negative_lr": ('[model]\nname = "x"\n[train]\nlr = -0.1', r"train\.lr: must be > 0"),
    "zero_batch": ('[model]\nname = "x"\n[data]\nbatch_size = 0', r"data\.batch_size: must be >= 1"),
    "bad_choice": ('[model]\nname = "x"\n[strategy]\nkind = "sideways"', r"strategy\.kind: 'sideways' is not one of"),
    "no_model": ("[train]\nepochs = 1", r"model\.name: required"),
    "section_not_table": ('model = "resnet18"', r"model: expected a \[model\] table"),
    "groups_missing": ('[model]\nname = "x"\n[strategy]\nkind = "groups"', r"strategy\.groups: required"),
    "folder_no_path": ('[model]\nname = "x"\n[data]\nkind = "image_folder"', r"data\.path: required"),
    "bad_digit": ('[model]\nname = "x"\n[data]\nclasses = [5, 12]', r"data\.classes: expected digits 0-9"),
    "fractions": ('[model]\nname = "x"\n[data]\nval_fraction = 0.6\ntest_fraction = 0.5', r"data\.test_fraction"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_profiles_give_one_line_naming_file_and_key(tmp_path, case: str) -> None:
    text, pattern = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert pytest.importorskip("re").search(pattern, message), message


def test_missing_file() -> None:
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile("does/not/exist.toml")


def test_every_key_is_documented_in_profiles_readme() -> None:
    readme = (ROOT / "profiles" / "README.md").read_text()
    assert docs_markdown() in readme, "regenerate: python -m tuitune.profile_docs --update profiles/README.md"


def test_dump_toml_round_trips_a_profile_with_its_sweep_table(tmp_path) -> None:
    """A written profile reads back the same, `[sweep]` and its quoted dotted keys included (`tuitune sweep`'s
    profiles are written by scripts and by the composing picker)."""
    from tuitune.config import dump_toml, read_toml

    table = {
        "name": "sms",
        "train": {"lr": 3e-4, "epochs": 4},
        "strategy": {"kind": "progressive"},
        "sweep": {"pruner": "median", "strategy.kind": ["full", "progressive"], "train.lr": {"log": [1e-5, 3e-3]}},
    }
    text = dump_toml(table)
    assert '"strategy.kind" = ["full", "progressive"]' in text and text.index("[strategy]") < text.index("[sweep]")
    path = tmp_path / "sweep.toml"
    path.write_text(text, encoding="utf-8")
    assert read_toml(path) == table
