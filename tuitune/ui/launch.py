"""Entry points for `tuitune.cli`. Textual is imported here, lazily, so `tuitune --help` stays fast.

Exit codes (`tuitune.exits.ExitCode`): OK finished or stopped early (and the picker quit before a run), FAILED
failed, BAD_INPUT a profile / data / model the person can fix, INTERRUPTED quit mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuitune.config import RunProfile
from tuitune.exits import ExitCode

if TYPE_CHECKING:
    from textual.app import App


def _run(app: App[Any]) -> int:
    app.run()
    code = app.return_code
    return ExitCode.OK if code is None else int(code)


def _runner(inline: bool) -> Any:  # a `tuitune.ui.runner.Runner`: that module loads Textual, so not imported here
    from tuitune.ui.runner import DetachedRunner, default_runner

    return default_runner if inline else DetachedRunner()


def open_picker(
    profile_dirs: list[Path], overrides: list[str], out: str | None, runs_dir: Path, inline: bool = False
) -> int:
    """`tuitune` with no arguments: pick a profile (or a live run under `runs_dir` to attach to)."""
    from tuitune.ui.app import TuituneApp

    return _run(
        TuituneApp(
            "picker", profile_dirs=profile_dirs, overrides=overrides, out=out, runner=_runner(inline), runs_dir=runs_dir
        )
    )


def open_dashboard(
    profile: RunProfile,
    run_dir: Path,
    resume: Path | None = None,
    inline: bool = False,
    ranks_argv: list[str] | None = None,
) -> int:
    """`tuitune train PROFILE`: the dashboard; the run trains in a process of its own that outlives the terminal
    (the dashboard's worker is its client), or with `inline` in the dashboard's own worker thread. `ranks_argv`:
    a multi-rank run (`--nproc`), started by that launcher command line and followed through rank 0."""
    from tuitune.ui.app import TuituneApp
    from tuitune.ui.runner import MultiRankRunner

    runner = MultiRankRunner(tuple(ranks_argv)) if ranks_argv else _runner(inline)
    return _run(TuituneApp("train", profile=profile, run_dir=run_dir, resume=resume, runner=runner))


def open_attach(run_dir: Path) -> int:
    """`tuitune attach RUN_DIR`: the dashboard of a live run process, its history first."""
    from tuitune.ui.app import TuituneApp

    return _run(TuituneApp("attach", run_dir=run_dir))


def open_replay(run_dir: Path, speed: float = 0.0) -> int:
    """`tuitune replay RUN_DIR`: a recorded `events.jsonl` into the same dashboard; speed 0 = instant (the
    condensed history: the same screen, read in time that does not grow with the run), else paced event by event."""
    from tuitune.engine.record.history import read_history  # plain Python: no torch
    from tuitune.engine.record.runlog import read_events
    from tuitune.ui.app import TuituneApp

    events = read_history(Path(run_dir)) if speed <= 0 else read_events(Path(run_dir))

    return _run(TuituneApp("replay", events=events, speed=speed))


def open_compare(*, folder: Path | None = None, runs: list | None = None) -> int:
    """`tuitune runs DIR --compare` (pick runs from `folder`) or `tuitune compare RUN_DIR ...` (`runs` loaded)."""
    from tuitune.ui.compare import CompareApp

    return _run(CompareApp(folder=folder, runs=runs))


def open_sweep(sweep_dir: Path, title: str) -> int:
    """`tuitune sweep PROFILE`: the leaderboard of the sweep in `sweep_dir`, read from its journal every second."""
    from tuitune.sweep.board import sweep_loader
    from tuitune.ui.app import TuituneApp

    return _run(TuituneApp("sweep", sweep=(sweep_loader(sweep_dir), title)))
