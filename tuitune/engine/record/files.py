"""Files written atomically (a temp file beside the target, fsync, rename, fsync of the folder): a crash or
`kill -9` mid-write leaves the old file or the new one, never a torn one. Plain Python (no torch), so the run
records, the remote runs, the sweeps and the picker all write through it without loading the engine's weight."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["WriteFailed", "atomic_write", "write_json_atomic", "write_text_atomic"]


class WriteFailed(Exception):
    """A run record could not be written (a full disk, a file-size limit, an I/O error): one line naming the file
    and the system's error. The run ends `failed` with it rather than training on with nowhere to save."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: cannot write: {_reason(error)}")


_RUST_IO = re.compile(r"I/O error: (.+) \(os error (\d+)\)")  # how safetensors (Rust) words an OSError


def _reason(error: BaseException) -> str:
    """The system's words and the errno's name: "No space left on device (ENOSPC)"."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({errno.errorcode.get(error.errno or 0, error.errno)})"
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    match = _RUST_IO.search(text)
    if match:
        return f"{match.group(1)} ({errno.errorcode.get(int(match.group(2)), match.group(2))})"
    return text[:200]


def _write_error(error: BaseException) -> BaseException | None:
    """The system error behind a failed write, or None when it was no write error (a bug is not a full disk).
    torch.save writing to a Python file object fails with a RuntimeError whose context is the OSError;
    safetensors wraps it in its own SafetensorError, the errno only in the text."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        if type(seen).__name__ == "SafetensorError" and "I/O error" in str(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`. A write that fails
    (ENOSPC, EFBIG, EIO, however the writer wraps them) raises `WriteFailed` and leaves `path` as it was, the
    temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteFailed(path, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except WriteFailed:
        raise
    except Exception as e:
        interrupt = _interrupt_under(e)
        if interrupt is not None:  # Ctrl+C mid-write, and the writer's cleanup raised over it (torch's zip writer)
            raise interrupt from e
        cause = _write_error(e)
        if cause is None:
            raise
        raise WriteFailed(path, cause) from e
    finally:
        tmp.unlink(missing_ok=True)


def _interrupt_under(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt an error was raised while handling, if any: it is what ended the write."""
    seen: BaseException | None = error.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as indented JSON (one trailing newline) at `path`, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
