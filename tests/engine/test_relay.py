"""The relay that feeds the trackers and the webhook (tuitune/engine/report/relay.py): its sinks run on its own
thread, a stuck sink never blocks the loop (readings are dropped and counted, other events kept), a sink that raises
is one warning, the run's end waits a bounded time, and what its thread prints goes to the run's report.log."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from tuitune.engine.events import Event, MetricsUpdated, PhaseChanged, RunFailed, Warned
from tuitune.engine.report import relayed
from tuitune.engine.report.relay import Relay, SinkWarning


def reading(step: int) -> MetricsUpdated:
    return MetricsUpdated(
        epoch=1, step=step, global_step=step, train_loss=1.0, train_score=0.5, lrs=(1e-3,), samples_per_s=1.0,
        elapsed_s=0.1,
    )  # fmt: skip


PHASE = PhaseChanged(
    phase=1, num_phases=2, trainable=("a", "b"), unfrozen=("a",), epoch=1, global_step=3, reason="manual"
)


class Sink:
    """A sink that records what it gets, on which thread, and can be held at its start (`gate`: the relay takes
    nothing meanwhile) or made to raise."""

    def __init__(self, name: str, *, gate: threading.Event | None = None, fail: type[Exception] | None = None) -> None:
        self.name, self.gate, self.fail = name, gate, fail
        self.wants = frozenset({MetricsUpdated, PhaseChanged})
        self.seen: list[Event] = []
        self.threads: set[int] = set()
        self.closed = False

    def start(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        print(f"{self.name}: a banner the library prints")
        print(f"{self.name}: and a note on stderr", file=sys.stderr)

    def handle(self, event: Event) -> None:
        self.threads.add(threading.get_ident())
        self.seen.append(event)
        if self.fail is not None:
            raise self.fail(f"{self.name}: boom at {type(event).__name__}")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


END = RunFailed(message="stopped", run_dir=".")


def test_a_stuck_sink_never_blocks_the_loop_and_readings_give_way(tmp_path: Path) -> None:
    gate = threading.Event()
    sink = Sink("slow", gate=gate)
    relay = Relay([sink], tmp_path / "report.log", max_waiting=3)
    relay.begin()
    t0 = time.perf_counter()
    for step in range(1, 11):
        relay(reading(step))
    relay(PHASE)  # past the bound, but not a reading: kept
    handed_over_s = time.perf_counter() - t0
    gate.set()
    warnings = relay.finish(END)
    got = [e.global_step for e in sink.seen if isinstance(e, MetricsUpdated)]
    assert handed_over_s < 0.5  # µs each; the sink was stuck for all of it (up to 10 s)
    assert got == [1, 2, 3] and sink.seen[3:] == [PHASE, END]  # 3 waiting: later readings dropped, not the rest
    assert warnings == [
        "report: the trackers fell behind; 7 metric readings were not sent (the run's own record has them all)"
    ]
    assert sink.threads and threading.get_ident() not in sink.threads and sink.closed


def test_a_sink_that_raises_is_one_warning_before_the_end_and_the_others_go_on(tmp_path: Path) -> None:
    bad, good = Sink("bad", fail=RuntimeError), Sink("good")
    recorded: list[Event] = []
    relay = Relay([bad, good], tmp_path / "report.log")
    relay.begin()
    emit = relayed(recorded.append, relay)
    for event in (reading(1), PHASE, reading(2), END):
        emit(event)
    assert good.seen == [reading(1), PHASE, reading(2), END]
    warned = [e for e in recorded if isinstance(e, Warned)]
    assert [w.message for w in warned] == [
        "report: bad failed and is off for this run: RuntimeError: bad: boom at MetricsUpdated"
    ]
    assert bad.seen == [reading(1)] and bad.closed  # off after its failure, closed at the end all the same
    assert recorded[-1] is END and recorded.index(warned[0]) < len(recorded) - 1


def test_a_sink_warning_is_said_once_and_the_sink_stays_on(tmp_path: Path) -> None:
    """A notification not delivered (`SinkWarning`): one warning however often, and the next ones still tried."""
    sink = Sink("hook", fail=SinkWarning)
    relay = Relay([sink], tmp_path / "report.log")
    relay(reading(1))
    relay(PHASE)
    assert relay.finish(END) == ["hook: boom at MetricsUpdated"]
    assert sink.seen == [reading(1), PHASE, END]


def test_the_end_waits_a_bounded_time(tmp_path: Path) -> None:
    gate = threading.Event()
    relay = Relay([Sink("hung", gate=gate)], tmp_path / "report.log", flush_s=0.2)
    relay(PHASE)
    t0 = time.perf_counter()
    warnings = relay.finish(END)
    assert time.perf_counter() - t0 < 5
    assert warnings == [
        "report: hung still busy 0.2 s after the run ended; left behind (their last records may be missing)"
    ]
    gate.set()


def test_what_the_relay_thread_prints_goes_to_the_log(tmp_path: Path, capsys) -> None:
    relay = Relay([Sink("tracker")], tmp_path / "report.log")
    print("the console's own line")
    relay.finish(END)
    out, err = capsys.readouterr()
    assert "the console's own line" in out and "tracker" not in out + err
    assert (
        tmp_path / "report.log"
    ).read_text() == "tracker: a banner the library prints\ntracker: and a note on stderr\n"
    assert type(sys.stdout).__name__ != "_Routed" and type(sys.stderr).__name__ != "_Routed"  # put back
