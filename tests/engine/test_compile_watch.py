"""`train.compile` across phase changes (tuitune/engine/train/compile_watch.py): the counting on dynamo's callbacks
(fed here without compiling: dynamo's first compile costs 3-12 s on this machine, even with its `eager` backend),
the report, and a trainable-set change dropping the old graphs. That dropping them keeps every phase compiled past
dynamo's recompile limit is checked with real compiles in `benchmarks/overhead.py --compile` (`limit_check`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tuitune.engine.events import ModelCompiled
from tuitune.engine.train import compile_watch
from tuitune.engine.train.compile_watch import CompileWatch, is_recompile, report


def test_compile_ids_say_which_are_recompiles() -> None:
    assert not is_recompile("0/0") and not is_recompile("3/0") and not is_recompile("[2/0]")
    assert is_recompile("0/1") and is_recompile("[0/7]") and is_recompile("1/2_1")


def test_the_watch_counts_and_times_what_dynamo_reports_and_hands_it_over_once() -> None:
    watch = CompileWatch()
    for cid in ("0/0", "1/0", "1/1"):
        watch.started(SimpleNamespace(compile_id=cid))
        watch.ended(SimpleNamespace(compile_id=cid))
    compiles, recompiles, seconds = watch.take()  # type: ignore[misc]
    assert (compiles, recompiles, watch.total) == (3, 1, 3) and seconds >= 0
    assert watch.take() is None  # nothing new
    events: list = []
    report(watch, events.append, epoch=2, global_step=40)
    assert events == []
    watch.started(SimpleNamespace(compile_id="2/0"))
    watch.ended(SimpleNamespace(compile_id="2/0"))
    report(watch, events.append, epoch=2, global_step=40)
    (event,) = events
    assert isinstance(event, ModelCompiled) and (event.compiles, event.recompiles, event.total) == (1, 0, 4)
    assert event.text().startswith("torch.compile: 1 graph in ") and event.text().endswith(", 4 in this run")
    report(None, events.append, epoch=2, global_step=40)  # not compiling: nothing to say
    assert len(events) == 1


def test_a_trainable_set_change_drops_the_graphs_of_a_compiled_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuitune.engine.train.parts import RunParts

    dropped: list[bool] = []
    monkeypatch.setattr(compile_watch, "drop_graphs", lambda: dropped.append(True))
    none: dict = dict.fromkeys(("backbone", "bundle", "train_loader", "val_loader", "test_loader", "plan"))
    parts = RunParts(**none, device=torch.device("cpu"), steps_per_epoch=1, micro_per_epoch=1, warnings=())
    parts.rewrap()
    assert dropped == []  # eager: nothing compiled
    parts.compiled = True
    parts.rewrap()
    assert dropped == [True]
