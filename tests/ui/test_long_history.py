"""Histories of any length: the plot series stay bounded (downsampled deterministically), and a condensed history
(`read_history`: the recorder's snapshot plus the lines after it) folds into the same state as every line does,
for run directories written now (`LayersMeasured`, `history.jsonl`) and before (full rows at every read)."""

from __future__ import annotations

from pathlib import Path

from tuitune.engine.events import (
    EpochEnded,
    LayerInfo,
    LayersChanged,
    LayersMeasured,
    MetricsUpdated,
    RunStarted,
    to_json,
)
from tuitune.engine.record.history import CAPACITY, SNAPSHOT, read_history, stride_for
from tuitune.engine.record.runlog import RunRecorder, read_events
from tuitune.ui.reducer import fold, reduce
from tuitune.ui.state import DashboardState

SPE = 100  # steps per epoch


def _started() -> RunStarted:
    rows = (LayerInfo("body", 1000, False), LayerInfo("head", 10, True, lr=1e-3))
    return RunStarted(
        run_name="long", run_dir="", device="cpu", layers=rows, phases=(("head",),), phase=0, epochs=200,
        steps_per_epoch=SPE, train_size=6400, val_size=640, classes=("a", "b"), profile={},
    )  # fmt: skip


def _history(readings: int, old: bool = False):
    """A run's events: per read a MetricsUpdated and its layer update (old: the full rows), per epoch its end."""
    yield (started := _started())
    for i in range(readings):
        g = i + 1
        yield MetricsUpdated(
            epoch=g // SPE + 1,
            step=g % SPE,
            global_step=g,
            train_loss=1 / g,
            train_score=i % 7 / 7,
            lrs=(1e-3,),
            samples_per_s=100.0,
            elapsed_s=g / 10,
            extra={"aux": float(i % 3)},
        )
        if old:
            head = LayerInfo("head", 10, True, lr=1e-3, grad_norm=1 / g)
            yield LayersChanged(layers=(started.layers[0], head), global_step=g)
        else:
            yield LayersMeasured(lrs=(None, 1e-3), grad_norms=(None, 1 / g), global_step=g)
        if g % SPE == 0:
            yield EpochEnded(epoch=g // SPE, global_step=g, phase=0, train_loss=1 / g, train_score=0.5,
                             val_loss=2 / g, val_score=0.5, elapsed_s=g / 10, epoch_s=10.0, samples_per_s=100.0,
                             is_best=False)  # fmt: skip
            yield LayersChanged(layers=started.layers, global_step=g)


def test_a_plot_series_stays_bounded_and_keeps_every_stride_th_point_and_the_newest() -> None:
    n = 5 * CAPACITY + 3
    states = [DashboardState()]
    for event in _history(n):
        states.append(reduce(states[-1], event))
    s, stride = states[-1], stride_for(n)
    assert stride == 8 and len(s.train_loss) <= CAPACITY + 1
    xs = [x for x, _ in s.train_loss]
    assert xs == [(i + 1) / SPE for i in range(0, n, stride)] + [n / SPE]  # reading i at x = (i + 1) / SPE
    assert len(s.train_extra["aux"]) == len(s.train_loss) and s.val_loss[-1] == (n // SPE, 2 / (n // SPE * SPE))
    # pure: a state reached earlier still holds what it held, and appending to it again branches off
    early = next(st for st in states if st.readings == 100)
    assert [x for x, _ in early.train_loss] == [(i + 1) / SPE for i in range(100)]
    again = reduce(early, next(e for e in _history(101) if isinstance(e, MetricsUpdated) and e.global_step == 101))
    assert len(again.train_loss) == 101 and len(early.train_loss) == 100


def _record(run_dir: Path, events) -> None:
    recorder = RunRecorder(run_dir)
    for event in events:
        recorder(event)
    recorder.close()


def test_a_condensed_history_folds_into_the_state_of_every_line(tmp_path: Path) -> None:
    n = 3 * CAPACITY + 50
    _record(tmp_path, _history(n))
    assert (tmp_path / SNAPSHOT).exists()
    everything = fold(read_events(tmp_path))
    condensed = read_history(tmp_path)
    assert fold(condensed) == everything and everything.events_seen == 2 * n + 2 * (n // SPE) + 1
    assert len(condensed) < 2 * CAPACITY + 2 * (n // SPE) + 10  # not the 2n lines
    # a live run: lines after its last snapshot are read from events.jsonl; a snapshot of another file is ignored
    with open(tmp_path / "events.jsonl", "a") as f:
        for event in list(_history(n + 7))[-14:]:
            f.write(to_json(event) + "\n")
    assert fold(read_history(tmp_path)) == fold(read_events(tmp_path))
    (tmp_path / "events.jsonl").write_text((tmp_path / "events.jsonl").read_text()[:5000].rsplit("\n", 1)[0] + "\n")
    assert fold(read_history(tmp_path)) == fold(read_events(tmp_path))


def test_an_old_run_directory_with_full_rows_at_every_read_still_replays(tmp_path: Path) -> None:
    n = 2 * CAPACITY + 10
    lines = [to_json(e) for e in _history(n, old=True)]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")  # no history.jsonl: read from the start
    condensed = read_history(tmp_path)
    state = fold(condensed)
    assert state == fold(read_events(tmp_path)) and state.readings == n
    assert len(condensed) < 2 * CAPACITY + 2 * (n // SPE) + 10  # the rows a later update replaced are skipped
    assert state.layers[1].grad_norm == 1 / n or state.layers == _started().layers
