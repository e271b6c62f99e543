"""tuitune sweep: the [sweep] table, a pruned end-to-end sweep, kill -9 and resume, two workers on one journal.

Every trial is a real seconds-long run of a ~50k-parameter resnet18 on a synthetic 32x32 task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuitune.cli import main
from tuitune.config import load_profile

ROOT = Path(__file__).resolve().parents[2]

BASE = """name = "tiny"
[model]
source = "timm"
name = "resnet18"
pretrained = false
kwargs = { channels = [8, 16, 32, 64], stem_width = 8 }
img_size = 32
[data]
kind = "synthetic"
num_samples = 64
num_classes = 3
batch_size = 16
val_fraction = 0.25
[train]
epochs = EPOCHS
lr = 0.01
optimizer = "sgd"
log_every = 2
schedule = "constant"
domain_shift = false
"""


def write(tmp_path: Path, sweep: str, epochs: int = 2) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(BASE.replace("EPOCHS", str(epochs)) + "[sweep]\n" + sweep, encoding="utf-8")
    return path


def trials_of(sweep_dir: Path) -> list:
    from tuitune.sweep.study import load_study

    return load_study(sweep_dir).get_trials(deepcopy=False)


def test_space_parsing(tmp_path):
    from tuitune.sweep.runner import load_sweep

    path = write(
        tmp_path,
        '"train.lr" = { log = [1e-5, 1e-2] }\n"strategy.kind" = ["full", "progressive", "lp_ft"]\n'
        '"strategy.lr_decay" = [0.3, 1.0]\n"train.epochs" = [1, 3]\npruner = "hyperband"\n',
    )
    spec = load_sweep(path, []).spec
    kinds = {p.key: (p.kind, p.low, p.high, p.choices) for p in spec.params}
    assert kinds == {
        "train.lr": ("log", 1e-5, 1e-2, ()),
        "strategy.kind": ("choice", 0.0, 0.0, ("full", "progressive", "lp_ft")),
        "strategy.lr_decay": ("float", 0.3, 1.0, ()),
        "train.epochs": ("int", 1, 3, ()),
    }
    assert (spec.metric, spec.direction, spec.pruner, spec.keep) == ("val_score", "maximize", "hyperband", "best")
    assert load_profile(path).train.lr == 0.01  # `tuitune train` on the same file ignores [sweep]
    regression = (
        write(tmp_path, '"train.lr" = [0.001, 0.1]\n').read_text().replace("[train]", '[loss]\nkind = "mse"\n[train]')
    )
    path.write_text(regression)
    assert load_sweep(path, []).spec.direction == "minimize"  # val_score is RMSE there


def test_macro_f1_is_a_sweep_metric_read_from_each_epochs_extras(tmp_path):
    """Imbalanced data is swept on macro-F1 (issue 14 item 5): the profile's checkpoint metric is the default, it is
    maximised even under a loss whose score is lower-better, and each epoch's value reaches the pruner."""
    import optuna

    from tuitune.engine.commands import Control
    from tuitune.engine.events import EpochEnded
    from tuitune.sweep.runner import PruneFeeder, load_sweep

    path = write(tmp_path, '"train.lr" = { log = [1e-4, 1e-1] }\n')
    path.write_text(path.read_text().replace("schedule = ", 'checkpoint_metric = "val_macro_f1"\nschedule = '))
    spec = load_sweep(path, []).spec
    assert (spec.metric, spec.direction) == ("val_macro_f1", "maximize")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    feeder = PruneFeeder(trial, spec.metric, Control())
    for epoch, f1 in ((1, 0.4664), (2, 0.91)):
        feeder(
            EpochEnded(
                epoch=epoch,
                global_step=epoch * 4,
                phase=0,
                train_loss=0.5,
                train_score=0.9,
                val_loss=0.4,
                val_score=0.95,
                elapsed_s=1.0,
                epoch_s=1.0,
                samples_per_s=10.0,
                is_best=True,
                extra={"val_macro_f1": f1},
            )
        )
    assert feeder.values == [0.4664, 0.91]
    assert study.trials[0].intermediate_values == {1: 0.4664, 2: 0.91}


