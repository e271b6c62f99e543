"""The profiles shipped with tuitune (`demo.toml` and the demo's pretrained backbone), as package data.

A package so that its folder has one name in code: `tuitune demo` runs `PACKAGE_PROFILES / "demo.toml"`, the
picker lists this folder and shows it as `built-in`. `save` writes profile files (the picker's composed runs).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_PROFILES = Path(__file__).resolve().parent
