"""Make the demo's "pretrained" backbone: a small timm resnet18 trained with tuitune itself on digits 0-4.

The demo then fine-tunes it on digits 5-9, a real transfer task, offline. Run from the repo root:

    python scripts/make_demo_backbone.py

It writes tuitune/profiles/demo_backbone.safetensors with its digits-0-4 classifier: the demo re-creates the head
for 5-9 and keeps this one aside as the *source* head, to track how well digits 0-4 are still recognised.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from tuitune.config import profile_from_dict
from tuitune.console import ConsolePrinter
from tuitune.engine.commands import Control
from tuitune.engine.events import RunFinished
from tuitune.engine.session import run_training

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tuitune" / "profiles" / "demo_backbone.safetensors"

PRETRAIN = {
    "name": "demo-pretrain",
    "model": {
        "source": "timm",
        "name": "resnet18",
        "pretrained": False,
        "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16},
        "img_size": 32,
    },
    "data": {"kind": "digits", "classes": [0, 1, 2, 3, 4], "batch_size": 32, "val_fraction": 0.2},
    "train": {"epochs": 15, "lr": 3e-3, "optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine", "seed": 0},
    "strategy": {"kind": "full"},
}


def main() -> None:
    profile = profile_from_dict(PRETRAIN, file="make_demo_backbone.py")
    run_dir = Path(tempfile.mkdtemp(prefix="tuitune-demo-pretrain-"))
    try:
        final = run_training(profile, run_dir, ConsolePrinter(), Control(), interactive=False)
        assert isinstance(final, RunFinished), final
        weights = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
        backbone = {k: v.contiguous() for k, v in weights.items()}
        save_file(
            backbone,
            str(OUT),
            metadata={
                "source": "tuitune scripts/make_demo_backbone.py",
                "data": "UCI digits 0-4",
                "arch": "resnet18 channels 16-128",
            },
        )
        print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB, {len(backbone)} tensors)")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