def test_the_printed_leaderboard_keeps_every_parameter_and_its_columns_aligned():
    from tuitune.sweep.board import TrialRow, format_board

    params = {
        "strategy.kind": "progressive",
        "train.lr": 0.00178,
        "strategy.lr_decay": 0.982,
        "strategy.every_epochs": 2,
        "data.batch_size": 16,
    }
    lines = format_board(
        [TrialRow(0, "done", params, 0.9415, 4, 59.8, "t0"), TrialRow(11, "pruned", params, None, 1, 12.0, "t11")],
        "val_macro_f1",
    ).splitlines()
    assert len(lines[1]) > 100 and lines[1].endswith("every_epochs=2 batch_size=16")
    assert lines[0].index("val_macro_f1") + len("val_macro_f1") == lines[1].index("0.9415") + len("0.9415")
    assert lines[2].split()[:4] == ["11", "pruned", "-", "1"]


@pytest.mark.parametrize(
    "table, expected",
    [
        (
            '"train.lrr" = { log = [1e-5, 1e-2] }\n',
            'sweep."train.lrr" = 1e-05: train.lrr: unknown key (did you mean lr?)',
        ),
        ('"train.lr" = [0.0, 0.1]\n', 'sweep."train.lr" = 0.0: train.lr: must be > 0'),
        (
            '"strategy.kind" = ["full", "sideways"]\n',
            "sweep.\"strategy.kind\" = 'sideways': strategy.kind: 'sideways' is not one of",
        ),
        ('"train.lr" = { log = [0.1, 0.01] }\n', 'sweep."train.lr": log: low must be below high'),
        ('"train.lr" = { lin = [0.1, 0.01] }\n', 'sweep."train.lr": give exactly one of log, range, choices'),
        ('"train.lr" = 0.1\n', 'sweep."train.lr": expected'),
        ('pruner = "sometimes"\n"train.lr" = [0.001, 0.1]\n', "sweep.pruner: 'sometimes' is not one of"),
        ("trails = 3\n", "sweep.trails: unknown key"),
        ('keep = "some"\n"train.lr" = [0.001, 0.1]\n', "sweep.keep: 'some' is not one of best, all"),
        ('metric = "val_acc"\n', "sweep: no profile key to search"),
    ],
)
def test_bad_sweep_tables_are_one_line_errors(tmp_path, capsys, table, expected):
    path = write(tmp_path, table)
    assert main(["sweep", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tuitune: error: {path}: ") and expected in err, err
    assert not (tmp_path / "s").exists()


def test_three_trials_end_to_end_and_the_pruner_stops_a_diverging_lr(tmp_path, capsys):
    """Trial 0 at lr 0.01 (it learns: its last epoch is its best), trial 1 at lr 1.0 (SGD diverges: its first
    epoch is its best, 0.375, then chance), then lr 10: the median pruner stops it after its first epoch. Each
    finished trial is worth its best epoch in the study's direction (not its last); best.toml is the better trial's
    profile and the printed --set line reproduces it."""
    from tuitune.sweep.runner import load_sweep
    from tuitune.sweep.study import open_study

    path = write(tmp_path, '"train.lr" = { log = [1e-3, 10.0] }\npruner = "median"\nstartup_trials = 2\n', epochs=3)
    out = tmp_path / "s"
    out.mkdir()
    study, _ = open_study(out, load_sweep(path, []).spec, 0)
    for lr in (0.01, 1.0, 10.0):
        study.enqueue_trial({"train.lr": lr})
    assert main(["sweep", str(path), "--headless", "--trials", "3", "--out", str(out)]) == 0
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert len(trials[2].intermediate_values) == 1 and len(trials[0].intermediate_values) == 3
    for t in trials[:2]:  # the maximum over its epochs, whichever epoch that was
        assert t.value == max(t.intermediate_values.values()), (t.number, t.value, t.intermediate_values)
    curve = trials[1].intermediate_values
    assert max(curve.values()) > curve[3], f"the diverging trial's last epoch is its best: {curve}"  # a real check
    assert trials[0].value != trials[1].value
    events = (out / "trial-002" / "events.jsonl").read_text()
    assert '"status":"interrupted"' in events and events.count('"type":"EpochEnded"') == 1
    printed = capsys.readouterr().out
    assert "pruned" in printed and "best val_score" in printed
    best = load_profile(out / "best.toml")
    winner = max(trials[:2], key=lambda t: t.value)
    # keep = "best" (the default): only the winner keeps its weights; every trial keeps its events and summary
    assert [p.parent.name for p in out.glob("trial-*/checkpoints")] == [f"trial-{winner.number:03d}"]
    assert all((out / f"trial-{n:03d}" / "events.jsonl").exists() for n in range(3))
    assert best.train.lr == winner.params["train.lr"] == 0.01 and best.name == "tiny"
    line = (out / "best_set.txt").read_text().split()
    assert line[:3] == ["tuitune", "train", str(path)] and line[3:] == ["--set", "train.lr=0.01"]


def test_a_minimized_metric_takes_each_trials_lowest_epoch_and_the_lowest_trial(tmp_path):
    """`metric = "val_loss"`: minimized. The trials' values are their lowest epoch, best.toml the lowest trial,
    on the same two learning rates as above (lr 1.0 diverges: its val loss is astronomical)."""
    from tuitune.sweep.runner import load_sweep
    from tuitune.sweep.study import open_study

    path = write(tmp_path, '"train.lr" = { log = [1e-3, 10.0] }\npruner = "none"\nmetric = "val_loss"\n', epochs=2)
    out = tmp_path / "s"
    out.mkdir()
    spec = load_sweep(path, []).spec
    assert spec.direction == "minimize"
    study, _ = open_study(out, spec, 0)
    for lr in (1.0, 0.01):
        study.enqueue_trial({"train.lr": lr})
    assert main(["sweep", str(path), "--headless", "--trials", "2", "--out", str(out)]) == 0
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert t.value == min(t.intermediate_values.values()), (t.number, t.value, t.intermediate_values)
    assert trials[0].value > trials[1].value
    assert load_profile(out / "best.toml").train.lr == 0.01


def _wait(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _sweep_cmd(path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuitune", "sweep", str(path), "--headless", "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_kill_9_mid_trial_then_the_same_command_counts_trials_exactly(tmp_path, capsys):
    from tuitune.sweep.runner import live_sweep_pid, start_detached

    epochs = 20  # a trial of a few seconds: the kill must land while one runs, however fast the box
    path = write(tmp_path, '"train.lr" = { log = [1e-3, 1e-1] }\npruner = "none"\n', epochs=epochs)
    out = tmp_path / "s"
    proc = subprocess.Popen(
        _sweep_cmd(path, out, "--trials", "2"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # a leaderboard screen opened while it runs (`tuitune sweep P --out S`) follows it and starts no other
        _wait(lambda: (out / "journal.log").exists() and live_sweep_pid(out) == proc.pid)
        assert start_detached(str(path), [], out, 2, 1) == proc.pid and not (out / "sweep.log").exists()
        _wait(lambda: any(t.state.name == "RUNNING" and t.intermediate_values for t in trials_of(out)))
        os.kill(proc.pid, signal.SIGKILL)  # at once, while the trial runs
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert [t.state.name for t in trials_of(out)] == ["RUNNING"]
    assert main(_sweep_cmd(path, out, "--trials", "2")[3:]) == 0  # the same command, here in this process
    printed = capsys.readouterr().out
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["retry"] and "killed" in trials[0].user_attrs["error"]
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    for n in (1, 2):  # each counted trial ran once, to its end
        events = (out / f"trial-{n:03d}" / "events.jsonl").read_text()
        assert events.count('"type":"RunStarted"') == 1 and events.count('"type":"EpochEnded"') == epochs
    assert "killed" in printed and (out / "best.toml").exists()
    assert not (out / "sweep.pid").exists()  # the finished sweep no longer claims the folder


def test_two_workers_share_one_sweep_with_disjoint_trials(tmp_path, capsys):
    path = write(tmp_path, '"train.lr" = { log = [1e-3, 1e-1] }\npruner = "none"\n', epochs=3)
    out = tmp_path / "s"
    assert main(_sweep_cmd(path, out, "--trials", "3", "--workers", "2")[3:]) == 0  # its workers: 2 processes
    printed = capsys.readouterr().out
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # the cap holds across processes
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids  # both workers ran trials, the parent none
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == 3
    for run_dir in run_dirs:
        assert Path(run_dir, "events.jsonl").read_text().count('"type":"RunStarted"') == 1
    assert (out / "best.toml").exists() and "best: trial" in printed
