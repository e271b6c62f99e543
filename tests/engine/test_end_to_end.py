"""End to end through the command line, as a user would: a profile file, `tuitune train --headless`, progressive
unfreezing, and the export the run writes at its end, loaded back with transformers or timm alone. One tiny
Hugging Face text model on a CSV file, one tiny timm image model on a folder of PNG files; both learn their task."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.cli import main
from tuitune.config import dump_toml
from tuitune.engine.events import EpochEnded, PhaseChanged
from tuitune.engine.record.runlog import read_events

GOOD = ["good", "great", "love"]
BAD = ["bad", "awful", "hate"]
FILLER = ["the", "a", "cat", "dog", "movie", "film", "plot", "actor", "was", "is", "very", "it", "this", "that"]


def _mean_pooled_logits(
    base: Any, head: dict[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """What a user of an exported `pooling = "mean"` run computes: the base model's mean-pooled hidden states
    through the head saved beside it."""
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    m = attention_mask.unsqueeze(-1).float()
    return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)) @ head["weight"].T + head["bias"]


def _sentence(rng: random.Random, words: list[str]) -> str:
    parts = [*rng.sample(FILLER, 4), rng.choice(words)]
    rng.shuffle(parts)
    return " ".join(parts)


def _write_reviews(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        rows.append(f"{_sentence(rng, GOOD if label == 'pos' else BAD)},{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _train(tmp_path: Path, table: dict) -> Path:
    profile, run_dir = tmp_path / "profile.toml", tmp_path / "run"
    profile.write_text(dump_toml(table), encoding="utf-8")
    assert main(["train", str(profile), "--headless", "--out", str(run_dir)]) == 0
    return run_dir


def _check_run(run_dir: Path) -> list:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    events = read_events(run_dir)
    assert [c.reason for c in events if isinstance(c, PhaseChanged)] == ["epochs", "epochs"]
    assert [e for e in events if isinstance(e, EpochEnded)][-1].val_score >= 0.9
    return events


def test_a_tiny_hugging_face_text_model_fine_tunes_and_exports(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = make_tiny_hf_dir(tmp_path, "bert")
    _write_reviews(tmp_path / "train.csv", 160, seed=0)
    _write_reviews(tmp_path / "val.csv", 40, seed=1)
    run_dir = _train(
        tmp_path,
        {
            "name": "reviews",
            "model": {"source": "hf", "name": str(folder), "max_length": 16, "pooling": "mean"},
            "data": {
                "kind": "text",
                "path": str(tmp_path / "train.csv"),
                "val_path": str(tmp_path / "val.csv"),
                "batch_size": 16,
            },
            "train": {"epochs": 6, "lr": 0.01, "optimizer": "adamw", "seed": 0},
            "strategy": {"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "groups_per_phase": 2},
        },
    )
    _check_run(run_dir)
    assert main(["export", str(run_dir), "--out", str(run_dir / "cli-export")]) == 0  # with sample.safetensors
    for out in (run_dir / "export", run_dir / "cli-export"):  # the run's own export, and `tuitune export`
        base = AutoModel.from_pretrained(str(out)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(out))
        head = load_file(str(out / "head.safetensors"))  # pooling = "mean": the head beside the base model
        classify = functools.partial(_mean_pooled_logits, base, head)
        sample = load_file(str(run_dir / "cli-export" / "sample.safetensors"))
        classes = json.loads((out / "classes.json").read_text())
        with torch.inference_mode():
            logits = classify(sample["input_ids"], sample["attention_mask"])
            assert torch.allclose(logits, sample["logits"], atol=1e-5)
            assert (logits.argmax(-1) == sample["labels"]).float().mean().item() >= 0.9
            batch = tokenizer(["the movie was great", "the film was awful"], return_tensors="pt", padding=True)
            said = [classes[int(i)] for i in classify(batch["input_ids"], batch["attention_mask"]).argmax(-1)]
        assert said == ["pos", "neg"]


def _write_images(root: Path, per_class: int, seed: int) -> None:
    """Two classes a small CNN tells apart at once: horizontal vs vertical stripes, with pixel noise."""
    rng = np.random.default_rng(seed)
    stripes = (np.arange(32) // 4 % 2 * 200 + 30).astype(np.float32)
    patterns = {"horizontal": np.repeat(stripes[:, None], 32, 1), "vertical": np.repeat(stripes[None, :], 32, 0)}
    for name, pattern in patterns.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shift = rng.integers(0, 8)
            img = np.roll(pattern, shift, axis=0 if name == "horizontal" else 1) + rng.normal(0, 30, (32, 32))
            rgb = np.clip(np.stack([img] * 3, -1), 0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")


def test_a_tiny_timm_image_model_fine_tunes_on_an_image_folder_and_exports(tmp_path: Path) -> None:
    import timm

    _write_images(tmp_path / "images" / "train", 40, seed=0)
    _write_images(tmp_path / "images" / "val", 12, seed=1)
    run_dir = _train(
        tmp_path,
        {
            "name": "stripes",
            "model": {
                "source": "timm",
                "name": "resnet18",
                "pretrained": False,
                "img_size": 32,
                "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
            },
            "data": {"kind": "image_folder", "path": str(tmp_path / "images"), "batch_size": 16},
            "train": {"epochs": 4, "lr": 0.01, "optimizer": "adamw", "seed": 0},
            "strategy": {"kind": "progressive", "trigger": "epochs", "every_epochs": 1, "groups_per_phase": 3},
        },
    )
    _check_run(run_dir)
    assert main(["export", str(run_dir), "--out", str(run_dir / "cli-export")]) == 0  # with sample.safetensors
    sample = load_file(str(run_dir / "cli-export" / "sample.safetensors"))
    assert len(sample["labels"]) == 24  # the whole val folder
    for out in (run_dir / "export", run_dir / "cli-export"):  # the run's own export, and `tuitune export`
        model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert model.pretrained_cfg["label_names"] == ["horizontal", "vertical"]
        with torch.inference_mode():
            logits = model(sample["inputs"])
        assert torch.allclose(logits, sample["logits"], atol=1e-5)
        assert (logits.argmax(-1) == sample["labels"]).float().mean().item() >= 0.9


@pytest.fixture(autouse=True)
def _one_thread():
    """The runs are tiny: one thread avoids spinning threads on a shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
