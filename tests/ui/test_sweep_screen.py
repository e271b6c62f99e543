"""The sweep screen from stored leaderboard rows: snapshots at 80x24 and 120x40, and enter opens a trial."""

from __future__ import annotations

import pytest

from tuitune.sweep.board import TrialRow
from tuitune.ui.app import TuituneApp
from tuitune.ui.sweep import SweepScreen

CURVES = {0: (0.61, 0.78, 0.86, 0.9), 1: (0.55, 0.7, 0.81, 0.84), 2: (0.34,), 3: (0.6, 0.74), 4: ()}
ROWS = [
    TrialRow(
        0,
        "done",
        {"train.lr": 0.00231, "strategy.kind": "progressive", "strategy.lr_decay": 0.42},
        0.9,
        4,
        81.0,
        "runs/s/trial-000",
        tuple(enumerate(CURVES[0], 1)),
    ),
    TrialRow(
        1,
        "done",
        {"train.lr": 0.00041, "strategy.kind": "full", "strategy.lr_decay": 0.8},
        0.84,
        4,
        77.0,
        "runs/s/trial-001",
        tuple(enumerate(CURVES[1], 1)),
    ),
    TrialRow(
        2,
        "pruned",
        {"train.lr": 8.1, "strategy.kind": "full", "strategy.lr_decay": 0.5},
        0.34,
        1,
        19.0,
        "runs/s/trial-002",
        tuple(enumerate(CURVES[2], 1)),
    ),
    TrialRow(
        3,
        "running",
        {"train.lr": 0.0012, "strategy.kind": "lp_ft", "strategy.lr_decay": 0.61},
        0.74,
        2,
        40.0,
        "runs/s/trial-003",
        tuple(enumerate(CURVES[3], 1)),
    ),
    TrialRow(
        4,
        "failed",
        {"train.lr": 0.03, "strategy.kind": "lp_ft", "strategy.lr_decay": 0.33},
        None,
        0,
        3.0,
        "runs/s/trial-004",
        (),
        "CUDA out of memory",
    ),
]


def sweep_app() -> TuituneApp:
    return TuituneApp("sweep", sweep=(lambda: (list(ROWS), "val_score"), "sweep tiny -> runs/s"))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_sweep_leaderboard(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(sweep_app(), terminal_size=size)


async def test_enter_opens_the_selected_trial(tmp_path) -> None:
    opened: list[str] = []
    (tmp_path / "events.jsonl").write_text("")
    rows = [ROWS[0], TrialRow(3, "running", {"train.lr": 0.1}, 0.7, 2, 9.0, str(tmp_path), ((1, 0.7),))]
    app = TuituneApp("sweep", sweep=(lambda: (rows, "val_score"), "t"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, SweepScreen)
        screen.open_trial = opened.append
        await pilot.press("enter")  # trial 0: no run record here
        assert opened == []
        await pilot.press("down", "enter")
        assert opened == [str(tmp_path)]


async def test_quitting_a_trials_dashboard_comes_back_to_the_leaderboard(tmp_path) -> None:
    from tests.ui import scripted
    from tuitune.engine.record.runlog import RunRecorder

    recorder = RunRecorder(tmp_path)
    for event in scripted.finished_events():
        recorder(event)
    recorder.close()
    rows = [TrialRow(0, "done", {"train.lr": 0.1}, 0.7, 2, 9.0, str(tmp_path), ((1, 0.7),))]
    app = TuituneApp("sweep", sweep=(lambda: (rows, "val_score"), "t"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")  # the ended trial: its record, in the dashboard, its summary on top
        await pilot.pause()
        from tuitune.ui.summary import SummaryScreen

        assert isinstance(app.screen, SummaryScreen) and app.dashboard is not None
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, SweepScreen) and app.is_running


def test_the_loader_loads_the_study_once_and_then_sees_new_trials(tmp_path, monkeypatch) -> None:
    import optuna

    from tuitune.sweep import study as study_mod
    from tuitune.sweep.board import sweep_loader

    load = sweep_loader(tmp_path)
    assert load() == ([], "")  # no journal yet
    study = optuna.create_study(
        study_name=study_mod.STUDY_NAME, storage=study_mod.storage_for(tmp_path), direction="maximize"
    )
    study.set_user_attr("metric", "val_score")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    loads: list[object] = []
    real = study_mod.load_study
    monkeypatch.setattr(study_mod, "load_study", lambda d: loads.append(d) or real(d))
    rows, metric = load()
    assert ([r.number for r in rows], metric) == ([0], "val_score")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.7))
    rows, _ = load()
    assert [(r.number, r.best) for r in rows] == [(1, 0.7), (0, 0.5)] and len(loads) == 1
