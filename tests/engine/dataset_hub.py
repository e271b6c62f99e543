"""The stand-in hub (`hub_server.StandInHub`) serving dataset repos too, for the real `datasets.load_dataset`.

Besides what model downloads ask, `datasets` asks a dataset repo's info (`GET /api/datasets/{repo}[/revision/{rev}]`:
its commit and file list), lists its tree (`GET /api/datasets/{repo}/tree/{rev}[/{path}]`, to find the data files
by their split names), asks about single paths (`POST /api/datasets/{repo}/paths-info/{rev}`), and downloads files
(`/datasets/{repo}/resolve/{rev}/{file}`, answered by the model hub's own file route: a dataset repo is kept in
`repos` under `datasets/{repo}`, so `fail` and `throttle` work for it alike).

`text_repo()` and `image_repo()` write the two small parquet repos the tests serve (as `push_to_hub` lays them out:
`data/{split}-00000-of-00001.parquet`, the features, `ClassLabel` names included, in the parquet schema), and
`point_at` aims huggingface_hub and `datasets`, in this process, at a hub and at fresh caches.

Run it by hand for a demo: `python tests/engine/dataset_hub.py [REPO_ID FOLDER] [--throttle BYTES_PER_S]` serves the
files under FOLDER (recursively) as dataset repo REPO_ID, or with no folder the two test repos (TEXT_REPO,
IMAGE_REPO; with `--tiny-bert` also a tiny BERT model repo, TINY_BERT), and prints its URL.
"""

from __future__ import annotations

import hashlib
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.engine.hub_server import COMMIT, StandInHub

TREE_OID = "f" * 40
TEXT_REPO, IMAGE_REPO = "tuitune-tests/tiny-reviews", "tuitune-tests/tiny-shapes"
TINY_BERT = "tuitune-tests/tiny-bert"  # the model repo `--tiny-bert` serves too (tests/engine/hf_fixtures.py)
GOOD = ("good", "great", "fun", "nice", "happy")
BAD = ("bad", "awful", "boring", "sad", "hate")


class DatasetHub(StandInHub):
    """`with DatasetHub({"org/name": {"data/train-00000-of-00001.parquet": b"..."}}) as hub:`; `models`: model repos,
    as `StandInHub` takes them."""

    def __init__(
        self,
        datasets: dict[str, dict[str, bytes]],
        models: dict[str, dict[str, bytes]] | None = None,
        fail: dict[str, str] | None = None,
        throttle: float = 0.0,
    ) -> None:
        repos = dict(models or {})
        repos.update({f"datasets/{repo}": files for repo, files in datasets.items()})
        super().__init__(repos, fail=fail, throttle=throttle)
        hub = self

        class Handler(self.server.RequestHandlerClass):  # type: ignore[name-defined,misc]
            def do_POST(self) -> None:
                hub._post(self)

        self.server.RequestHandlerClass = Handler

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(h.path.split("?")[0])
        parts = path.strip("/").split("/")
        if parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
            self.requests.append((h.command, path))
            return self._file(h, "/".join(parts[:3]), "/".join(parts[5:]), body)
        if not path.startswith("/api/datasets/"):
            return super()._answer(h, body)
        self.requests.append((h.command, path))
        repo, rest = _split_repo(path[len("/api/datasets/") :])
        files = self.repos.get(f"datasets/{repo}")
        if files is None:
            return self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        if rest[:1] == ["tree"]:
            recursive = parse_qs(h.path.partition("?")[2]).get("recursive", ["false"])[0].lower() == "true"
            return self._json(h, _tree(files, "/".join(rest[2:]), recursive), body)
        info = {
            "id": repo,
            "sha": COMMIT,
            "private": False,
            "siblings": [{"rfilename": f, "size": len(files[f])} for f in sorted(files)],
        }
        self._json(h, info, body)

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(h.path.split("?")[0])
        self.requests.append(("POST", path))
        form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode())
        repo, rest = _split_repo(path[len("/api/datasets/") :]) if path.startswith("/api/datasets/") else ("", [])
        files = self.repos.get(f"datasets/{repo}")
        if files is None or rest[:1] != ["paths-info"]:
            return self._send(h, 404, b"not found", {"X-Error-Code": "RepoNotFound"}, True)
        entries = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in files:
                entries.append(_file_entry(p, files[p]))
            elif any(f.startswith(p + "/") for f in files):
                entries.append({"type": "directory", "path": p, "oid": TREE_OID})
        self._json(h, entries, True)

    def _json(self, h: BaseHTTPRequestHandler, data: Any, body: bool) -> None:
        self._send(h, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)


