"""What happens to a run that ended well, once its best weights are loaded: export it, then compress it when the
profile asks. The session hands this step to the `Trainer` (`after_run=`), so the loop never imports the tools."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune.config import RunProfile, dump_toml, profile_to_dict
from tuitune.engine.events import CompressionReported, Event
from tuitune.engine.model.groups import Backbone
from tuitune.engine.tools.compress import compress_run
from tuitune.engine.tools.export import write_export

__all__ = ["export_and_compress"]


def export_and_compress(
    run_dir: Path, profile: RunProfile, backbone: Backbone, classes: tuple[str, ...], emit: Callable[[Event], None]
) -> tuple[str, dict[str, Any] | None]:
    """Export `backbone` (its best weights) to `run_dir/export`; compress the run when the profile asks, and
    emit the report. Returns (export folder, compression report or None)."""
    export = write_export(backbone, profile, classes, run_dir / "export")
    cfg = profile.compress
    if not (cfg.sparsity or cfg.quantize):
        return export["dir"], None
    if not (run_dir / "profile.toml").exists():  # a Trainer driven without the run recorder
        (run_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)), encoding="utf-8")
    report = compress_run(run_dir, cfg.sparsity, cfg.quantize, cfg.fine_tune_epochs)
    emit(CompressionReported(report=report))
    return export["dir"], report
