"""The feature cache's speed-up on the demo: a linear probe (head_only) of the demo backbone on digits 5-9, with
`train.feature_cache` on and off, same seed. Epochs after the first (the first builds the cache) are timed from
the engine's own `EpochEnded.epoch_s`; accuracy must agree.

    python benchmarks/feature_cache.py            # prints a table and one JSON line
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from tuitune.config import load_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded
from tuitune.engine.train.loop import Trainer

DEMO = Path(__file__).resolve().parents[1] / "tuitune" / "profiles" / "demo.toml"


def run(cache: bool, epochs: int, tmp: Path) -> list[EpochEnded]:
    profile = load_profile(
        DEMO,
        [
            'strategy.kind="head_only"',
            f"train.epochs={epochs}",
            f"train.feature_cache={'true' if cache else 'false'}",
            "data.source_classes=[]",
        ],
    )
    events: list = []
    Trainer(profile, tmp / ("cache" if cache else "plain"), events.append, Control()).run()
    return [e for e in events if isinstance(e, EpochEnded)]


def cache_speedup(epochs: int = 5) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tuitune-cache-") as tmp:
        plain, cached = run(False, epochs, Path(tmp)), run(True, epochs, Path(tmp))
    later_plain = statistics.median(e.epoch_s for e in plain[1:])
    later_cached = statistics.median(e.epoch_s for e in cached[1:])
    for a, b in zip(plain, cached):
        print(
            f"epoch {a.epoch}: no cache {a.epoch_s:6.3f}s val acc {a.val_score:.4f} | cache {b.epoch_s:6.3f}s "
            f"val acc {b.val_score:.4f}",
            file=sys.stderr,
        )
    return {
        "cache_speedup": round(later_plain / later_cached, 1),
        "epoch_s_plain": round(later_plain, 4),
        "epoch_s_cached": round(later_cached, 4),
        "first_epoch_s_cached": round(cached[0].epoch_s, 3),
        "val_score_plain": round(plain[-1].val_score, 4),
        "val_score_cached": round(cached[-1].val_score, 4),
    }


if __name__ == "__main__":
    print(json.dumps(cache_speedup()))
