"""Writing a profile: the resolved `RunProfile` back to plain data and to TOML, as a run directory records it
(`profile.toml`, which `--resume` and `tuitune export` read back through `tuitune.config.parse`)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from tuitune.config.schema import SECTIONS, RunProfile


def profile_to_dict(profile: RunProfile) -> dict[str, Any]:
    """The resolved profile as plain TOML-able data (tuples become lists, internal fields dropped)."""

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {
                f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")
            }
        if isinstance(obj, (list, tuple)):
            return [plain(x) for x in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj

    return plain(profile)


def toml_key(k: str) -> str:
    """A key as TOML: bare when it can be, else quoted (`"train.lr"` in a `[sweep]` table is one key, not two)."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v: Any) -> str:
    """One value as TOML: a scalar, an array or an inline table (what profiles hold)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for profiles (scalars, arrays, inline tables, one level of sections): the profile's
    sections in their order, then any other table (a `[sweep]`)."""
    sections = [k for k in SECTIONS if k in data] + [
        k for k, v in data.items() if k not in SECTIONS and isinstance(v, Mapping)
    ]
    top = [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if k not in sections]
    parts = ["\n".join(top)]
    for section in sections:
        body = "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in data[section].items())
        parts.append(f"[{section}]\n{body}")
    return "\n\n".join(parts) + "\n"
