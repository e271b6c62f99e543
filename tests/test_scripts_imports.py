"""The benchmarks and scripts are not run by the suite (they take minutes), but every `from tuitune... import name`
in them must still name something that exists: a module moved or a function renamed fails here, not in the hands of
the next person who runs a benchmark."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


EMBEDDED = re.compile(r"^\s*from (tuitune[\w.]*) import ([\w, ]+)$", re.M)  # in code a script runs elsewhere


def tuitune_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for each `from tuitune... import name` in the file, at any depth, and in the code it passes
    as a string to another process (`python -c ...`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuitune"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("tuitune")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for module, names in EMBEDDED.findall(node.value):
                found += [(module, name.strip()) for name in names.split(",") if name.strip()]
    return found


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_tuitune_name_a_script_imports_exists(path: Path) -> None:
    missing = []
    for module, name in tuitune_imports(path):
        found = importlib.import_module(module)
        if name and not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} imports names that no longer exist: {missing}"
