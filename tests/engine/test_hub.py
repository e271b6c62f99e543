"""Hub downloads, end to end, against a stand-in hub on 127.0.0.1 (`hub_server.StandInHub`): a real download
through huggingface_hub of a tiny BERT this test writes, with progress as events; a cache hit that makes no
request; a failed download that is one line and leaves no file in the cache; `--offline`. Nothing reaches the
internet: each process gets HF_ENDPOINT pointing at the stand-in and its own empty HF_HOME."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.hf_fixtures import make_tiny_hf_dir
from tests.engine.hub_server import COMMIT, StandInHub, repo_files

REPO = "tuitune-tests/tiny-bert"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return repo_files(make_tiny_hf_dir(tmp_path_factory.mktemp("repo"), "bert"))


def hub_env(hub: StandInHub, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        PYTHONPATH=str(ROOT),
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    return env


def tuitune(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuitune", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def write_profile(tmp_path: Path) -> Path:
    rows = [
        f"the movie was {w},{lab}" for w, lab in [("good", "pos"), ("great", "pos"), ("bad", "neg"), ("awful", "neg")]
    ] * 4
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    profile = tmp_path / "hub.toml"
    profile.write_text(
        f'name = "hub"\n[model]\nsource = "hf"\nname = "{REPO}"\nmax_length = 16\n'
        '[data]\nkind = "text"\npath = "reviews.csv"\nbatch_size = 8\nval_fraction = 0.25\n'
        '[train]\nepochs = 1\nlog_every = 1\n[strategy]\nkind = "full"\n'
    )
    return profile


def snapshot_file(home: Path, name: str) -> Path:
    return (
        home
        / "hub"
        / f"models--{REPO.replace('/', '--')}"
        / "snapshots"
        / "0123456789abcdef0123456789abcdef01234567"
        / name
    )


def test_run_downloads_with_progress_then_builds_from_cache_without_network(
    tmp_path: Path, bert_files: dict[str, bytes]
) -> None:
    home = tmp_path / "hf-home"
    with StandInHub({REPO: bert_files}) as hub:
        done = tuitune(
            hub_env(hub, home),
            "train",
            str(write_profile(tmp_path)),
            "--headless",
            "--out",
            str(tmp_path / "run"),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        # the weights are in the standard cache, byte for byte what the hub served
        weights = snapshot_file(home, "model.safetensors")
        assert hashlib.sha256(weights.read_bytes()).digest() == hashlib.sha256(bert_files["model.safetensors"]).digest()
        assert not list((home / "hub").rglob("*.incomplete"))
        # progress: events for each file, the weights' last one finished with every byte counted
        events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
        progress = [e for e in events if e["type"] == "SetupProgressed" and e["task"] == "download"]
        mine = [e for e in progress if e["detail"] == "model.safetensors"]
        size_mb = len(bert_files["model.safetensors"]) / 1e6
        assert mine[0]["done"] == 0 and mine[-1]["finished"] and mine[-1]["done"] == pytest.approx(size_mb, abs=1e-3)
        assert mine[-1]["total"] == pytest.approx(size_mb, abs=1e-3) and mine[-1]["unit"] == "MB"
        assert {e["detail"] for e in progress} >= {"config.json", "model.safetensors", "vocab.txt"}
        first_run = events.index(next(e for e in events if e["type"] == "RunStarted"))
        assert events.index(mine[-1]) < first_run  # shown while the run is still being set up
        assert "download model.safetensors" in done.stdout and "tokenize reviews.csv" in done.stdout
        print(
            f"\nprogress events seen: {len(progress)} download, e.g. {mine[-1]}; "
            f"model.safetensors sha256 verified ({len(bert_files['model.safetensors'])} bytes)"
        )
        # a cached model is built without a single request to the hub
        before = len(hub.requests)
        code = (
            "from tuitune.config import ModelConfig\nfrom tuitune.engine.model.backbone import build_backbone\n"
            f"b = build_backbone(ModelConfig(source='hf', name='{REPO}'), 2, task='text')\n"
            "print(b.description)"
        )
        again = subprocess.run(
            [sys.executable, "-c", code],
            env=hub_env(hub, home),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert again.returncode == 0, again.stderr
        assert hub.requests[before:] == []


FAILURES = ("500", "cut", "missing")
TRY_ALL = """
import sys
from tuitune.cli import main
for repo in sys.argv[1:]:
    print(f"exit {main(['layers', repo])}", file=sys.stderr, flush=True)
