"""A real (tiny) training run through the app: pause, unfreeze with `u`, stop with `s`, read the summary."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

import tuitune.engine.session  # noqa: F401  (an engine import error must fail this test, never skip it)
from tests.ui.test_pilot import dash, on_screen, text_of, until
from tuitune.config import profile_from_dict
from tuitune.ui.app import TuituneApp
from tuitune.ui.summary import SummaryScreen
from tuitune.ui.widgets import LayerTable

TINY = {
    "model": {
        "source": "timm",
        "name": "resnet18",
        "pretrained": False,
        "img_size": 32,
        "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    },
    "data": {"kind": "synthetic", "num_samples": 128, "batch_size": 32},
    "train": {"epochs": 3, "device": "cpu", "log_every": 1},
    "strategy": {"kind": "progressive", "trigger": "manual"},
}


async def test_real_run_unfreeze_then_stop(tmp_path: Path) -> None:
    profile = profile_from_dict(TINY, "tiny.toml")
    app = TuituneApp("train", profile=profile, run_dir=tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.dashboard is not None)
        await pilot.press("p")  # pause at the first step boundary, so the run cannot end before we steer it
        await until(pilot, lambda: dash(app).state.status == "paused", timeout=120)
        state = dash(app).state
        assert state.phase == 0 and state.num_phases > 1
        second = next(g for g in state.phases[1] if g not in state.phases[0])
        table = app.screen.query_one(LayerTable)
        assert table.state_of(second) == "○ frozen"
        await pilot.press("u")
        await until(pilot, lambda: dash(app).state.phase == 1)
        await until(pilot, lambda: table.state_of(second) == "● train")
        await pilot.press("s")
        await until(pilot, lambda: on_screen(app, SummaryScreen), timeout=120)
        summary = text_of(app.screen.query_one("#summary", Static))
        assert "Stopped early" in summary and "stopped by the user" in summary
        assert "last" in summary and str(tmp_path / "run") in summary
        await pilot.press("q")
    assert app.return_code == 0
    assert (tmp_path / "run" / "events.jsonl").exists()
