"""Shared test setup. Textual renders monochrome under NO_COLOR, which would break the UI snapshots."""

from __future__ import annotations

import os

os.environ.pop("NO_COLOR", None)
