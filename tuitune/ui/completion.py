"""Completions for the composing screen's backbone and dataset inputs: timm's model names, the models and datasets
already in the Hugging Face cache, and paths on disk.

Each list is made once, on first use, in a thread (`asyncio.to_thread`): `timm.list_models()` imports timm (seconds)
and scanning the cache walks a folder, and neither may hold up the screen. Until a list is ready an input simply has
no suggestion. `Candidates.matches` also gives the first few matches, for the line under the form.
Nothing heavy is imported when this module is.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.suggester import Suggester

MAX_ENTRIES = 200  # entries of one folder looked at for a path completion
PATHS = "path"  # the list name of inputs that take paths only (a weights file, a data folder or file)


def timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def cached_repos(repo_type: str) -> list[str]:
    """The ids of the `repo_type` ("model", "dataset") repos in the Hugging Face cache; none without a cache."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        cache = scan_cache_dir(constants.HF_HUB_CACHE)  # named: its default is the folder read at import
        return sorted(r.repo_id for r in cache.repos if r.repo_type == repo_type)
    except Exception:  # no cache folder yet, an unreadable one: nothing to offer
        return []


def timm_candidates() -> list[str]:
    """timm's architectures, then timm models cached from the hub (`hf-hub:timm/...`)."""
    cached = [f"hf-hub:{r}" for r in cached_repos("model") if r.startswith("timm/")]
    return cached + timm_names()


def hf_candidates() -> list[str]:
    return cached_repos("model")


def dataset_candidates() -> list[str]:
    return cached_repos("dataset")


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def path_matches(value: str, limit: int = 10) -> list[str]:
    """Paths that start with `value`: the entries of its folder that do (a folder's with a trailing `/`)."""
    head, sep, stem = value.rpartition("/")
    folder = Path(os.path.expanduser(head + sep)) if sep else Path(".")
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for _, e in zip(range(MAX_ENTRIES), it)), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if e.name.startswith(stem) and (stem.startswith(".") or not e.name.startswith(".")):
            out.append(f"{head}{sep}{e.name}{'/' if e.is_dir() else ''}")
        if len(out) >= limit:
            break
    return out


class Candidates:
    """Named lists of completions, each made in a thread when first asked for, and kept: for ever, or for the
    seconds `max_age` gives (the Hugging Face cache's lists: a download adds to them); `ready(name)` is None while
    there is no list to use."""

    def __init__(self, makers: dict[str, Callable[[], list[str]]], max_age: dict[str, float] | None = None) -> None:
        self.makers, self.max_age = makers, dict(max_age or {})
        self._lists: dict[str, list[str]] = {}
        self._made: dict[str, float] = {}
        self._lock = threading.Lock()

    def forget(self, *names: str) -> None:
        """Make these lists again on next use (the cache's: a download since may have added to them)."""
        with self._lock:
            for name in names:
                self._lists.pop(name, None)
                self._made.pop(name, None)

    def ready(self, name: str) -> list[str] | None:
        age = time.monotonic() - self._made.get(name, -math.inf)
        return self._lists.get(name) if age <= self.max_age.get(name, math.inf) else None

    def load(self, name: str) -> list[str]:
        """In a thread: the list, made now if there is none to use."""
        with self._lock:
            if self.ready(name) is None:
                try:
                    self._lists[name] = self.makers[name]()
                except Exception:  # timm missing or broken, say: no completions, never a crash
                    self._lists[name] = []
                self._made[name] = time.monotonic()
            return self._lists[name]

    async def matches(self, name: str, value: str, limit: int = 10) -> list[str]:
        """The first `limit` completions of `value` (case aside): paths for a path (or for the list "path"), else
        the list's names."""
        if name == PATHS or looks_like_path(value):
            return await asyncio.to_thread(path_matches, value, limit)
        names = self.ready(name)
        if names is None:
            names = await asyncio.to_thread(self.load, name)
        folded = value.casefold()
        return [n for n in names if n.casefold().startswith(folded)][:limit]


class ListSuggester(Suggester):
    """The first completion of `candidates`' list `which()` names (it may change: the backbone's source) for an
    input's value; a path's for a path."""

    def __init__(self, candidates: Candidates, which: Callable[[], str]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.candidates, self.which = candidates, which

    async def get_suggestion(self, value: str) -> str | None:
        found = await self.candidates.matches(self.which(), value, 1)
        return found[0] if found and found[0] != value else None


CACHED = ("hf", "dataset")  # the lists read from the Hugging Face cache: made again after CACHE_S, and per screen
CACHE_S = 5.0
CANDIDATES = Candidates(
    {"timm": timm_candidates, "hf": hf_candidates, "dataset": dataset_candidates}, dict.fromkeys(CACHED, CACHE_S)
)
