from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuitune.config import RunProfile, apply_overrides, profile_from_dict

TINY_MODEL = {
    "source": "timm",
    "name": "resnet18",
    "pretrained": False,
    "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    "img_size": 32,
}


def tiny_profile(**sections: dict[str, Any]) -> RunProfile:
    """A seconds-long run: a ~50k-parameter resnet18 on an easy synthetic 32x32 task (no domain-shift measurement
    unless `train={"domain_shift": True}`)."""
    table: dict[str, Any] = {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "data": {"kind": "synthetic", "num_samples": 96, "num_classes": 3, "batch_size": 16, "val_fraction": 0.25},
        "train": {
            "epochs": 2,
            "lr": 0.01,
            "optimizer": "adamw",
            "log_every": 2,
            "schedule": "constant",
            "seed": 0,
            "domain_shift": False,  # a sixth of a tiny run's time; the tests of the shift and its uses turn it on
        },
        "strategy": {"kind": "full"},
    }
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return profile_from_dict(table, file="tiny.toml")


@pytest.fixture
def events_sink():
    events: list = []
    return events, events.append


def of_type(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


__all__ = ["Path", "apply_overrides", "of_type", "tiny_profile"]
