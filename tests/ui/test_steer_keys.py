"""Steering one group from the layer table: the cursor selects, `space` / `+` / `-` put the right commands on the
Control, and the table changes only when the engine's LayersChanged confirms them."""

from __future__ import annotations

from pathlib import Path

from tests.ui import scripted
from tests.ui.test_pilot import PROFILE, dash, until
from tuitune.engine.commands import AdaptBatchNorm, ScaleGroupLR, SetGroupTrainable
from tuitune.ui.app import TuituneApp
from tuitune.ui.widgets import LayerTable, StatusBar


async def test_cursor_space_plus_minus_send_group_commands_confirmed_by_the_engine() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events(), auto=False)
    app = TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        table = app.screen.query_one(LayerTable)
        assert table.selected is None  # nothing selected until an arrow key is pressed
        await pilot.press("space")  # nothing to toggle: refused on screen, nothing sent
        await pilot.press("plus")  # no selection: every group
        await until(pilot, lambda: engine.received == [ScaleGroupLR(None, 1.5)])
        await pilot.press("down", "down", "down")  # the first press selects the top row (stem), then two down
        assert table.selected == "layer2"
        await pilot.press("space")
        await until(pilot, lambda: engine.received[-1] == SetGroupTrainable("layer2", True))
        await pilot.pause(0.1)
        assert table.state_of("layer2") == "○ frozen"  # no optimistic UI
        assert "freeze/unfreeze group" in str(app.screen.query_one(StatusBar).render())  # pending
        engine.gate.set()
        await until(pilot, lambda: table.state_of("layer2") == "● train")
        lr = str(table.get_cell("layer2", "LR"))
        await pilot.press("minus")
        await until(pilot, lambda: str(table.get_cell("layer2", "LR")) != lr)
        assert engine.received[-1] == ScaleGroupLR("layer2", 1 / 1.5)
        row = next(r for r in dash(app).state.layers if r.name == "layer2")
        assert row.lr is not None and abs(row.lr - 3e-3 * 0.385**3 / 1.5) < 1e-12
        await pilot.press("space")  # the engine says it trains now: freeze it
        await until(pilot, lambda: table.state_of("layer2") == "○ frozen")
        await pilot.press("escape", "plus")
        await until(pilot, lambda: len(engine.received) == 5)
        assert table.selected is None
        await pilot.press("up")  # the first up selects the head
        assert table.selected == "head"
        await pilot.press("escape")
        await pilot.click(LayerTable, offset=(2, 5))  # border, header, stem, layer1, layer2, layer3
        assert table.selected == "layer3"
    assert engine.received == [
        ScaleGroupLR(None, 1.5),
        SetGroupTrainable("layer2", True),
        ScaleGroupLR("layer2", 1 / 1.5),
        SetGroupTrainable("layer2", False),
        ScaleGroupLR(None, 1.5),
    ]
    log = [line.text for line in dash(app).state.log if line.kind == "command"]
    assert any("freeze/unfreeze group (layer2 trainable)" in t for t in log)
    assert len([m for m in dash(app).state.markers if m.kind == "command"]) >= 1


async def test_palette_runs_the_group_actions() -> None:
    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        commands = {c.title: c.callback for c in app.get_system_commands(app.screen)}
        await pilot.press("up")
        commands["Lower LR ÷1.5"]()
        commands["Freeze / unfreeze group"]()
        await until(pilot, lambda: len(engine.received) == 2)
    assert engine.received == [ScaleGroupLR("head", 1 / 1.5), SetGroupTrainable("head", False)]


async def test_b_and_the_palette_ask_for_adabn_and_the_shift_column_shows_the_answer() -> None:
    engine = scripted.ScriptedEngine([*scripted.mid_run_events(), scripted.shift(2, 50, "start")])
    app = TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.domain_shift.get("stem") == 2.41)
        table = app.screen.query_one(LayerTable)
        await until(pilot, lambda: str(table.get_cell("stem", "shift")) == "2.41")
        advice = [line.text for line in dash(app).state.log if "domain shift" in line.text][-1]
        assert "most shifted stem 2.41, layer1 1.37" in advice
        assert "consider unfreezing stem, layer1 or re-estimating BatchNorm statistics" in advice
        await pilot.press("b")
        await until(pilot, lambda: str(table.get_cell("stem", "shift")) == "0.29")
        commands = {c.title: c.callback for c in app.get_system_commands(app.screen)}
        commands["Adapt BatchNorm (AdaBN)"]()
        await until(pilot, lambda: len(engine.received) == 2)
    assert engine.received == [AdaptBatchNorm(), AdaptBatchNorm()]
    assert any("applied: AdaBN" in line.text for line in dash(app).state.log)


async def test_r_rolls_the_phase_back_and_the_table_follows_the_engine() -> None:
    from tuitune.engine.commands import RollBackPhase

    engine = scripted.ScriptedEngine(scripted.mid_run_events())
    app = TuituneApp("train", profile=PROFILE, run_dir=Path("unused"), runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.epoch == 3)
        table = app.screen.query_one(LayerTable)
        assert dash(app).state.phase == 1 and table.state_of("layer4") == "● train"
        await pilot.press("r")
        await until(pilot, lambda: table.state_of("layer4") == "○ frozen")
        assert engine.received == [RollBackPhase()] and dash(app).state.phase == 0
    log = [line.text for line in dash(app).state.log]
    assert any("phase 1/6 (rollback): rolled back, froze layer4; weights of epoch 2 restored" in t for t in log)
    assert any("applied: roll back phase" in t and "phase 2 rolled back" in t for t in log)
