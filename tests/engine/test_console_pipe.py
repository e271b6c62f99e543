"""A closed or broken stdout (`tuitune train ... --headless | head -2`, a terminal gone) never fails a run: the
console's lines go on into the run's `run.log`."""

from __future__ import annotations

import os
from pathlib import Path

from tests.engine.conftest import tiny_profile
from tuitune.console import ConsolePrinter
from tuitune.engine.commands import Control
from tuitune.engine.events import RunFinished
from tuitune.engine.session import run_training


def test_a_broken_stdout_never_fails_the_run(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # what `| head -2` does after two lines: every write now fails with EPIPE
    out = os.fdopen(write, "w")
    run_dir = tmp_path / "run"
    try:
        final = run_training(tiny_profile(), run_dir, ConsolePrinter(out=out), Control(), interactive=False)
    finally:
        try:
            out.close()
        except OSError:
            pass
    assert isinstance(final, RunFinished) and final.status == "finished", final
    log = (run_dir / "run.log").read_text().splitlines()
    assert log[0].startswith("run tiny on cpu") and any(line.startswith("epoch   2/2") for line in log)
    assert any(line.startswith("finished: completed 2 epochs") for line in log)
