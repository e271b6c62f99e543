"""The static checks as tests, so the README's test command (and CI) runs them: ruff's lint and format check over
the code and its tests, benchmarks and scripts, and mypy over tuitune/ (configured in pyproject.toml). The import
contracts (`lint-imports`) are checked by tests/engine/test_architecture.py.

Each runs the tool installed with the `test` extra in a subprocess from the checkout's root (the configuration is
read from pyproject.toml there) and fails with the tool's own report."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["tuitune", "tests", "benchmarks", "scripts"]


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def _passed(result: subprocess.CompletedProcess[str], fix: str) -> None:
    """Fails the test with the tool's report (and no traceback: the report is the news) unless it passed."""
    if result.returncode != 0:
        command = " ".join(result.args[2:])
        pytest.fail(f"{command}: exit {result.returncode}; {fix}\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff_lint_is_clean() -> None:
    _passed(_run("ruff", "check", "--no-fix", "--output-format", "concise", *LINTED), "`ruff check --fix` fixes some")


def test_ruff_format_is_kept() -> None:
    _passed(_run("ruff", "format", "--check", *LINTED), "`ruff format FILE` on the files you changed")


def test_mypy_passes() -> None:
    """Incremental: with its cache (.mypy_cache) a rerun takes a second or two; a cold run ~7 s of CPU."""
    result = _run("mypy")
    _passed(result, "fix the types (a `# type: ignore[code]` only with its reason)")
    assert "Success: no issues found" in result.stdout, result.stdout
