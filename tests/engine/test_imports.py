"""Import hygiene: the engine never imports Textual; the CLI and the picker path never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "tuitune" / "engine"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_engine_and_config_do_not_import_textual() -> None:
    modules = [
        ".".join(p.relative_to(ENGINE.parents[1]).with_suffix("").parts)
        for p in ENGINE.rglob("*.py")
        if p.stem != "__init__"
    ]
    loaded = _modules_after("\n".join(["import tuitune.config"] + [f"import {m}" for m in modules]))
    assert "textual" not in loaded and "torch" in loaded


def test_engine_source_never_mentions_textual() -> None:
    for path in ENGINE.rglob("*.py"):
        assert "textual" not in path.read_text(), path


def test_cli_and_help_do_not_import_torch() -> None:
    loaded = _modules_after("import tuitune.cli, tuitune.config, tuitune.engine.events, tuitune.engine.commands")
    assert not {"torch", "timm", "transformers", "textual"} & loaded
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tuitune", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage: tuitune" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {"torch", "timm", "transformers", "textual"} & imported
