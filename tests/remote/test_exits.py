"""Exit codes: one mapping from how a run ended to the process's code (`tuitune.exits.run_exit_code`), used alike by
`train --headless`, the detached run process, the multi-rank launcher and the dashboard."""

from __future__ import annotations

import pytest

from tests.remote.stored_runs import LAYERS
from tuitune.engine.commands import Control
from tuitune.engine.events import RunFailed, RunFinished, RunStarted, Warned
from tuitune.exits import ExitCode, run_exit_code
from tuitune.ui.reducer import reduce
from tuitune.ui.run_link import RunLink
from tuitune.ui.state import DashboardState


def finished(status: str) -> RunFinished:
    return RunFinished(
        status=status,
        reason="test",
        epochs=1,
        global_step=4,
        best={},
        final={},
        test=None,
        phases=(),
        per_class_acc={},
        samples_per_s=1.0,
        wall_s=1.0,
        checkpoints={},
    )


ENDS = [
    (finished("finished"), ExitCode.OK),
    (finished("stopped_early"), ExitCode.OK),
    (finished("interrupted"), ExitCode.INTERRUPTED),
    (RunFailed(message="bad profile", run_dir="r", bad_input=True, kind="bad_input"), ExitCode.BAD_INPUT),
    (RunFailed(message="boom", run_dir="r", kind="error"), ExitCode.FAILED),
]


@pytest.mark.parametrize(("final", "code"), ENDS)
def test_a_run_end_maps_to_its_exit_code(final, code) -> None:
    assert run_exit_code(final) == code
    assert int(ExitCode.INTERRUPTED) == 130  # what shells report for SIGINT; scripts read the number


def test_no_recorded_end_or_an_unknown_one_is_a_failure() -> None:
    assert run_exit_code(None) == ExitCode.FAILED  # a launcher that finds no terminal event: a rank died first
    assert run_exit_code(Warned(message="not an end")) == ExitCode.FAILED
    assert run_exit_code(finished("a status from a newer version")) == ExitCode.FAILED


def started() -> RunStarted:
    return RunStarted(
        run_name="r",
        run_dir="r",
        device="cpu",
        layers=LAYERS,
        phases=(("head",),),
        phase=0,
        epochs=1,
        steps_per_epoch=4,
        train_size=8,
        val_size=4,
        classes=("a", "b"),
        profile={},
    )


@pytest.mark.parametrize(("final", "code"), ENDS)
def test_the_dashboard_exits_with_the_code_the_command_line_would(final, code) -> None:
    """The dashboard's exit code after a run it steered ended: the same mapping, from the events its state holds."""
    state = reduce(reduce(DashboardState(), started()), final)
    assert RunLink(None, Control()).exit_code(state) == code


def test_the_dashboard_left_mid_run_or_detached() -> None:
    state = reduce(DashboardState(), started())
    assert state.live
    link = RunLink(None, Control())
    assert link.exit_code(state) == 130
    link.detached = True
    assert link.exit_code(state) == 0
    assert RunLink(None, None).exit_code(state) == 0