def _split_repo(rest: str) -> tuple[str, list[str]]:
    parts = rest.strip("/").split("/")
    return "/".join(parts[:2]), parts[2:]


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}


def _tree(files: dict[str, bytes], under: str, recursive: bool) -> list[dict[str, Any]]:
    """The entries under `under` ("" = the root): its files and folders, or everything below it (recursive)."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for name in sorted(files):
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": TREE_OID})
        if recursive or len(parts) == 1:
            entries[name] = _file_entry(name, files[name])
    return list(entries.values())


def parquet(columns: dict[str, list], features: Any) -> bytes:
    import io

    import datasets

    buf = io.BytesIO()
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_dict(columns, features=features).to_parquet(buf)
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return buf.getvalue()


def text_repo(n_train: int = 40, n_test: int = 10) -> dict[str, bytes]:
    """Movie reviews in words a tiny test tokenizer knows: `sentence` (string), `label` (ClassLabel neg, pos; pos
    when the review's word is a good one) and `idx` (int32, a column to ignore)."""
    import datasets

    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "idx": datasets.Value("int32"),
        }
    )

    def rows(n: int, offset: int) -> dict[str, list]:
        words = [(GOOD if i % 2 else BAD)[(i // 2 + offset) % 5] for i in range(n)]
        nouns = ("movie", "film", "plot")
        return {
            "sentence": [f"the {nouns[i % 3]} was very {w}" for i, w in enumerate(words)],
            "label": [i % 2 for i in range(n)],
            "idx": list(range(n)),
        }

    return {
        "README.md": b"---\nlicense: cc0-1.0\n---\n# tiny reviews\n",
        "data/train-00000-of-00001.parquet": parquet(rows(n_train, 0), features),
        "data/test-00000-of-00001.parquet": parquet(rows(n_test, 3), features),
    }


def image_repo(n_train: int = 24) -> dict[str, bytes]:
    """8x8 PNGs: `image` (Image), `label` (ClassLabel light, dark: not in alphabetical order): dark ones are dark."""
    import io

    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["light", "dark"])})

    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
        return buf.getvalue()

    images = [{"bytes": png(200 + 2 * i if i % 2 == 0 else 20 + 3 * i), "path": None} for i in range(n_train)]
    return {
        "data/train-00000-of-00001.parquet": parquet(
            {"image": images, "label": [i % 2 for i in range(n_train)]}, features
        )
    }


def point_at(hub: StandInHub, cache: Path, set_attr: Any) -> None:
    """Aim huggingface_hub and `datasets` (both read their endpoint and caches once, at import) at `hub`, with fresh
    caches under `cache` and the hub switched on. `set_attr(obj, name, value)`: pytest's `monkeypatch.setattr`, so
    everything is put back after the test."""
    import datasets
    from huggingface_hub import constants

    for name, value in (
        ("ENDPOINT", hub.url),
        ("HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"),
        ("HF_HUB_CACHE", str(cache / "hub")),
        ("HF_HUB_OFFLINE", False),
    ):
        set_attr(constants, name, value)
    for name, value in (
        ("HF_ENDPOINT", hub.url),
        ("HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        ("HF_DATASETS_CACHE", cache / "datasets"),
        ("DOWNLOADED_DATASETS_PATH", cache / "datasets" / "downloads"),
        ("EXTRACTED_DATASETS_PATH", cache / "datasets" / "downloads" / "extracted"),
        ("HF_HUB_OFFLINE", False),
    ):
        set_attr(datasets.config, name, value)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, keyed by its path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


if __name__ == "__main__":  # a demo hub: [REPO_ID FOLDER] [--throttle BYTES_PER_S] [--tiny-bert]
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("repo", nargs="?")
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--throttle", type=float, default=0.0)
    parser.add_argument("--tiny-bert", action="store_true", help="also serve the model repo " + TINY_BERT)
    args = parser.parse_args()
    repos = (
        {args.repo: folder_files(Path(args.folder))}
        if args.folder
        else {TEXT_REPO: text_repo(), IMAGE_REPO: image_repo()}
    )
    models = {}
    if args.tiny_bert:
        import tempfile

        from tests.engine.hf_fixtures import make_tiny_hf_dir
        from tests.engine.hub_server import repo_files

        models[TINY_BERT] = repo_files(make_tiny_hf_dir(Path(tempfile.mkdtemp()), "bert"))
    with DatasetHub(repos, models, throttle=args.throttle) as hub:
        print(hub.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
