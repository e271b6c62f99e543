"""The system panel (`m`): shown by default where the samples have GPUs, hidden where there is no NVML until `m`;
and the header's step bar (where a step's time goes, with its data-bound hint). Snapshots at fixed sizes from
scripted events: no clock, no sampling."""

from __future__ import annotations

import dataclasses

import pytest

from tests.ui import scripted
from tests.ui.test_pilot import dash, text_of, until
from tuitune.config.loop import TrainConfig
from tuitune.engine.commands import Control
from tuitune.engine.events import GpuSample, MetricsUpdated, ProcessSample, SystemSampled
from tuitune.ui.app import TuituneApp
from tuitune.ui.keys import DASHBOARD_KEYS
from tuitune.ui.system_panel import SystemPanel

H100 = GpuSample(0, 0, "NVIDIA H100 80GB HBM3", 97.0, 61.203, 85.521, 71.0, 512.3, 700.0)
GPU_SAMPLE = SystemSampled(
    gpus=(H100,),
    processes=(ProcessSample(0, 104.0, 6.2, 8, 612.0, 9.4),),
    cpus=16,
    ram_total_gb=135.1,
)
TWO_RANKS = SystemSampled(
    gpus=(H100, GpuSample(1, 1, "NVIDIA H100 80GB HBM3", 35.0, 80.1, 85.521, 88.0, 233.0, 700.0)),
    processes=(ProcessSample(0, 104.0, 6.2, 8, 612.0, 9.4), ProcessSample(1, 98.0, 6.0, 8, 598.0, 9.1)),
    cpus=16,
    ram_total_gb=135.1,
)
CPU_SAMPLE = SystemSampled(gpus=(), processes=(ProcessSample(0, 187.0, 1.3, 0, 0.0, 0.0),), cpus=2, ram_total_gb=25.3)


def app_with(*samples: SystemSampled) -> TuituneApp:
    return TuituneApp("replay", events=[*scripted.mid_run_events(), *samples], control=Control())


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_system_panel_with_a_gpu(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(app_with(GPU_SAMPLE), terminal_size=size)


def test_system_panel_two_ranks_80x24(snap_compare) -> None:
    """Every rank's GPU and process; the hot, nearly full GPU in the warning colours."""
    assert snap_compare(app_with(TWO_RANKS), terminal_size=(80, 24))


def panel(app: TuituneApp) -> SystemPanel:
    return app.screen.query_one(SystemPanel)


async def test_m_shows_the_cpu_lines_where_there_is_no_gpu_and_hides_them_again() -> None:
    app = app_with(GPU_SAMPLE, CPU_SAMPLE)  # the newest sample counts: no GPU rows
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: dash(app).state.system == CPU_SAMPLE)
        assert not panel(app).display
        await pilot.press("m")
        await until(pilot, lambda: bool(panel(app).display))
        text = text_of(panel(app))
        assert "187% of 2 cores" in text and "RAM 1.3/25.3 GB" in text and "no workers" in text
        assert "GPU" not in text
        await pilot.press("m")
        await until(pilot, lambda: not panel(app).display)


async def test_a_gpu_run_shows_the_panel_until_m_and_without_samples_m_shows_nothing() -> None:
    app = app_with(GPU_SAMPLE)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: bool(panel(app).display))
        text = text_of(panel(app))
        assert "97%" in text and "61.2/85.5 GB" in text and "71°C" in text and "512/700 W" in text
        assert "workers 8: 612% CPU, 9.4 GB" in text
        await pilot.press("m")
        await until(pilot, lambda: not panel(app).display)
    bare = TuituneApp("replay", events=scripted.mid_run_events(), control=Control())
    async with bare.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: dash(bare).state.epoch == 3)
        await pilot.press("m")
        await pilot.pause()
        assert not panel(bare).display and dash(bare).show_system is None


DATA_BOUND = {"data": 26.1, "compute": 12.4, "optimizer": 2.1, "rest": 0.8}
BALANCED = {"data": 0.4, "compute": 35.2, "optimizer": 4.9, "rest": 0.7}


def with_split(split: dict[str, float], *more: object) -> TuituneApp:
    """The scripted mid-run with every metric reading carrying `split` (a run on 16 cores with no workers)."""
    events = [
        dataclasses.replace(e, step_split=split) if isinstance(e, MetricsUpdated) else e
        for e in scripted.mid_run_events()
    ]
    return TuituneApp("replay", events=[*events, *more], control=Control())


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_step_bar_data_bound(snap_compare, size: tuple[int, int]) -> None:
    """The header's third line: the bar, and the hint naming the key to raise (the sample says: no workers)."""
    no_workers = dataclasses.replace(GPU_SAMPLE, processes=(ProcessSample(0, 100.0, 6.2, 0, 0.0, 0.0),))
    assert snap_compare(with_split(DATA_BOUND, no_workers), terminal_size=size)


def test_step_bar_after_the_hint_80x24(snap_compare) -> None:
    assert snap_compare(with_split(BALANCED, GPU_SAMPLE), terminal_size=(80, 24))


async def test_the_step_bar_follows_the_newest_reading() -> None:
    from tuitune.ui.widgets import StatusBar

    app = with_split(BALANCED)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: dash(app).state.epoch == 3)
        text = text_of(app.screen.query_one(StatusBar))
        assert "data 1% · fwd+bwd 85% · optim 12% · rest 2% · 41.2 ms/step" in text
        assert "⚠" not in text


def test_the_profile_reference_names_the_key_that_toggles_the_panel() -> None:
    """`train.system_every_s`'s text (and so profiles/README.md) says which key shows the panel: the one bound to it
    (it moved from `g` to `m` when `g` went to a causal LM's samples, and the text stayed behind)."""
    key = next(k.key for k in DASHBOARD_KEYS if k.action == "system_panel")
    doc = next(f for f in dataclasses.fields(TrainConfig) if f.name == "system_every_s").metadata["doc"]
    assert f"system panel (`{key}`)" in doc
