"""Where a sweep's Optuna study lives: the journal file in the sweep folder (the default), or any Optuna storage URL
given with `tuitune sweep --storage URL` (`sqlite:///sweep.db`, `postgresql://user@host/db`, `mysql://user@host/db`),
which workers on several machines share.

A sweep folder started with `--storage` records the URL and the study's name in `SWEEP_DIR/study.json` (readable by
its owner only: a URL may carry a password), so everything that opens the folder later (a resumed sweep, `--workers`
processes, the leaderboard screen, `best.toml`) finds the same study without being told again. The study is named
after the profile (`name`): every machine running the same profile against one storage joins one study.

A URL is checked where it enters, before any folder is made: its form, its driver, and that the database opens;
each failure is one line (the password never printed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.errors import UserError

PLACE = "study.json"
JOURNAL = "journal.log"
STUDY_NAME = "tuitune"  # the study's name in a journal: each sweep folder holds its own journal
# A driver module that is missing -> what to install (SQLAlchemy's default drivers for these URLs).
DRIVERS = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
}
OPEN_TRIES, OPEN_WAIT_S = 4, 0.25  # `_open`: 0.25 s, 0.5 s, 0.75 s between tries
EXAMPLES = "e.g. sqlite:///sweep.db, postgresql://user@host/db, mysql+pymysql://user@host/db"


@dataclass(frozen=True)
class Place:
    """A study's storage URL ("" = the journal in the sweep folder) and its name there."""

    storage: str = ""
    name: str = STUDY_NAME


def place(sweep_dir: Path) -> Place:
    path = Path(sweep_dir) / PLACE
    if not path.is_file():
        return Place()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Place(str(data["storage"]), str(data["study"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: unreadable ({e}); it says where this sweep's study is: restore or remove it"
        ) from None


def has_study(sweep_dir: Path) -> bool:
    """Whether the folder's sweep has started: its journal exists, or it names a storage."""
    return (Path(sweep_dir) / JOURNAL).exists() or (Path(sweep_dir) / PLACE).exists()


def shown(url: str) -> str:
    """The URL as it may be printed: its password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def check_storage(url: str) -> None:
    """`--storage URL` as Optuna's RDBStorage will take it: a database URL whose driver is installed and whose
    database opens (it creates Optuna's tables there if they are missing). One-line UserError otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"sweep: --storage: {shown(url)!r} is not a database URL ({EXAMPLES})") from None
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except NoSuchModuleError:
        raise UserError(f"sweep: --storage: no database kind {parsed.drivername!r} ({EXAMPLES})") from None
    except ImportError as e:
        module = (e.name or "").split(".")[0]
        hint = f": pip install {DRIVERS[module]}" if module in DRIVERS else ""
        raise UserError(
            f"sweep: --storage: the driver for {parsed.drivername} is not installed (no module {module!r}){hint}"
        ) from None
    _open(url)


def _open(url: str) -> Any:
    """Optuna's RDBStorage on `url`. A few tries: workers started at the same moment on an empty database race to
    create Optuna's tables, and the one that loses (a unique or already-exists error) finds them made a moment
    later."""
    import optuna

    for attempt in range(OPEN_TRIES):
        try:
            return optuna.storages.RDBStorage(url)
        except ImportError:
            raise
        except Exception as e:
            error = e
        if attempt + 1 == OPEN_TRIES or not _raced(error):
            break
        time.sleep(OPEN_WAIT_S * (attempt + 1))
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise UserError(f"sweep: --storage: cannot open {shown(url)}: {reason}") from None


def _raced(error: Exception) -> bool:
    """Another worker creating the same tables or holding the database a moment: worth another try."""
    from sqlalchemy.exc import IntegrityError

    text = str(error).lower()
    return isinstance(error, IntegrityError) or "already exists" in text or "locked" in text


def claim(sweep_dir: Path, url: str, name: str) -> None:
    """Record that the folder's study lives at `url` under `name`; a folder that already holds another study (a
    journal, or another URL) is refused, so a sweep is never split over two storages."""
    sweep_dir = Path(sweep_dir)
    now = place(sweep_dir)
    if (sweep_dir / PLACE).exists():
        if now != Place(url, name):
            raise UserError(
                f"sweep: --storage: {sweep_dir} holds the sweep of study {now.name!r} in {shown(now.storage)}; "
                f"give that, or another --out"
            )
        return
    if (sweep_dir / JOURNAL).exists():
        raise UserError(f"sweep: --storage: {sweep_dir} holds a sweep in its own journal.log; give another --out")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / PLACE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"storage": url, "study": name}, f)
        f.write("\n")


def open_storage(sweep_dir: Path) -> Any:
    """The folder's study storage: the URL it records, else its journal file."""
    where = place(sweep_dir)
    if where.storage:
        return _open(where.storage)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(Path(sweep_dir) / JOURNAL)))
