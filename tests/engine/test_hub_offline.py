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
