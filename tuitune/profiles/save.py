"""Writing a profile file: where a profile composed in the picker is saved, with its paths written relative to that
folder, atomically. Plain Python (no Textual, no torch): the compose screen calls it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tuitune.config import SECTIONS, RunProfile, dump_toml, profile_to_dict
from tuitune.engine.record.files import write_text_atomic
from tuitune.profiles import PACKAGE_PROFILES

__all__ = ["relative_paths", "save_folder", "write_profile"]


def save_folder(source: Path) -> Path:
    """Where a composed profile is written: beside its source, except for the profiles shipped inside the package
    (an installed package's folder is not the person's): `./profiles`, which the picker lists first."""
    return Path.cwd() / "profiles" if source.absolute().parent == PACKAGE_PROFILES else source.parent  # links kept


def relative_paths(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Path keys (declared `path=True`) inside `folder` written relative to it, as a person writes them: the file
    loads back to the same absolute paths, and the folder can move."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = table.get(section, {}).get(f.name)
            if f.metadata.get("path") and value and Path(value).is_absolute():
                try:
                    table[section][f.name] = Path(value).relative_to(folder.resolve()).as_posix()
                except ValueError:
                    pass  # outside the folder: stays absolute
    return table


def write_profile(profile: RunProfile, path: Path) -> None:
    """The profile as TOML at `path`, atomically (a temp file in the same folder, then a rename)."""
    header = f"# composed in the tuitune picker from {Path(profile.source_path).name}\n"
    write_text_atomic(path, header + dump_toml(relative_paths(profile_to_dict(profile), path.parent)))
