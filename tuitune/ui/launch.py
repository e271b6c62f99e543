"""Entry points for `tuitune.cli`. Textual is imported here, lazily, so `tuitune --help` stays fast.

Exit codes: 0 finished or stopped early (and the picker quit before a run), 1 failed, 130 quit mid-run.
"""

from __future__ import annotations

from pathlib import Path

from tuitune.config import RunProfile


def _run(app: object) -> int:
    app.run()  # type: ignore[attr-defined]
    code = app.return_code  # type: ignore[attr-defined]
    return 0 if code is None else int(code)


def open_picker(profile_dirs: list[Path], overrides: list[str], out: str | None) -> int:
    """`tuitune` with no arguments: pick a profile, then train it in the same app."""
    from tuitune.ui.app import TuituneApp

    return _run(TuituneApp("picker", profile_dirs=profile_dirs, overrides=overrides, out=out))


def open_dashboard(profile: RunProfile, run_dir: Path, resume: Path | None = None) -> int:
    """`tuitune train PROFILE`: the dashboard, training in a thread worker."""
    from tuitune.ui.app import TuituneApp

    return _run(TuituneApp("train", profile=profile, run_dir=run_dir, resume=resume))


def open_replay(run_dir: Path, speed: float = 0.0) -> int:
    """`tuitune replay RUN_DIR`: a recorded `events.jsonl` into the same dashboard; speed 0 = instant."""
    from tuitune.engine.record.runlog import read_events  # plain Python: no torch
    from tuitune.ui.app import TuituneApp

    events = read_events(Path(run_dir))

    return _run(TuituneApp("replay", events=events, speed=speed))
