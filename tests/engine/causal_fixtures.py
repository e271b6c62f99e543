"""A tiny causal LM (2 Llama blocks, hidden 32, tied embeddings, a word-level tokenizer with a ChatML template: see
`hf_fixtures._llama`) and chat data it can learn in a few steps: is the <thing> <good word> ? -> yes / no."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.config import RunProfile, profile_from_dict

GOOD, BAD, THINGS = ("good", "great"), ("bad", "awful"), ("cat", "dog", "movie", "film", "plot", "actor")


def chat_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good = rng.random() < 0.5
        word = rng.choice(GOOD if good else BAD)
        rows.append({"prompt": f"is the {rng.choice(THINGS)} {word} ?", "response": "yes" if good else "no"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_llm(tmp: Path) -> Path:
    return make_tiny_hf_dir(tmp, "llama")


def causal_profile(folder: Path, rows: Path, **sections: dict[str, Any]) -> RunProfile:
    """A seconds-long causal-LM run on the tiny model (val: a quarter of the rows)."""
    table: dict[str, Any] = {
        "name": "tiny-chat",
        "model": {"task": "causal_lm", "source": "hf", "name": str(folder), "max_length": 32},
        "data": {"kind": "chat", "path": str(rows), "batch_size": 8, "val_fraction": 0.25},
        "train": {"epochs": 1, "lr": 0.01, "log_every": 2, "schedule": "constant", "seed": 0},
        "strategy": {"kind": "full"},
        "generate": {"samples": 2, "max_new_tokens": 3},
    }
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return profile_from_dict(table, file="tiny-chat.toml")
