"""Talking to the Hugging Face Hub, for model downloads (`tuitune.engine.model.hub`) and dataset downloads
(`tuitune.engine.data.hfload`) alike: is the hub switched off, can it be reached, why a request failed in one line,
and download progress as `SetupProgressed` events.

Kept at the engine's top, outside its layers, because the model and the data layers both need it and may not
import each other. Torch-free; huggingface_hub is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from tuitune.engine.events import Event
from tuitune.engine.record.progress import Progress

Emit = Callable[[Event], None]
MB = 1e-6

NET_TRIES, NET_WAIT_S, NET_TIMEOUT_S = 3, 0.5, 5.0  # `check_reachable`: 0.5 s, then 1 s between tries
_REACHED: set[str] = set()
# huggingface_hub's HF_HUB_OFFLINE is one switch for the whole process: `hub_switched` blocks set it one at a time
_SWITCH = threading.RLock()
_OUTSIDE: list[bool] = []  # the switch as it was before each open block (outermost first)

_TRUE = ("1", "true", "yes", "on")


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1) in the environment (`--offline` sets the first) or already in
    huggingface_hub's constant."""
    if any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers and timm both depend on it
        return True
    outside = _OUTSIDE[:1]  # a block open in some thread: its setting is its own, not the user's
    return bool(outside[0] if outside else constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_switched(offline: bool, *also: tuple[Any, str]) -> Iterator[None]:
    """huggingface_hub's HF_HUB_OFFLINE (and each `(object, attribute)` of `also`: `datasets`' own copy) set to
    `offline` for the block, then put back. The switch is the process's, and two threads need it at once (the
    compose screen builds a model from the cache, hub off, while it loads a hub dataset, hub on): so one block at a
    time (a lock, re-entrant for a block inside another in one thread), else their saves and restores interleave
    and can leave the hub off for good. `is_offline` meanwhile answers the switch as it is outside the blocks."""
    from huggingface_hub import constants

    targets = [(constants, "HF_HUB_OFFLINE"), *also]
    with _SWITCH:
        saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
        _OUTSIDE.append(constants.HF_HUB_OFFLINE)
        try:
            for obj, name in targets:
                setattr(obj, name, offline)
            yield
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)
            _OUTSIDE.pop()  # after the restore: a reader between the two sees the same value either way


def event_tqdm(emit: Emit | None, filename: str = "") -> type:
    """A `tqdm_class` for huggingface_hub: it constructs it with total and initial bytes (and a desc, which may be
    the URL cut to 40 characters, so the file name is ours when we know it, else the desc's last part), calls
    `update(n)` per chunk and exits it as a context manager. Each bar becomes one `Progress`."""

    class EventTqdm:
        def __init__(
            self, *args: Any, total: float | None = None, initial: float = 0, desc: str = "", **kwargs: Any
        ) -> None:
            name = filename or str(desc).rsplit("/", 1)[-1]
            self.progress = Progress(emit, "download", name, total, "MB", scale=MB)
            if initial:
                self.progress.advance(initial)

        def update(self, n: float | None = 1) -> None:
            self.progress.advance(n or 0)

        def update_transfer(self, n: float | None = 1) -> None:
            """Xet downloads report network bytes apart from file bytes; the file's bytes are the progress."""

        def close(self) -> None:
            pass

        def __enter__(self) -> EventTqdm:
            return self

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is None:
                self.progress.finish()

    return EventTqdm


