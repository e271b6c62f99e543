"""The feature cache: used while only the classifier trains, dropped at the first unfreeze, same results."""

from __future__ import annotations

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import EpochEnded, FeatureCacheChanged, MetricsUpdated, PhaseChanged
from tuitune.engine.train.loop import Trainer


def _run(tmp_path, control: Control | None = None, emit=None, **sections):
    events: list = []

    def sink(event) -> None:
        events.append(event)
        if emit:
            emit(event)

    final = Trainer(tiny_profile(**sections), tmp_path, sink, control or Control(), interactive=True).run()
    return events, final


def test_head_only_with_and_without_cache_agree(tmp_path) -> None:
    cached, _ = _run(tmp_path / "a", strategy={"kind": "head_only"}, train={"epochs": 3})
    plain, _ = _run(tmp_path / "b", strategy={"kind": "head_only"}, train={"epochs": 3, "feature_cache": False})
    assert [e.active for e in of_type(cached, FeatureCacheChanged)] == [True]
    assert not of_type(plain, FeatureCacheChanged)
    a, b = of_type(cached, EpochEnded), of_type(plain, EpochEnded)
    assert a[0].val_loss == pytest.approx(b[0].val_loss, abs=1e-4)  # same features, same first epoch
    assert [e.val_loss for e in a] == pytest.approx([e.val_loss for e in b], abs=1e-4)
    assert [e.val_score for e in a] == [e.val_score for e in b]


def test_cache_is_dropped_at_the_first_unfreeze(tmp_path) -> None:
    events, _ = _run(tmp_path, strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1},
                     train={"epochs": 2})
    changes = of_type(events, FeatureCacheChanged)
    assert [c.active for c in changes] == [True, False] and "layer groups below the head" in changes[1].detail
    assert changes[1].global_step == of_type(events, PhaseChanged)[0].global_step


def test_unfreeze_mid_epoch_switches_to_real_batches(tmp_path) -> None:
    control = Control()

    def emit(event) -> None:
        if isinstance(event, MetricsUpdated) and event.global_step == 1:
            control.put(UnfreezeNext())

    events, final = _run(tmp_path, control, emit, strategy={"kind": "progressive", "trigger": "manual"},
                         train={"epochs": 1, "log_every": 1})
    assert [c.active for c in of_type(events, FeatureCacheChanged)] == [True, False]
    assert final.status == "finished" and len(of_type(events, MetricsUpdated)) == final.global_step
    layers = [m.lrs for m in of_type(events, MetricsUpdated)]
    assert len(layers[0]) == 1 and len(layers[-1]) == 2  # head, then head + layer4


def test_not_used_when_something_random_precedes_the_head(tmp_path) -> None:
    events, _ = _run(tmp_path, strategy={"kind": "head_only"}, regularization={"drop_rate": 0.2},
                     train={"epochs": 1})
    assert not of_type(events, FeatureCacheChanged)
