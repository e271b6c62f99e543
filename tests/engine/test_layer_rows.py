"""The layer table in a run's record grows with what changed: full rows when a row changes (start, epoch end,
phase, steering), only the LRs and gradient norms (`LayersMeasured`) at the metric reads between."""

from __future__ import annotations

import itertools
import json

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, LayersChanged, LayersMeasured, MetricsUpdated
from tuitune.engine.record.runlog import read_events
from tuitune.engine.session import run_training
from tuitune.ui.reducer import fold


def test_layer_rows_are_written_when_they_change(tmp_path) -> None:
    profile = tiny_profile(train={"epochs": 2, "lr": 0.01, "log_every": 1})
    run_training(profile, tmp_path, lambda e: None, Control(), interactive=False)
    events = read_events(tmp_path)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    after_read = [
        json.loads(b)["type"] for a, b in itertools.pairwise(lines) if a.startswith('{"type":"MetricsUpdated"')
    ]
    assert len(after_read) == len(of_type(events, MetricsUpdated)) > 8
    # full rows after the first read only (nothing sent before it); LRs and grad norms alone after the others
    assert after_read == ["LayersChanged"] + ["LayersMeasured"] * (len(after_read) - 1)
    epochs = [i for i, e in enumerate(events) if isinstance(e, EpochEnded)]
    assert all(isinstance(events[i + 1], LayersChanged) for i in epochs)  # drift moved: the whole rows
    rows = of_type(events, LayersChanged)[0].layers
    for e in events:  # every measure names each group's LR and grad norm, in row order, for trainable rows only
        if isinstance(e, LayersMeasured):
            assert len(e.lrs) == len(e.grad_norms) == len(rows)
            assert all((n is None) == (not r.trainable) for r, n in zip(rows, e.grad_norms))
            assert any(n is not None and n > 0 for n in e.grad_norms)
        elif isinstance(e, LayersChanged):
            rows = e.layers
    # the dashboard's table at the end is the rows plus the latest measures
    state = fold(events)
    last = next(e for e in reversed(events) if isinstance(e, (LayersChanged, LayersMeasured)))
    if isinstance(last, LayersMeasured):
        assert tuple(r.grad_norm for r in state.layers) == last.grad_norms
    else:
        assert state.layers == last.layers
