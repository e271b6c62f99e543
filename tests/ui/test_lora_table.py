"""Under LoRA the layer table's params column shows each group's adapter parameters beside its size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.ui import scripted
from tests.ui.test_pilot import PROFILE, dash, until
from tuitune.engine.events import LayersChanged, RunStarted
from tuitune.ui.app import TuituneApp
from tuitune.ui.widgets import LayerTable


def _with_adapters(event):
    def rows(layers):
        return tuple(dataclasses.replace(r, adapters=0 if r.name == "head" else r.params // 50) for r in layers)

    if isinstance(event, (RunStarted, LayersChanged)):
        return dataclasses.replace(event, layers=rows(event.layers))
    return event


async def test_params_column_shows_adapter_params() -> None:
    engine = scripted.ScriptedEngine([_with_adapters(e) for e in scripted.mid_run_events()])
    app = TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        table = app.screen.query_one(LayerTable)
        assert str(table.get_cell("layer4", "params")) == "167.9k/8.4M"  # 8,393,728 params, 167,874 adapters
        assert str(table.get_cell("head", "params")) == "0/5.1k"  # no adapter: the head trains in full
