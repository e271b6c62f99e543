"""Where a step's time goes (tuitune/engine/train/step_clock.py): the arithmetic on scripted clocks, the CUDA events'
reuse on scripted events, and the header's bar. A real tiny run whose loader is slow, which the split must call
data-bound, shares its run with the system samples' test (tests/engine/test_system.py)."""

from __future__ import annotations

import pytest

from tuitune.engine.events import ProcessSample, SystemSampled
from tuitune.engine.train.step_clock import COMPUTE, DATA, OPTIMIZER, REST, CudaTimer, HostTimer, StepClock
from tuitune.ui.step_bar import cells, data_hint, shares, step_line


class Script:
    """A clock that reads the times it is given, in order (seconds)."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_a_window_sums_each_part_per_step_and_the_next_starts_at_its_last_mark() -> None:
    # restart at 0; step 1: data until 6 ms, compute until 9, optimizer until 10, rest until 10.5;
    # step 2: data until 16.5, compute 19.5, optimizer 20.5 -> read; then rest until 21 (the read), step 3 ...
    clock = StepClock(
        HostTimer(Script(0.0, 0.006, 0.009, 0.010, 0.0105, 0.0165, 0.0195, 0.0205, 0.021, 0.022, 0.026, 0.027))
    )
    clock.restart()
    for part in (DATA, COMPUTE, OPTIMIZER, REST, DATA, COMPUTE, OPTIMIZER):
        clock.mark(part)
        if part == OPTIMIZER:
            clock.step_done()
    assert clock.split() == pytest.approx({DATA: 6.0, COMPUTE: 3.0, OPTIMIZER: 1.0, REST: 0.25})
    for part in (REST, DATA, COMPUTE):  # the read itself is the next window's rest
        clock.mark(part)
    clock.mark(OPTIMIZER)
    clock.step_done()
    assert clock.split() == pytest.approx({DATA: 1.0, COMPUTE: 4.0, OPTIMIZER: 1.0, REST: 0.5})


def test_micro_batches_add_up_within_their_optimizer_step() -> None:
    """`train.accumulate_steps = 2`: two fetches and two backward passes per optimizer step."""
    clock = StepClock(HostTimer(Script(0.0, 0.002, 0.005, 0.007, 0.010, 0.011)))
    clock.restart()
    for part in (DATA, COMPUTE, DATA, COMPUTE, OPTIMIZER):
        clock.mark(part)
    clock.step_done()
    assert clock.split() == pytest.approx({DATA: 4.0, COMPUTE: 6.0, OPTIMIZER: 1.0, REST: 0.0})


def test_no_split_before_a_step_and_an_epoch_start_drops_what_came_before() -> None:
    clock = StepClock(HostTimer(Script(0.0, 5.0, 100.0, 100.002, 100.003)))
    assert clock.split() is None
    clock.restart()
    clock.mark(DATA)
    assert clock.split() is None  # no optimizer step yet
    clock.restart()  # validation and saves took 95 s: no step's time
    clock.mark(DATA)
    clock.mark(COMPUTE)
    clock.step_done()
    assert clock.split() == pytest.approx({DATA: 2.0, COMPUTE: 1.0, OPTIMIZER: 0.0, REST: 0.0})


class FakeEvent:
    """A CUDA event on a scripted GPU timeline: `record()` takes the next time (ms)."""

    def __init__(self, timeline: Script) -> None:
        self.timeline, self.t = timeline, None

    def record(self) -> None:
        self.t = self.timeline()

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.t is not None and end.t is not None
        return end.t - self.t


def test_cuda_events_are_read_at_the_split_and_reused_so_a_long_run_creates_few() -> None:
    timeline = Script(*[float(i) for i in range(10_000)])
    made: list[FakeEvent] = []
    timer = CudaTimer(lambda: made.append(FakeEvent(timeline)) or made[-1])
    clock = StepClock(timer)
    clock.restart()
    for _window in range(100):
        for _step in range(5):
            for part in (REST, DATA, COMPUTE, OPTIMIZER):
                clock.mark(part)
            clock.step_done()
        assert clock.split() == {DATA: 1.0, COMPUTE: 1.0, OPTIMIZER: 1.0, REST: 1.0}
    assert len(made) == timer.created <= 2 * 4 * 5 + 2  # one window's marks (and the start), not 2,000


def test_the_bar_fills_its_width_and_the_hint_names_the_fix() -> None:
    split = {DATA: 63.0, COMPUTE: 30.0, OPTIMIZER: 5.0, REST: 2.0}
    assert shares(split) == pytest.approx({DATA: 0.63, COMPUTE: 0.30, OPTIMIZER: 0.05, REST: 0.02})
    assert cells(shares(split)) == {DATA: 10, COMPUTE: 5, OPTIMIZER: 1, REST: 0}
    assert sum(cells(shares({DATA: 1.0, COMPUTE: 1.0, OPTIMIZER: 1.0}), width=16).values()) == 16
    assert data_hint(0.63, None) == "data loading is 63% of each step: raise data.num_workers"
    assert data_hint(0.29, None) == ""
    # the sample counts every loader's workers (train and validation: 2 x 2); the hint says the setting's 2
    four = SystemSampled(gpus=(), processes=(ProcessSample(0, 90.0, 2.0, 4, 50.0, 1.0),), cpus=16, ram_total_gb=64.0)
    assert data_hint(0.63, four, 2) == "data loading is 63% of each step: raise data.num_workers (now 2)"
    assert data_hint(0.63, four, 15).startswith("data loading is 63% of each step: the 15 workers use every core")
    line = step_line(split)
    assert line is not None
    assert "⚠ data loading is 63% of each step: raise data.num_workers · fwd+bwd 30% · optim 5% · rest 2%" in line.plain
    assert step_line({DATA: 1.0, COMPUTE: 9.0, OPTIMIZER: 0.0, REST: 0.0}).plain.endswith(  # type: ignore[union-attr]
        "data 10% · fwd+bwd 90% · optim 0% · rest 0% · 10.0 ms/step"
    )
    slow = step_line({DATA: 0.0, COMPUTE: 19135.2, OPTIMIZER: 0.0, REST: 0.0})  # a language model on a CPU
    assert slow is not None and slow.plain.endswith("rest 0% · 19.1 s/step")
    assert step_line(None) is None