"""


def test_a_failed_download_says_why_in_one_line_and_nothing_is_cached(
    tmp_path: Path, bert_files: dict[str, bytes]
) -> None:
    """Three repos whose weights fail three ways: a server error, a transfer cut half-way (every retry too), a file
    the hub lists but does not have. `tuitune layers` on each (one process): one error line each, naming the
    file, and three different reasons; nothing half-written in the cache."""
    home = tmp_path / "hf-home"
    repos = {f"{REPO}-{how}": dict(bert_files) for how in FAILURES}
    fail = {f"{REPO}-{how}/model.safetensors": how for how in FAILURES}
    with StandInHub(repos, fail=fail) as hub:
        done = subprocess.run(
            [sys.executable, "-c", TRY_ALL, *repos],
            env=hub_env(hub, home),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    lines = [x for x in done.stderr.splitlines() if x.startswith(("tuitune: error:", "exit "))]
    assert lines[1::2] == ["exit 2"] * 3, done.stderr
    why = {}
    for how, line in zip(FAILURES, lines[0::2]):
        prefix = f"tuitune: error: model.pretrained: download failed: {REPO}-{how}/model.safetensors: "
        assert line.startswith(prefix), line
        why[how] = line[len(prefix) :]
        repo_cache = home / "hub" / f"models--{REPO.replace('/', '--')}-{how}" / "snapshots" / COMMIT
        assert not (repo_cache / "model.safetensors").exists()  # nothing half-written is ever linked in
        assert (repo_cache / "config.json").exists()  # (the files before it were complete, and are kept)
    print("\n" + "\n".join(f"{how}: {text}" for how, text in why.items()))
    assert "500" in why["500"] and "Server error" in why["500"]
    assert any(w in why["cut"] for w in ("closed", "incomplete", "42000")) and "500" not in why["cut"]
    assert why["missing"].startswith("listed by the hub but not found")
    assert len({text.split(" (a partial file")[0] for text in why.values()}) == 3


def test_offline_flag_never_asks_the_hub(tmp_path: Path, bert_files: dict[str, bytes]) -> None:
    with StandInHub({REPO: bert_files}) as hub:
        done = tuitune(hub_env(hub, tmp_path / "hf-home"), "layers", REPO, "--offline", cwd=tmp_path)
        assert hub.requests == []
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"tuitune: error: model.name: Hugging Face model '{REPO}' is not in the local cache and there is no network; "
        f"fetch it once with: hf download {REPO} (or huggingface-cli download {REPO}), or set model.name to a local "
        "folder"
    ]


TIMM_REPO = "tuitune-tests/tiny-resnet"
TIMM_BUILD = """
import json, sys
from tuitune.config import ModelConfig
from tuitune.engine.model.backbone import build_backbone
events = []
b = build_backbone(ModelConfig(source="timm", name="hf-hub:{repo}"), 3,
                   emit=events.append)
print(json.dumps([e.__dict__ for e in events]))
"""


def test_timm_hf_hub_model_downloads_with_progress(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", num_classes=3), str(tmp_path / "repo"), safe_serialization=True)
    files = repo_files(tmp_path / "repo")
    home = tmp_path / "hf-home"
    with StandInHub({TIMM_REPO: files}) as hub:
        done = subprocess.run(
            [sys.executable, "-c", TIMM_BUILD.format(repo=TIMM_REPO)],
            env=hub_env(hub, home),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        hub_requests = list(hub.requests)
    events = json.loads(done.stdout.splitlines()[-1])
    assert [(e["detail"], e["finished"]) for e in events if e["finished"]] == [
        ("config.json", True),
        ("model.safetensors", True),
    ]
    # one metadata request and one download per file, the safetensors file first (as timm reads it), and nothing
    # more: the build itself ran with the hub off
    assert sorted((m, p.rsplit("/", 1)[-1]) for m, p in hub_requests) == [
        ("GET", "config.json"),
        ("GET", "model.safetensors"),
        ("HEAD", "config.json"),
        ("HEAD", "model.safetensors"),
    ]
    cached = next((home / "hub").rglob("snapshots/*/model.safetensors"))
    assert load_file(str(cached)).keys() == load_file(str(tmp_path / "repo" / "model.safetensors")).keys()
