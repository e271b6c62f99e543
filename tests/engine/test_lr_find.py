"""LR finder: exact restoration of weights, optimizer and RNG; a curve that falls then rises; suggestions; output."""

from __future__ import annotations

import copy
import csv
import math
import random

import pytest
import torch
import torch.nn.functional as F

from tests.engine.conftest import tiny_profile
from tuitune.cli import main
from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.tools import lr_find
from tuitune.engine.tools.lr_find import text_plot
from tuitune.engine.train.lr_sweep import LRCurve, curve_to_csv, lr_sweep, scale_lrs, suggest
from tuitune.engine.train.parts import build_parts
from tuitune.engine.train.trainer_state import TrainerState


@pytest.fixture
def run(tmp_path):
    profile = tiny_profile(strategy={"kind": "progressive", "lr_decay": 0.5}, train={"lr": 0.01})
    parts = build_parts(profile, tmp_path)
    state = TrainerState(parts, profile)
    return profile, parts, state


def _train_steps(parts, optimizer, n: int) -> None:
    """Real steps first, so the optimizer has moments and BatchNorm has moved: restoring an empty state is easy."""
    parts.model.train()
    for i, (x, y) in enumerate(parts.train_loader):
        if i == n:
            break
        loss = F.cross_entropy(parts.model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_sweep_restores_weights_optimizer_and_rng_bit_for_bit(run) -> None:
    _profile, parts, state = run
    state.enter_phase(1)  # two layer groups with discriminative LRs, one of them added mid-run
    _train_steps(parts, state.optimizer, 2)
    parts.model.eval()
    weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
    opt = copy.deepcopy(state.optimizer.state_dict())
    lrs_before = [g["lr"] for g in state.optimizer.param_groups]
    rng, py_rng, gen = torch.get_rng_state(), random.getstate(), parts.train_loader.generator.get_state()
    params = [id(p) for g in state.optimizer.param_groups for p in g["params"]]

    curve = lr_sweep(parts.model, state.optimizer, parts.train_loader, F.cross_entropy, parts.device, steps=30)
    assert len(curve.lrs) >= 10
    after = parts.model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    now = state.optimizer.state_dict()
    assert now["param_groups"] == opt["param_groups"]
    assert [g["lr"] for g in state.optimizer.param_groups] == lrs_before
    assert now["state"].keys() == opt["state"].keys()
    for i, s in opt["state"].items():
        assert all(torch.equal(v, now["state"][i][k]) for k, v in s.items())
    assert [id(p) for g in state.optimizer.param_groups for p in g["params"]] == params
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py_rng
    assert torch.equal(parts.train_loader.generator.get_state(), gen)
    assert not parts.model.training and all(p.grad is None for p in parts.model.parameters())
    assert set(curve.group_ratios) == {1.0, 0.5}  # discriminative LRs swept in proportion


def test_curve_falls_then_rises_and_the_suggestion_is_in_range(run, tmp_path) -> None:
    _, parts, state = run
    curve = lr_sweep(
        parts.model,
        state.optimizer,
        parts.train_loader,
        F.cross_entropy,
        parts.device,
        start_lr=1e-5,
        end_lr=10.0,
        steps=60,
    )
    low = min(range(len(curve.smoothed)), key=curve.smoothed.__getitem__)
    assert curve.smoothed[low] < curve.smoothed[0] - 0.05  # it falls...
    assert curve.smoothed[-1] > curve.smoothed[low] + 0.05  # ...then rises (or diverged and stopped)
    for lr in (curve.steep, curve.valley, curve.suggestion):
        assert lr is not None and math.isfinite(lr) and 1e-5 <= lr <= 10.0
    assert curve.suggestion == curve.valley and curve.lrs == tuple(sorted(curve.lrs))
    with open(curve_to_csv(curve, tmp_path / "lr_find.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["lr", "loss", "smoothed"] and len(rows) == len(curve.lrs) + 1
    plot = text_plot(curve, width=60, height=12)
    assert "LR finder" in plot and "\x1b[" not in plot and "1e-5" in plot


def test_divergence_stops_the_sweep_early(run) -> None:
    _, parts, state = run
    curve = lr_sweep(
        parts.model,
        state.optimizer,
        parts.train_loader,
        F.cross_entropy,
        parts.device,
        start_lr=1e-3,
        end_lr=1e4,
        steps=80,
        diverge=1.5,
    )
    assert curve.stopped_early and len(curve.lrs) < 80


def test_suggestions_on_a_known_curve() -> None:
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    xs = [math.log10(lr) for lr in lrs]
    losses = [2.0 - math.tanh(x + 3) + (0.0 if x < -1 else 5 * (x + 1) ** 2) for x in xs]  # steepest at 1e-3
    steep, valley = suggest(lrs, losses)
    assert 10**-3.2 < steep < 10**-2.8
    assert 1e-4 < valley < 1e-1
    assert suggest(lrs[:2], losses[:2]) == (None, None)
    # a phase start on a training set the model already fits: the loss (0.001) "diverged" within five steps
    memorized = [1e-7 * 1.2**i for i in range(5)], [0.0013, 0.0025, 0.0030, 0.0031, 0.082]
    assert suggest(*memorized) == (None, None)


def test_scale_lrs_keeps_the_ratios() -> None:
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD(
        [{"params": [w[0]], "lr": 0.01, "base_lr": 0.02}, {"params": [w[1]], "lr": 0.005, "base_lr": 0.01}], lr=0.1
    )
    scale_lrs(opt, 0.1)
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.025])  # the schedule factor (0.5) kept


def test_ascii_fallback_plot() -> None:
    curve = LRCurve((1e-4, 1e-3, 1e-2), (1.0, 0.5, 2.0), (1.0, 0.5, 2.0), None, 1e-3)
    text = lr_find._ascii_plot([(math.log10(a), b) for a, b in zip(curve.lrs, curve.smoothed)], -3.0, 30, 6)
    assert "*" in text and "|" in text


def test_cli_lr_find_writes_the_curve(tmp_path, capsys) -> None:
    profile_path = tmp_path / "tiny.toml"
    profile_path.write_text(dump_toml(profile_to_dict(tiny_profile(strategy={"kind": "progressive"}))))
    assert (
        main(["lr-find", str(profile_path), "--steps", "20", "--start-lr", "1e-4", "--out", str(tmp_path / "out")]) == 0
    )
    out = capsys.readouterr().out
    assert "suggested lr:" in out and "LR finder" in out
    assert (tmp_path / "out" / "lr_find.csv").is_file() and (tmp_path / "out" / "lr_find.json").is_file()


@pytest.mark.parametrize(
    "loss, augment",
    [("focal", {}), ("mse", {}), ("bce", {}), ("cross_entropy", {"mixup": 0.4, "cutmix": 1.0})],
    ids=["focal", "mse", "bce", "mixup"],
)
def test_cli_and_dashboard_sweep_with_the_runs_own_objective(tmp_path, loss: str, augment: dict) -> None:
    """`tuitune lr-find` and the dashboard's `f` run one recipe: the run's loss on the run's targets (Mixup/CutMix
    included). Their first sweep step (LR 1e-7, the starting weights) scores the same batch the same way, and that
    score is the run's objective on it, not plain cross-entropy."""
    from torch.utils.data import DataLoader

    from tests.engine.conftest import of_type
    from tuitune.engine.commands import Control
    from tuitune.engine.events import LRFound
    from tuitune.engine.train import strategy
    from tuitune.engine.train.loop import Trainer
    from tuitune.engine.train.lr_sweep import find_lr_in_run

    profile = tiny_profile(loss={"kind": loss}, augment=augment, strategy={"kind": "progressive"})
    events: list = []
    trainer = Trainer(profile, tmp_path / "run", events.append, Control(), interactive=True)
    # what `f` does (the FindLR command), here before the run's first step
    events.append(find_lr_in_run(profile, trainer.parts, trainer.st, trainer.obj, steps=20, out_dir=tmp_path / "run"))
    dashboard = of_type(events, LRFound)[0].losses[0]

    # the run's objective on the sweep's first batch (the recipe's shuffle: seed + global step), starting weights
    p, obj = trainer.parts, trainer.obj
    x, y = next(
        iter(
            DataLoader(
                p.bundle.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(profile.train.seed)
            )
        )
    )
    strategy.set_train_mode(p.model, True)
    x, y = obj.targets(x, y)
    with torch.no_grad():
        expected = float(obj.train_loss(p.model(x).float(), y))
    assert dashboard == pytest.approx(expected, rel=1e-5)

    profile_path = tmp_path / "tiny.toml"
    profile_path.write_text(dump_toml(profile_to_dict(profile)))
    assert main(["lr-find", str(profile_path), "--steps", "20", "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["loss"]) == pytest.approx(expected, rel=1e-5)


def test_sweep_restores_each_modules_train_mode(run) -> None:
    """`f` in mid-epoch: frozen BatchNorm layers were in eval mode before the sweep and are again after it (a
    blanket `model.train()` would let them update their running statistics for the rest of the epoch)."""
    from tuitune.engine.train import strategy

    _profile, parts, state = run
    strategy.set_train_mode(parts.model, freeze_bn=True)
    modes = {name: m.training for name, m in parts.model.named_modules()}
    assert not all(modes.values())  # the frozen groups' BatchNorm layers are in eval mode
    lr_sweep(parts.model, state.optimizer, parts.train_loader, F.cross_entropy, parts.device, steps=5)
    assert {name: m.training for name, m in parts.model.named_modules()} == modes