class _QuietTqdm:
    """A bar that draws nothing: any method call is accepted and ignored; iterating it iterates what it wraps."""

    def __init__(self, iterable: Any = None) -> None:
        self.iterable = iterable

    def __enter__(self) -> _QuietTqdm:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def bar_class(emit: Emit | None, steps: dict[str, str] | None = None) -> type:
    """A tqdm stand-in for libraries that draw huggingface_hub's bars without taking a `tqdm_class`: a byte bar
    (unit "B") is a download's `Progress` (see `event_tqdm`); a bar whose desc starts with one of `steps`' keys is
    that step's `Progress` (`{"Generating": "prepare"}`: `datasets` writing a split into its cache, counted in
    examples); any other bar draws nothing."""
    download = event_tqdm(emit)
    import tqdm as real

    class HubBar:
        format_sizeof = staticmethod(real.tqdm.format_sizeof)  # called on the class by huggingface_hub's xet bars
        get_lock, set_lock = real.tqdm.get_lock, real.tqdm.set_lock  # ... and by tqdm's thread_map

        def __new__(
            cls, iterable: Any = None, *args: Any, unit: str = "", desc: str = "", total: float | None = None, **kw: Any
        ) -> Any:
            desc = str(desc or "")
            if iterable is not None:
                return _QuietTqdm(iterable)
            if unit == "B":
                return download(total=total, desc=desc, initial=kw.get("initial", 0))
            for prefix, task in (steps or {}).items():
                if desc.startswith(prefix):
                    return _StepBar(
                        Progress(emit, task, desc[len(prefix) :].strip(), total or None, unit.strip() or "items")
                    )
            return _QuietTqdm()

    return HubBar


class _StepBar(_QuietTqdm):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def update(self, n: float | None = 1) -> None:
        self.progress.advance(n or 0)

    def close(self) -> None:
        self.progress.finish()

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.progress.finish()


# Where huggingface_hub and datasets look their bar class up by name when drawing one: (module, attribute).
_BAR_SLOTS = (
    ("huggingface_hub.utils.tqdm", "tqdm"),  # plain HTTP downloads (`http_get`)
    ("huggingface_hub.utils._xet_progress_reporting", "tqdm"),  # xet downloads
    ("datasets.builder", "hf_tqdm"),  # "Generating train split"
)


@contextlib.contextmanager
def hub_bars(emit: Emit | None, steps: dict[str, str] | None = None) -> Iterator[None]:
    """While inside, the progress bars that huggingface_hub and datasets draw on stderr (a dataset download does not
    let its caller pass a `tqdm_class`, as `hf_hub_download` does) become `SetupProgressed` events instead: a
    dashboard is never scribbled over, and a person sees what is being fetched. The bar class is looked up by name
    at the moment a bar is made, so replacing the module attributes for the duration is the one hook there is;
    they are restored on the way out, whatever happens. Module-wide: meant for a run's setup, in one thread."""
    bar = bar_class(emit, steps)
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, attr in _BAR_SLOTS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, bar)
        yield
    finally:
        for module, attr, before in reversed(saved):
            setattr(module, attr, before)


def check_reachable(endpoint: str) -> None:
    """Can a connection to the hub (or the proxy the environment names for it) be opened? A few quick tries, then
    an OSError naming the network error. Why: with no network, huggingface_hub retries each request with backoff
    (about 25 s a file, and timm asks for two files) before giving up. A reachable endpoint is remembered."""
    if endpoint in _REACHED:
        return
    target = _connect_target(endpoint)
    for attempt in range(NET_TRIES):
        try:
            socket.create_connection(target, timeout=NET_TIMEOUT_S).close()
            _REACHED.add(endpoint)
            return
        except OSError as e:
            error = e
        if attempt + 1 < NET_TRIES:
            time.sleep(NET_WAIT_S * 2**attempt)
    reason = " ".join((error.strerror or str(error) or type(error).__name__).split())
    raise OSError(f"cannot reach {endpoint} ({reason}; {NET_TRIES} tries): no network? --offline uses the cache only")


def _connect_target(endpoint: str) -> tuple[str, int]:
    """(host, port) a request to `endpoint` connects to first: the proxy when the environment sets one for it."""
    import urllib.request
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host = url.hostname or ""
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = url.hostname or ""
    return host, url.port or (443 if url.scheme == "https" else 80)


def why(e: BaseException) -> str:
    """The first 200 characters of why a hub request failed, on one line."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    cause = e.__cause__ or e.__context__
    if isinstance(e, LocalEntryNotFoundError) and cause is not None:
        e = cause  # "cannot find it in the cache" hides the real reason: the HTTP error or the lost connection
    text = " ".join((str(e).strip() or type(e).__name__).split())
    return text[:200]
