"""The memory plan on screen: the dashboard's log lines and the line under its layer table (the phase in progress),
and the composing screen's plan of the profile being composed."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from tests.ui import scripted
from tests.ui.test_compose import demo_copy, open_compose, picker_app
from tests.ui.test_pilot import text_of, until
from tuitune.engine.commands import Control
from tuitune.engine.events import MemoryPlanned, PhaseMemory
from tuitune.ui.app import TuituneApp
from tuitune.ui.keys import LAYER_TABLE_HINT
from tuitune.ui.memory_view import MemoryLine
from tuitune.ui.widgets import EventLog, LayerTable

GB = 1_000_000_000
FIXED_RAM = 8 * GB  # the composing screen's budget in these tests, whatever the machine has


def planned() -> MemoryPlanned:
    """The scripted run's six phases, the last two over an 11.6 GB GPU."""
    peaks = (1.2, 2.5, 5.1, 9.8, 12.4, 14.2)
    groups = [tuple(g for g, _ in scripted.GROUPS if g in phase) for phase in scripted.PHASES]  # input to head
    return MemoryPlanned(
        phases=tuple(PhaseMemory(groups[i], int(0.05 * GB), 0, 0, 0, 0, int(p * GB)) for i, p in enumerate(peaks)),
        batch_size=64,
        device="cuda",
        budget=int(11.6 * GB),
        budget_source="gpu",
        advice="phase 6 needs ~14.2 GB, the GPU has 11.6 GB free: batch 48 fits, or set train.gradient_checkpointing",
    )


def memory_events() -> list:
    events = scripted.mid_run_events()
    return [events[0], planned(), *events[1:]]  # as the engine sends it: right after RunStarted


async def test_the_dashboard_logs_the_plan_and_shows_the_phase_in_progress_under_the_layer_table() -> None:
    app = TuituneApp("replay", events=memory_events(), control=Control())
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.screen.query(LayerTable) and app.screen.state.memory is not None)
        await pilot.pause()
        table = app.screen.query_one(LayerTable)
        # the run is in phase 2 (layer4 unfrozen): its peak, of the GPU's free memory, then the table's keys
        assert table.border_subtitle == f"phase 2 ~2.50 GB of 11.6 GB · {LAYER_TABLE_HINT}"
        log = [(line.kind, line.text) for line in app.screen.state.log]
        assert ("info", "memory plan (batch 64, cuda; the GPU has 11.6 GB free):") in log
        phase_lines = [text for kind, text in log if text.startswith("phase ") and "at peak" in text]
        assert len(phase_lines) == 6 and phase_lines[5].startswith("phase 6 (stem … head, 6 groups): ~14.2 GB")
        assert ("warning", planned().advice) in log
        assert app.screen.query_one(EventLog) is not None


def test_the_dashboard_without_a_plan_keeps_its_key_line() -> None:
    from tuitune.ui.memory_view import layer_table_subtitle
    from tuitune.ui.reducer import fold

    assert layer_table_subtitle(fold(scripted.mid_run_events())) == LAYER_TABLE_HINT


def test_dashboard_memory_plan_snapshot(snap_compare) -> None:
    """At 120x40 the layer table has its border: the phase's planned peak is on its bottom edge (at 80x24 the
    table is borderless and the plan is in the log only)."""
    app = TuituneApp("replay", events=memory_events(), control=Control())
    assert snap_compare(app, terminal_size=(120, 40))


def fixed_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """The composing screen's budget in tests (and its snapshot), whatever the machine has."""
    monkeypatch.setattr("tuitune.engine.train.memory_measure.available_memory", lambda: FIXED_RAM)


async def test_the_composing_screen_plans_each_phase_and_plans_again_for_a_new_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed_ram(monkeypatch)
    monkeypatch.setattr(MemoryLine, "SETTLE_S", 0.05)
    app = picker_app(demo_copy(tmp_path / "profiles"), [])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compose(app, pilot)
        line = screen.query_one(MemoryLine)
        await until(pilot, lambda: line.plan is not None)
        first = line.plan
        assert first is not None and first.batch_size == 32 and len(first.phases) == 4
        shown = text_of(line)
        assert "memory at batch 32 (cpu; the machine has " in shown
        assert all(f"phase {i} ~" in shown for i in range(1, 5))
        # the batch size field takes "auto" (it is a text field for that key): the largest batch that fits in
        # the (fixed) RAM, capped by the train split's size
        field = screen.query_one("#f-data-batch_size", Input)
        field.value = ""
        field.focus()
        await pilot.press(*"auto")  # typed: an integer field would refuse the letters
        assert field.value == "auto"
        await until(pilot, lambda: line.plan is not None and line.plan is not first)
        assert line.plan.note.startswith(f"data.batch_size = auto: {line.plan.batch_size} (")
        assert line.plan.batch_size > 32 and "data.batch_size = auto: " in text_of(line)
