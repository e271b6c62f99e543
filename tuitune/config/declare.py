"""How a profile key is declared: `opt(...)` records its default, its documentation and its rules on a dataclass field.

The declarations themselves are in `tuitune/config/schema.py`; what reads them back is here too (`field_default`) and
in `parse` (validation), `dump` and `tuitune/profile_docs.py` (the key reference). Kept apart from the declarations so
the mechanism reads in one place and the schema is only the table of keys.

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from tuitune.errors import UserError


class ProfileError(UserError):
    """A profile that cannot be run; the message is one line naming the file and the dotted key."""


def opt(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] = (),
    min: float | None = None,
    gt: float | None = None,
    max: float | None = None,
    path: bool = False,
    words: tuple[str, ...] = (),
) -> Any:
    """Declare a profile key: its default, its user documentation and its validation rules. `words`: strings a
    key of another type also takes (`batch_size = "auto"`)."""
    meta = {"doc": doc, "choices": choices, "min": min, "gt": gt, "max": max, "path": path, "words": words}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A declared key's default (a fresh one where it is made by a factory: lists, tables, sections)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name}: declared without a default")
