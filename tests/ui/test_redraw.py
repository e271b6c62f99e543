"""The dashboard's redraw budget: in-place table updates, no plot redraw for events that touch no curve, back-off."""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.ui import scripted
from tests.ui.test_pilot import dash, until
from tuitune.engine.events import LayersChanged
from tuitune.ui.app import TuituneApp
from tuitune.ui.dashboard import BACKOFF, MAX_WAIT_S, REDRAW_S
from tuitune.ui.plotdata import plot_inputs
from tuitune.ui.reducer import fold, reduce
from tuitune.ui.runner import EngineEventReceived
from tuitune.ui.widgets import LayerTable, RenderMeter


def test_events_that_touch_no_curve_leave_the_plot_inputs_alone() -> None:
    state = fold(scripted.mid_run_events())
    after = reduce(state, LayersChanged(layers=scripted.layers(1, 99), global_step=state.global_step))
    assert all(a is b for a, b in zip(plot_inputs(state), plot_inputs(after)))
    assert after.layers != state.layers


async def test_layer_table_changes_only_the_cells_whose_text_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    app = TuituneApp("replay", events=scripted.mid_run_events())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(LayerTable)
        updated: list[tuple[str, str]] = []
        original = table.update_cell
        monkeypatch.setattr(table, "clear", lambda *a, **k: pytest.fail("the table was rebuilt"))

        def update_cell(row: str, column: str, value: object, **kw: object) -> None:
            updated.append((row, column))
            original(row, column, value, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(table, "update_cell", update_cell)
        layers = dash(app).state.layers
        same = tuple(dataclasses.replace(layer) for layer in layers)  # equal values, new objects
        dash(app).post_message(EngineEventReceived(LayersChanged(layers=same, global_step=50)))
        await until(pilot, lambda: table._layers is same)  # drawn (within the budget), and nothing changed
        assert updated == []
        changed = tuple(
            dataclasses.replace(layer, grad_norm=1.5) if layer.name == "head" else layer for layer in layers
        )
        dash(app).post_message(EngineEventReceived(LayersChanged(layers=changed, global_step=52)))
        await until(pilot, lambda: str(table.get_cell("head", "grad")) == "1.50e+00")
        assert updated == [("head", "grad")] and table.row_count == len(layers)


async def test_redraws_back_off_by_what_the_last_one_cost() -> None:
    app = TuituneApp("replay", events=scripted.mid_run_events())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = dash(app)
        now = time.monotonic()
        screen._drawn_at, screen._draw_cpu, screen._meter_mark = now, 0.001, RenderMeter.cpu
        assert screen._next_draw() == pytest.approx(now + REDRAW_S)  # cheap: 4 a second at most
        RenderMeter.cpu += 0.05  # the frames that followed took 50 ms of the UI thread
        try:
            assert screen._next_draw() == pytest.approx(now + BACKOFF * 0.051)
            RenderMeter.cpu += 0.5  # very slow frames: still redrawn within MAX_WAIT_S (live on a big terminal)
            assert screen._next_draw() == pytest.approx(now + MAX_WAIT_S)
        finally:
            RenderMeter.cpu -= 0.55


async def test_a_single_train_reading_is_drawn_with_its_legend() -> None:
    """Epochs shorter than two metric reads (16 steps, log_every 10) gave the loss plot one train point, which
    drew nothing, not even the legend, until the next epoch."""
    from textual.app import App

    from tuitune.engine.events import MetricsUpdated
    from tuitune.ui.widgets import MetricPlot

    state = fold([scripted.run_started(), MetricsUpdated(1, 10, 10, 0.61, 0.8, (), 800.0, 1.0)])

    class One(App[None]):
        def compose(self):
            yield MetricPlot("loss", id="loss-plot")

    app = One()
    async with app.run_test(size=(60, 16)) as pilot:
        plot = app.query_one(MetricPlot)
        plot.show(state)
        await pilot.pause()
        assert "train" in "".join(seg.text for seg in plot.render().render(app.console))
