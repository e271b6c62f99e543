"""Hugging Face datasets, loaded with the `datasets` library: a hub id (`data.name`, `data.config`, `data.revision`)
or a local path (`data.path`: a `save_to_disk` folder, a folder of data files, or one parquet / arrow / csv / json
file), as a dict of splits (name -> `datasets.Dataset`). What a kind builds from them is `tuitune.engine.data.hfkind`.

Why `datasets` and not a reader of our own: it is how these datasets are kept (the hub's repos of parquet files, the
folders `save_to_disk` writes, the features that say which column is a `ClassLabel` or an `Image`), and its cache
turns a download into memory-mapped Arrow files once.

- Progress: the downloads `datasets` makes draw huggingface_hub's bars, and preparing a split draws its own; both
  become `SetupProgressed` events while a load runs (`hubnet.hub_bars`), so nothing scribbles on the dashboard.
- Offline: `--offline` (HF_HUB_OFFLINE=1) or HF_DATASETS_OFFLINE=1 loads from the cache only, as does a hub that
  cannot be reached (checked in seconds, not after huggingface_hub's retries); not cached is then one line.
- Loaded once per process and source (`load_splits`): a run asks for the classes, the task and the splits at
  different times (before and after the model is built), and a sweep's trials in one process share the load.

`datasets` is imported when such a run starts, never before.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.config import DataConfig
from tuitune.engine import hubnet
from tuitune.engine.events import Event
from tuitune.errors import DataError, UserError, first_line

Emit = Callable[[Event], None]
# A data file's suffix -> the `datasets` builder that reads it, and that builder's arguments.
FILE_BUILDERS: dict[str, tuple[str, dict[str, str]]] = {
    ".parquet": ("parquet", {}),
    ".arrow": ("arrow", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
}
KEEP = 2  # sources kept loaded in one process (a sweep's trials reuse the last one)
_LOADED: dict[Source, dict[str, Any]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: a hub id (with its configuration and revision) or a local path."""

    name: str = ""
    config: str = ""
    revision: str = ""
    path: str = ""

    @property
    def where(self) -> str:
        """How error lines and the run's data line name it."""
        if not self.name:
            return self.path
        return self.name + (f" ({self.config})" if self.config else "") + (f"@{self.revision}" if self.revision else "")


def source(cfg: DataConfig) -> Source:
    return Source(cfg.name, cfg.config, cfg.revision, str(Path(cfg.path).expanduser()) if cfg.path else "")


def load_splits(cfg: DataConfig, emit: Emit | None = None) -> dict[str, Any]:
    """The dataset's splits, name -> `datasets.Dataset`, loaded once per process (see the module); `emit` gets the
    download's and the preparation's progress."""
    src = source(cfg)
    with _LOCK:
        if src not in _LOADED:
            _LOADED[src] = _load(src, emit)
            while len(_LOADED) > KEEP:
                _LOADED.pop(next(iter(_LOADED)))
        return _LOADED[src]


def forget() -> None:
    """Drop what `load_splits` keeps (a test that changes the files behind a path calls it)."""
    with _LOCK:
        _LOADED.clear()


def _load(src: Source, emit: Emit | None) -> dict[str, Any]:
    datasets = import_datasets()
    with _quiet_bars(datasets), hubnet.hub_bars(emit, {"Generating": "prepare"}):
        loaded = _load_hub(datasets, src) if src.name else _load_local(datasets, Path(src.path))
    if isinstance(loaded, datasets.Dataset):  # a folder that `Dataset.save_to_disk` wrote: one split
        return {"train": loaded}
    return dict(loaded)


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError("data.kind: \"hf\" needs the datasets library: pip install 'tuitune[hf]'") from None
    return datasets


@contextlib.contextmanager
def _quiet_bars(datasets: Any) -> Iterator[None]:
    """`datasets`' own bars (reading files, "Loading dataset from disk") off for the load, as they were after."""
    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _hub_offline(datasets: Any, offline: bool) -> Iterator[None]:
    """Both switches `datasets` reads at call time, set for the load: its own (read once, at its import, from
    HF_DATASETS_OFFLINE or HF_HUB_OFFLINE) and huggingface_hub's, one block at a time (`hubnet.hub_switched`)."""
    with hubnet.hub_switched(offline, (datasets.config, "HF_HUB_OFFLINE")):
        yield


def _load_hub(datasets: Any, src: Source) -> Any:
    from huggingface_hub import constants

    offline, unreachable = hubnet.is_offline(), ""
    if not offline:
        try:
            hubnet.check_reachable(constants.ENDPOINT)
        except OSError as e:  # the cache may hold it: try that before saying no
            offline, unreachable = True, str(e)
    try:
        with _hub_offline(datasets, offline):
            return datasets.load_dataset(src.name, src.config or None, revision=src.revision or None)
    except Exception as e:
        if offline:
            why = unreachable or "--offline (HF_HUB_OFFLINE=1)"
            raise DataError(
                f"data.name: Hugging Face dataset {src.where!r} is not in the local cache and the hub is off "
                f"({why}); load it once with the network, or set data.path to a local copy"
            ) from None
        raise _hub_error(e, src) from None


def _hub_error(e: Exception, src: Source) -> UserError:
    """One line for what `load_dataset` raised, naming the key at fault and, where it says, what exists."""
    text = str(e)
    listed = re.search(r"\[([^\]]*)\]", text)
    names = ", ".join(n.strip(" '\"") for n in listed.group(1).split(",")) if listed else ""
    kind = type(e).__name__
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError"):
        return DataError(f"data.name: no dataset {src.name!r} on the hub (or it is private: log in with hf auth login)")
    if kind == "RevisionNotFoundError" or "Invalid rev id" in text:
        return DataError(f"{src.where}: data.revision: no revision {src.revision!r} in the dataset's repository")
    if "BuilderConfig" in text and "not found" in text:
        return DataError(f"{src.where}: data.config: no configuration {src.config!r} (configurations: {names})")
    if "Config name is missing" in text:
        return DataError(f"{src.where}: data.config: required, the dataset has several (configurations: {names})")
    return DataError(f"{src.where}: data.name: cannot load: {first_line(e)}")


def _load_local(datasets: Any, path: Path) -> Any:
    """A `save_to_disk` folder as it was saved; a folder of data files as `load_dataset` reads one (splits from the
    file names: `train.csv`, `test.csv`, ...); one data file as the `train` split."""
    if not path.exists():
        raise DataError(f"{path}: data.path: no such folder or file")
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path))
        suffix = path.suffix.lower()
        if suffix not in FILE_BUILDERS:
            raise DataError(
                f"{path}: data.path: expected a save_to_disk folder, a folder of data files, or a "
                f"{', '.join(FILE_BUILDERS)} file"
            )
        builder, kwargs = FILE_BUILDERS[suffix]
        return datasets.load_dataset(builder, data_files={"train": str(path)}, **kwargs)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: data.path: cannot load: {first_line(e)}") from None
