"""Hub downloads, end to end, against a stand-in hub on 127.0.0.1 (`hub_server.StandInHub`): a real download
through huggingface_hub of a tiny BERT this test writes, with progress as events; a cache hit that makes no
request; a failed download that is one line and leaves no file in the cache; `--offline`. Nothing reaches the
internet. In this process (`aim_here`: huggingface_hub's constants, which it reads from HF_ENDPOINT and HF_HOME once
at import, pointed at the stand-in and an empty cache), but for one test that starts `tuitune` as a process with
those variables set, so the way a person points it at a hub is tested too."""

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
from tuitune.cli import main
from tuitune.config import ModelConfig
from tuitune.engine import hubnet
from tuitune.engine.model.backbone import build_backbone

REPO = "tuitune-tests/tiny-bert"
ROOT = Path(__file__).resolve().parents[2]
PROXIES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return repo_files(make_tiny_hf_dir(tmp_path_factory.mktemp("repo"), "bert"))


def hub_env(hub: StandInHub, home: Path) -> dict[str, str]:
    """A process's environment: HF_ENDPOINT at the stand-in, HF_HOME empty, the session's hub switch left out."""
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


def aim_here(hub: StandInHub, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as `hub_env` would start one: huggingface_hub's constants (which it reads from HF_ENDPOINT and
    HF_HOME once, at import) aimed at `hub` and at `home`'s empty cache and token files, the same timeouts, the
    hub switched on, no proxy, no endpoint remembered as reachable. Everything is put back after the test."""
    from huggingface_hub import constants

    for name, value in (
        ("ENDPOINT", hub.url),
        ("HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"),
        ("HF_HOME", str(home)),
        ("HF_HUB_CACHE", str(home / "hub")),
        ("HF_TOKEN_PATH", str(home / "token")),
        ("HF_STORED_TOKENS_PATH", str(home / "stored_tokens")),
        ("HF_HUB_OFFLINE", False),
        ("HF_HUB_ETAG_TIMEOUT", 5),
        ("HF_HUB_DOWNLOAD_TIMEOUT", 5),
    ):
        monkeypatch.setattr(constants, name, value)
    if hasattr(constants, "AGENT_HARNESSES_PATH"):  # huggingface_hub's own once-a-day fetch of its agent registry
        registry = home / ".agent_harnesses.json"  # (telemetry), as if done today: the stand-in's request log
        registry.parent.mkdir(parents=True, exist_ok=True)  # then holds only the requests tuitune makes, whatever
        registry.write_text('{"standardEnvVars": [], "harnesses": {}}', encoding="utf-8")  # ran in this process
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(registry))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", *PROXIES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hubnet, "_REACHED", set())


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
    tmp_path: Path, bert_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    home = tmp_path / "hf-home"
    profile = write_profile(tmp_path)
    monkeypatch.chdir(tmp_path)
    with StandInHub({REPO: bert_files}) as hub:
        aim_here(hub, home, monkeypatch)
        code = main(["train", str(profile), "--headless", "--out", str(tmp_path / "run")])
        out, err = capfd.readouterr()
        assert code == 0, err
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
        assert "download model.safetensors" in out and "tokenize reviews.csv" in out
        print(
            f"\nprogress events seen: {len(progress)} download, e.g. {mine[-1]}; "
            f"model.safetensors sha256 verified ({len(bert_files['model.safetensors'])} bytes)"
        )
        # a cached model is built without a single request to the hub (nothing remembered from the run but the cache)
        monkeypatch.setattr(hubnet, "_REACHED", set())
        before = len(hub.requests)
        build_backbone(ModelConfig(source="hf", name=REPO), 2, task="text")
        assert hub.requests[before:] == []


FAILURES = ("500", "cut", "missing")


def test_a_failed_download_says_why_in_one_line_and_nothing_is_cached(
    tmp_path: Path, bert_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Three repos whose weights fail three ways: a server error, a transfer cut half-way (every retry too), a file
    the hub lists but does not have. `tuitune layers` on each: exit 2 and one error line each, naming the
    file, and three different reasons; nothing half-written in the cache."""
    home = tmp_path / "hf-home"
    repos = {f"{REPO}-{how}": dict(bert_files) for how in FAILURES}
    fail = {f"{REPO}-{how}/model.safetensors": how for how in FAILURES}
    monkeypatch.chdir(tmp_path)
    lines = []
    with StandInHub(repos, fail=fail) as hub:
        aim_here(hub, home, monkeypatch)
        for repo in repos:
            code = main(["layers", repo])
            err = capsys.readouterr().err
            mine = [x for x in err.splitlines() if x.startswith("tuitune: error:")]
            assert code == 2 and len(mine) == 1, err
            lines += mine
    why = {}
    for how, line in zip(FAILURES, lines):
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
    """The process-level test: `tuitune` started as a person would, HF_ENDPOINT and HF_HOME in its environment,
    and `--offline`, which must switch the hub off before huggingface_hub is imported (it reads HF_HUB_OFFLINE
    once, then)."""
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


def test_timm_hf_hub_model_downloads_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", num_classes=3), str(tmp_path / "repo"), safe_serialization=True)
    files = repo_files(tmp_path / "repo")
    home = tmp_path / "hf-home"
    events: list = []
    with StandInHub({TIMM_REPO: files}) as hub:
        aim_here(hub, home, monkeypatch)
        build_backbone(ModelConfig(source="timm", name=f"hf-hub:{TIMM_REPO}"), 3, emit=events.append)
        hub_requests = list(hub.requests)
    assert [(e.detail, e.finished) for e in events if getattr(e, "finished", False)] == [
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
