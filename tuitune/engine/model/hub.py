"""Pretrained weights from the Hugging Face Hub, fetched into its standard cache with progress as events.

Why tuitune fetches before it builds, instead of letting timm / transformers download inside their constructors:
- their downloads draw tqdm bars on stderr, which would scribble over the dashboard; here huggingface_hub's own
  `tqdm_class` hook turns every file's bytes into `SetupProgressed` events (file, MB done / total, rate);
- with the files cached, huggingface_hub still asks the hub for the latest revision on every load; here a cache hit
  is decided locally (`try_to_load_from_cache`) and the model is then built with the hub switched off, so cached
  weights touch no network;
- huggingface_hub streams into `blobs/<etag>.incomplete` and renames only a complete, size-checked file, then links
  it into `snapshots/`: a failed download leaves nothing that a later load would take for the weights.

`HF_HUB_OFFLINE=1` (or `tuitune --offline`, which sets it) skips the fetch: a cache miss is then the one-line
"no cached weights" error, as before. Imports huggingface_hub / timm only inside the functions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from tuitune.engine.events import Event
from tuitune.engine.hubnet import MB, check_reachable, event_tqdm, hub_switched, is_offline
from tuitune.engine.hubnet import why as _why
from tuitune.engine.record.progress import Progress

Emit = Callable[[Event], None]
CHUNK_BYTES = 1 << 20

# What transformers reads from a model repo besides the weights: configs, tokenizer and processor files.
_HF_SIDE_FILES = (".json", ".txt", ".model")


class DownloadFailed(Exception):
    """A download that did not complete: the repo, the file and the first line of why."""


@contextlib.contextmanager
def hub_off() -> Iterator[None]:
    """Build from the cache only: huggingface_hub reads `constants.HF_HUB_OFFLINE` at call time, so timm's and
    transformers' loaders neither re-check revisions nor download behind our back (tqdm bars included). Through
    `hubnet.hub_switched`: another thread's dataset load is not told the hub is off."""
    with hub_switched(True):
        yield


def download(repo_id: str, filename: str, revision: str | None, emit: Emit | None) -> str | None:
    """One file into the standard cache; None when the repo has no such file (a 404), so callers can try the
    next candidate. Any other failure is `DownloadFailed`."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        check_reachable(constants.ENDPOINT)
    except OSError as e:
        raise DownloadFailed(f"{repo_id}/{filename}: {e}") from e
    chunk = constants.DOWNLOAD_CHUNK_SIZE  # 10 MB: at 1 MB/s the bar would move every 10 s; 1 MB chunks cost nothing
    constants.DOWNLOAD_CHUNK_SIZE = min(chunk, CHUNK_BYTES)
    try:
        return hf_hub_download(repo_id, filename, revision=revision, tqdm_class=event_tqdm(emit, filename))
    except LocalEntryNotFoundError as e:  # an EntryNotFoundError too, but it means "could not ask": not a 404
        raise DownloadFailed(f"{repo_id}/{filename}: {_why(e)}") from e
    except EntryNotFoundError:
        return None
    except Exception as e:
        raise DownloadFailed(f"{repo_id}/{filename}: {_why(e)}") from e
    finally:
        constants.DOWNLOAD_CHUNK_SIZE = chunk


def cached(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, revision=revision)
    return path if isinstance(path, str) else None


# ------------------------------------------------------------------------------------------------------ timm


def fetch_timm(name: str, emit: Emit | None) -> None:
    """Fetch the file `timm.create_model(name, pretrained=True)` will load, unless cached or offline."""
    if is_offline():
        return
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import _get_safe_alternatives, hf_split

    if name.startswith(("hf-hub:", "hf_hub:")):
        repo, filename = name.split(":", 1)[1], "pytorch_model.bin"
        source, location = "hf-hub", repo
        repo_id, revision = hf_split(repo)
        _fetch_files(repo_id, revision, ["config.json"], emit)
    else:
        pcfg = get_pretrained_cfg(name)
        if pcfg is None:
            return
        source, location = _resolve_pretrained_source(pcfg.to_dict())
        filename = "pytorch_model.bin"
    if source == "url":
        _fetch_url(location, emit)
        return
    if source != "hf-hub":
        return
    if isinstance(location, (tuple, list)):
        location, filename = location
    repo_id, revision = hf_split(location)
    candidates = [*_get_safe_alternatives(filename), filename]
    if any(cached(repo_id, f, revision) for f in candidates):
        return
    for f in candidates:  # timm's own order: the safetensors alternative first
        if download(repo_id, f, revision, emit) is not None:
            return
    raise DownloadFailed(f"{repo_id}: none of {', '.join(candidates)} is in the repository")


def _fetch_url(url: str, emit: Emit | None) -> None:
    """Weights at a plain URL (older timm models) go through torch.hub's cache, as timm does; torch.hub's own
    download has no progress hook, so the event says when it starts and ends (torch.hub writes a temp file
    and moves it into place: nothing half-written is used either)."""
    from timm.models._hub import check_cached_file, download_cached_file

    if check_cached_file(url, check_hash=False):
        return
    progress = Progress(emit, "download", os.path.basename(url), None, "MB")
    try:
        path = download_cached_file(url, check_hash=False, progress=False)
    except Exception as e:
        raise DownloadFailed(f"{url}: {_why(e)}") from e
    progress.advance(Path(path).stat().st_size * MB)
    progress.finish()


def _fetch_files(repo_id: str, revision: str | None, files: list[str], emit: Emit | None) -> None:
    for f in files:
        if not cached(repo_id, f, revision) and download(repo_id, f, revision, emit) is None:
            raise DownloadFailed(f"{repo_id}/{f}: not in the repository")


# ------------------------------------------------------------------------------------------------------ hf


def fetch_hf(repo_id: str, emit: Emit | None, weights: bool = True) -> None:
    """Fetch a transformers repo's config, tokenizer / processor files and (`weights`) its weights, unless a
    cached snapshot already holds the config and a weights file, or the hub is off. The repo's file list decides
    what to fetch (safetensors when present, else .bin; root-level side files), as snapshot_download's
    allow_patterns would, but file by file, so each file's progress carries its name."""
    if is_offline() or Path(repo_id).expanduser().exists():
        return
    config = cached(repo_id, "config.json")
    if config is not None and (not weights or _has_weights(Path(config).parent)):
        return
    from huggingface_hub import HfApi, constants

    try:
        check_reachable(constants.ENDPOINT)
        info = HfApi().model_info(repo_id)
    except Exception as e:
        raise DownloadFailed(f"{repo_id}: {_why(e)}") from e
    names = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
    wanted = [n for n in names if n.endswith(_HF_SIDE_FILES)]
    if weights:
        safe = [n for n in names if n.endswith(".safetensors")]
        wanted += safe or [n for n in names if n.endswith(".bin")]
    if "config.json" not in wanted:
        raise DownloadFailed(f"{repo_id}: no config.json in the repository (not a transformers model)")
    for n in sorted(wanted, key=lambda n: (n != "config.json", n)):
        if download(repo_id, n, None, emit) is None:  # "main", so the cache's refs/main points at it
            raise DownloadFailed(f"{repo_id}/{n}: listed by the hub but not found")


def _has_weights(snapshot: Path) -> bool:
    return any(p.suffix in (".safetensors", ".bin") for p in snapshot.iterdir())
