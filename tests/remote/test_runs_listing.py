"""`tuitune runs`, `tuitune attach` and the picker read a run's row (phase, epoch, best, what holds it) from the
recorder's snapshot (`history.jsonl`) and the lines after it, never the lines before it: the same row as reading
every line, in time that does not grow with the run. A directory without a snapshot is read whole."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

from tests.ui.test_long_history import SPE, _history
from tuitune.engine.events import (
    CommandApplied,
    EpochEnded,
    Event,
    PhaseChanged,
    RunStarted,
    UnfreezeSuggested,
    to_json,
)
from tuitune.engine.record.history import SNAPSHOT, SNAPSHOT_READINGS, load_snapshot
from tuitune.engine.record.runlog import RunRecorder
from tuitune.runs.process import write_process_record
from tuitune.runs.status import run_info

TAIL = 250  # readings after the snapshot


def _run(readings: int, last: Event) -> Iterator[Event]:
    """A two-phase run: its best epoch 10, the second phase from epoch 20, a better epoch 42, then `last`."""
    for event in _history(readings):
        if isinstance(event, RunStarted):
            event = dataclasses.replace(event, phases=(("head",), ("body", "head")))
        if isinstance(event, EpochEnded):
            event = dataclasses.replace(event, phase=int(event.epoch > 20), is_best=event.epoch in (10, 42))
            event = dataclasses.replace(event, val_score=0.9 if event.epoch == 42 else 0.5)
        yield event
        if isinstance(event, EpochEnded) and event.epoch == 20:
            yield PhaseChanged(phase=1, num_phases=2, trainable=("body", "head"), unfrozen=("body",), epoch=20,
                               global_step=20 * SPE, reason="epochs")  # fmt: skip
    yield last


def _record(run_dir: Path, events: Iterator[Event], close: bool) -> RunRecorder:
    recorder = RunRecorder(run_dir)
    for event in events:
        recorder(event)
    if close:
        recorder.close()
    write_process_record(run_dir, run_dir / "sock", "headless")  # this test's process: a live run
    return recorder


def _row(run_dir: Path) -> tuple[str, str, str, str, str]:
    info = run_info(run_dir)
    return info.status, info.phase, info.epoch, info.best, info.held


def _row_of_every_line(run_dir: Path, tmp_path: Path) -> tuple[str, str, str, str, str]:
    whole = tmp_path / "whole"
    shutil.copytree(run_dir, whole)
    (whole / SNAPSHOT).unlink()  # an older run directory: read from the start
    return _row(whole)


def _garble_before_snapshot(run_dir: Path) -> None:
    """The bytes before the snapshot's offset made one line of the same length that starts another run (no
    phases, 7 epochs; the line end just before the offset kept, so the snapshot still matches the file): a reader
    of any line before the offset gets another row."""
    offset = load_snapshot(run_dir / "events.jsonl").offset
    data = (run_dir / "events.jsonl").read_bytes()
    other = b'{"type":"RunStarted","epochs":7}'
    (run_dir / "events.jsonl").write_bytes(other + b" " * (offset - 1 - len(other)) + data[offset - 1 :])


def test_a_live_runs_row_from_its_snapshot_and_the_lines_after_it_is_the_row_of_every_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    waiting = UnfreezeSuggested(metric="val_loss", epochs=3, next_groups=("body",), epoch=43, waiting=True)
    recorder = _record(run, _run(SNAPSHOT_READINGS + TAIL, waiting), close=False)  # a snapshot at 4096 readings
    try:
        offset, size = load_snapshot(run / "events.jsonl").offset, (run / "events.jsonl").stat().st_size
        assert 0 < offset < size  # the best epoch 42 and the question are after the snapshot, the rest before
        row = _row(run)
        assert row == ("live", "2/2", "43/200", "val acc 90.00% @ 42", "waiting: unfreeze body?")
        assert row == _row_of_every_line(run, tmp_path)
        _garble_before_snapshot(run)
        assert _row(run) == row  # the lines before the snapshot were not read
    finally:
        recorder.close()


def test_what_holds_a_run_from_before_its_snapshot_holds_it_still(tmp_path: Path) -> None:
    run = tmp_path / "run"
    paused = CommandApplied(command="Pause", epoch=41, global_step=40 * SPE + 50)
    _record(run, _run(40 * SPE + 50, paused), close=True)  # the snapshot at the end holds the pause
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:  # lines after it that leave the run paused
        f.write('{"type":"CommandApplied","command":"ApplyLR","epoch":41,"global_step":4050,"value":0.001}\n')
    row = _row(run)
    assert row == ("live", "2/2", "40/200", "val acc 50.00% @ 10", "paused")
    assert row == _row_of_every_line(run, tmp_path)
    _garble_before_snapshot(run)
    assert _row(run) == row
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:  # a reading: it trains again
        f.write(to_json(next(e for e in _history(4051) if getattr(e, "global_step", 0) == 4051)) + "\n")
    assert _row(run) == ("live", "2/2", "40/200", "val acc 50.00% @ 10", "")


def test_a_live_language_models_best_is_its_checkpoint_metric(tmp_path: Path) -> None:
    """The run keeps the epoch of best exact match (an extra), not of best token accuracy (the plotted score)."""

    def lm_run() -> Iterator[Event]:
        for event in _run(30 * SPE, CommandApplied(command="Pause", epoch=31, global_step=30 * SPE)):
            if isinstance(event, RunStarted):
                event = dataclasses.replace(event, profile={"train": {"checkpoint_metric": "val_exact_match"}})
            if isinstance(event, EpochEnded):
                event = dataclasses.replace(event, extra={"val_exact_match": event.epoch / 100})
            yield event

    run = tmp_path / "run"
    _record(run, lm_run(), close=True)
    assert _row(run)[3] == "val exact match 10.00% @ 10"
