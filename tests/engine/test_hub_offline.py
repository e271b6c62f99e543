"""No network: a download is one line naming the network error after a few quick tries (seconds), not ~25 s of
huggingface_hub's retries per file ending in the wrong cause ("none of ... is in the repository"). In process:
"no network" is a closed port on 127.0.0.1 as the hub's endpoint."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tuitune.engine import hubnet
from tuitune.engine.model import hub


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub's endpoint is a closed port (as huggingface_hub would have read it from HF_ENDPOINT at import),
    its cache a fresh folder, no proxy, and the test session's offline guard lifted."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return endpoint


def test_no_network_is_one_line_naming_the_error_in_seconds(no_network: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(hub.DownloadFailed) as failed:
        hub.download("timm/resnet18.a1_in1k", "model.safetensors", None, None)
    took = time.monotonic() - t0
    assert str(failed.value) == (
        f"timm/resnet18.a1_in1k/model.safetensors: cannot reach {no_network} (Connection refused; 3 tries): "
        "no network? --offline uses the cache only"
    )
    assert took < 10, took  # before: about 24 s for this file, then as long again for the next candidate
    with pytest.raises(hub.DownloadFailed, match="Connection refused"):  # a transformers repo: its file list
        hub.fetch_hf("tuitune-tests/tiny-bert", None)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_lost_connection_mid_way_is_not_a_missing_file(no_network: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint answered once (remembered as reachable), then the network went: huggingface_hub's
    LocalEntryNotFoundError is an EntryNotFoundError too, but it is no 404, so no "not in the repository"."""
    monkeypatch.setattr(hubnet, "_REACHED", {no_network})
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # its backoff, not our test's time
    with pytest.raises(hub.DownloadFailed, match=r"^timm/resnet18.a1_in1k/model\.safetensors: .*Connection refused"):
        hub.download("timm/resnet18.a1_in1k", "model.safetensors", None, None)


def test_a_model_built_hub_off_in_one_thread_leaves_another_threads_dataset_load_online(monkeypatch) -> None:
    """The compose screen reads the layer groups (a model built from the cache, hub off) and a hub dataset in two
    threads at once. The load must not be told the hub is off by the build's own switch, nor find it off after:
    before, their saves and restores interleaved and every later read said "the hub is off (--offline ...)"."""
    import threading
    from types import SimpleNamespace

    from huggingface_hub import constants

    from tuitune.engine.data import hfload

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    datasets = SimpleNamespace(config=SimpleNamespace(HF_HUB_OFFLINE=False))  # the switch `datasets` keeps
    inside, leave, seen = threading.Event(), threading.Event(), []

    def build() -> None:
        with hub.hub_off():
            inside.set()
            leave.wait(10)

    def load() -> None:
        with hfload._hub_offline(datasets, hubnet.is_offline()):
            seen.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))

    builder = threading.Thread(target=build)
    builder.start()
    assert inside.wait(10)
    assert hubnet.is_offline() is False  # the user's setting, not the build's
    loader = threading.Thread(target=load)
    loader.start()
    loader.join(0.3)
    assert loader.is_alive() and not seen  # waits for the build's block: one block at a time
    leave.set()
    builder.join(10)
    loader.join(10)
    assert seen == [(False, False)]
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, hubnet.is_offline()) == (False, False, False)
