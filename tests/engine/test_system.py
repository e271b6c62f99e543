"""The system sampler (tuitune/engine/record/system.py): a recorded NVML through the real `NvmlReader` (no GPU on the
test machine), the real psutil process reader, the sampling thread, the shared sink, the condensed history, and a
real tiny run that sends samples and none after its end (its slow loader checks the step split too)."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from torch.utils.data import Dataset

from tests.engine.conftest import of_type, tiny_profile
from tuitune.engine.commands import Control
from tuitune.engine.events import (
    GpuSample,
    LayerInfo,
    LayersChanged,
    LayersMeasured,
    MetricsUpdated,
    ProcessSample,
    RunFinished,
    SystemSampled,
    event_from_json,
    to_json,
)
from tuitune.engine.record import history
from tuitune.engine.record.system import NvmlReader, ProcessReader, SharedEmit, SystemSampler

# Two GPUs in NVML's own units (bytes, percent, degrees C, milliwatts), written down by hand (there is no GPU here;
# benchmarks/gpu_check.sh prints a real sample). The second board reports no temperature or power, as some do.
RECORDED = {
    "GPU-5a9c3d1e-0b2f-4c8e-9d71-2e6f4a8b0c13": {
        "pci": "00000000:19:00.0",
        "index": 0,
        "name": b"NVIDIA H100 80GB HBM3",
        "util": 97,
        "used": 61_203_447_808,
        "total": 85_520_809_984,
        "temp": 71,
        "power": 512_338,
        "limit": 700_000,
    },
    "MIG-unknown-to-uuid-lookup": {
        "pci": "00000000:3B:00.0",
        "index": 1,
        "name": "NVIDIA A10",
        "util": 12,
        "used": 1_073_741_824,
        "total": 24_146_608_128,
    },
}


class NVMLError(Exception):
    pass


class RecordedNvml:
    """The `pynvml` functions `NvmlReader` calls, answering from `RECORDED`."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, recorded: dict = RECORDED, fail_init: bool = False) -> None:
        self.recorded, self.fail_init, self.shut = recorded, fail_init, False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict:
        if uuid.startswith("MIG-") or uuid not in self.recorded:
            raise NVMLError("Not Found")
        return self.recorded[uuid]

    def nvmlDeviceGetHandleByPciBusId(self, pci: str) -> dict:
        return next(d for d in self.recorded.values() if d["pci"] == pci)

    def nvmlDeviceGetIndex(self, h: dict) -> int:
        return h["index"]

    def nvmlDeviceGetName(self, h: dict) -> bytes | str:
        return h["name"]

    def nvmlDeviceGetUtilizationRates(self, h: dict) -> SimpleNamespace:
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: dict) -> SimpleNamespace:
        return SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])

    def _optional(self, h: dict, key: str) -> int:
        if key not in h:
            raise NVMLError("Not Supported")
        return h[key]

    def nvmlDeviceGetTemperature(self, h: dict, sensor: int) -> int:
        return self._optional(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h: dict) -> int:
        return self._optional(h, "power")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: dict) -> int:
        return self._optional(h, "limit")


RANKS = [
    (0, "GPU-5a9c3d1e-0b2f-4c8e-9d71-2e6f4a8b0c13", "00000000:19:00.0"),
    (1, "MIG-unknown-to-uuid-lookup", "00000000:3B:00.0"),
]


def test_a_recorded_nvml_reads_in_watts_and_gigabytes_and_unsupported_readings_are_none() -> None:
    nvml = RecordedNvml()
    reader = NvmlReader.open(RANKS, nvml)
    assert reader is not None
    h100, a10 = reader.read()
    assert h100 == GpuSample(
        rank=0,
        index=0,
        name="NVIDIA H100 80GB HBM3",
        util_pct=97.0,
        mem_used_gb=61.203,
        mem_total_gb=85.521,
        temp_c=71.0,
        power_w=512.3,
        power_limit_w=700.0,
    )
    # found by its PCI bus id when the UUID lookup fails (MIG); no temperature or power on this board
    assert (a10.rank, a10.index, a10.name, a10.util_pct) == (1, 1, "NVIDIA A10", 12.0)
    assert a10.temp_c is None and a10.power_w is None and a10.power_limit_w is None
    reader.close()
    assert nvml.shut


def test_no_nvml_means_no_gpu_reader() -> None:
    """Here the real pynvml finds no library: None, not an error; and a recording whose init fails likewise."""
    assert NvmlReader.open(RANKS) is None
    assert NvmlReader.open(RANKS, RecordedNvml(fail_init=True)) is None
    assert NvmlReader.open([], RecordedNvml()) is None  # a CPU run: no GPU to look for


def test_the_process_reader_reads_this_process_cpu_and_ram() -> None:
    reader = ProcessReader([(0, os.getpid())])
    t0 = time.process_time()
    while time.process_time() - t0 < 0.05:  # some CPU time since the baseline (psutil counts clock ticks)
        pass
    (me,) = reader.read()
    assert me.rank == 0 and me.cpu_pct > 0 and me.ram_gb > 0.01


WORKER = "import time; b = bytearray(40_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"


def _children(pid: int, n: int) -> list[psutil.Process]:
    """`pid`'s `n` children once they are up (a ceiling of 30 s), the worker's 40 MB touched."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children()
        if len(kids) == n and max(k.memory_info().rss for k in kids) > 40e6:
            return kids
        time.sleep(0.02)
    raise AssertionError(f"{pid} did not start its {n} children in 30 s")


def test_the_process_reader_counts_a_ranks_workers_not_its_helpers() -> None:
    """A rank of the test's own making (a test process under xdist may hold other tests' children): a shell with a
    worker holding 40 MB and a helper named like multiprocessing's resource tracker."""
    worker = f"{shlex.quote(sys.executable)} -c {shlex.quote(WORKER)}"
    line = f'{worker} & sh -c "sleep 60; true" resource_tracker & wait'
    rank = subprocess.Popen(["sh", "-c", line], start_new_session=True)
    try:
        kids = _children(rank.pid, 2)
        reader = ProcessReader([(3, rank.pid)])
        (sample,) = reader.read()
        assert (sample.rank, sample.workers) == (3, 1)
        assert 0.04 <= sample.workers_ram_gb < 0.2
        (python,) = [k for k in kids if "python" in k.name()]
        python.kill()
        python.wait(timeout=30)
        (after,) = reader.read()
        assert after.workers == 0 and after.workers_cpu_pct == 0  # the worker ended: gone from the next read
    finally:
        os.killpg(rank.pid, signal.SIGKILL)
        rank.wait(timeout=30)


def test_the_sampler_thread_sends_samples_until_stopped_and_none_after() -> None:
    got: list[SystemSampled] = []
    two = threading.Event()

    def emit(event: SystemSampled) -> bool:
        got.append(event)
        if len(got) >= 2:
            two.set()
        return True

    sampler = SystemSampler(
        emit, ProcessReader([(0, os.getpid())]), NvmlReader.open(RANKS, RecordedNvml()), every_s=0.01, cpus=2
    )
    sampler.start()
    assert two.wait(timeout=60)
    sampler.stop()
    count = len(got)
    assert sampler._thread is not None and not sampler._thread.is_alive()
    assert len(got) == count  # nothing after stop() returned
    first = got[0]
    assert [g.name for g in first.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    assert first.processes[0].rank == 0 and first.cpus == 2 and first.ram_total_gb > 0


def test_a_failing_gpu_reader_drops_the_rows_and_the_samples_go_on() -> None:
    class Lost:
        def read(self) -> tuple:
            raise NVMLError("GPU is lost")

    sampler = SystemSampler(lambda e: True, ProcessReader([(0, os.getpid())]), Lost(), every_s=1, cpus=1)
    assert sampler.sample().gpus == () and sampler.sample().processes


def test_a_failure_in_the_samplers_thread_is_raised_in_the_training_thread() -> None:
    """A full disk hit by the sampler's write must end the run like any other write failure: the training thread's
    next event raises it (and the sampler stops)."""
    calls: list = []

    def sink(event: object) -> None:
        calls.append(event)
        if isinstance(event, SystemSampled):
            raise OSError(28, "No space left on device")

    shared = SharedEmit(sink)
    sample = SystemSampled((), (), 1, 1.0)
    assert shared.from_thread(sample) is False
    assert shared.from_thread(sample) is False and len(calls) == 1  # kept failing: not written again
    with pytest.raises(OSError, match="No space left"):
        shared(MetricsUpdated(1, 1, 1, 0.5, 0.5, (), 1.0, 1.0))
    assert len(calls) == 1  # the event that found the failure was not written


def test_system_samples_round_trip_through_json() -> None:
    sample = SystemSampled(
        gpus=(GpuSample(0, 0, "H100", 97.0, 61.2, 85.5, None, 512.3, 700.0),),
        processes=(ProcessSample(0, 180.0, 3.1, 8, 640.0, 9.1),),
        cpus=16,
        ram_total_gb=128.0,
    )
    assert event_from_json(to_json(sample)) == sample


def _rows(step: int) -> LayersChanged:
    return LayersChanged((LayerInfo("head", 10, True, lr=0.1 * step),), step)


def test_the_condensed_history_keeps_the_newest_sample_only(tmp_path: Path) -> None:
    """Every few seconds for a day is ~17,000 samples: a first frame needs the newest. A sample between a layer
    update and the next must not keep the update alive (it reads no rows), and folding the condensed history gives
    the state folding every line gives."""
    from tuitune.ui.reducer import fold

    events: list = []
    for i in range(1, 41):
        events.append(MetricsUpdated(1, i, i, 1.0 / i, 0.5, (0.1,), 10.0, float(i)))
        events.append(_rows(i))
        events.append(SystemSampled((), (ProcessSample(0, float(i), 1.0, 0, 0.0, 0.0),), 2, 8.0))
        events.append(LayersMeasured((0.1,), (0.5 / i,), i))
    (tmp_path / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in events))
    condensed = history.read_history(tmp_path)
    samples = [e for e in condensed if isinstance(e, SystemSampled)]
    assert len(samples) == 1 and samples[0].processes[0].cpu_pct == 40.0
    layer_updates = [e for e in condensed if isinstance(e, (LayersChanged, LayersMeasured))]
    assert len(layer_updates) == 2  # the last rows and the last measures
    assert fold(condensed) == fold(events)
    # the recorder's snapshot keeps the same
    c = history.Condenser.load(history.condense(tmp_path).dump())
    assert [k for k, *_ in c.kept()].count(history.SYSTEM) == 1


class SlowImages(Dataset):
    """The synthetic train split behind a loader that spends ~8 ms of CPU per image (a heavy augmentation)."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.008:
            pass
        return self.inner[i]


def test_a_run_samples_on_its_own_thread_until_its_end_and_splits_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One real tiny run for both (CI time): samples from the sampler's thread, none after the run's last event, a
    reading and its layer rows side by side in the record; and a slow loader (~8 ms an image) called data-bound by
    every metric reading's step split."""
    import tuitune.engine.train.parts as parts
    from tuitune.engine.data.datasets import DataBundle
    from tuitune.engine.session import run_training
    from tuitune.engine.train.step_clock import COMPUTE, DATA, OPTIMIZER, REST
    from tuitune.ui.step_bar import shares

    build = parts.build_datasets

    def slow(*args, **kwargs) -> DataBundle:
        b = build(*args, **kwargs)
        return DataBundle(SlowImages(b.train), b.val, b.test, b.classes, b.source)

    monkeypatch.setattr(parts, "build_datasets", slow)
    events: list = []
    threads: set[str] = set()
    sampling_at_end: list[bool] = []

    def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, SystemSampled):
            threads.add(threading.current_thread().name)
        if isinstance(event, RunFinished):  # the sampler has ended before the run's last event
            sampling_at_end.append(any(t.name == "tuitune-system" for t in threading.enumerate()))

    profile = tiny_profile(
        data={"num_samples": 64, "batch_size": 8, "num_workers": 0},
        train={"epochs": 1, "log_every": 2, "domain_shift": False, "feature_cache": False, "system_every_s": 0.01},
    )
    end = run_training(profile, tmp_path, sink, Control(), interactive=False)
    assert isinstance(end, RunFinished) and end.status == "finished"
    samples = of_type(events, SystemSampled)
    assert samples and threads == {"tuitune-system"}
    assert isinstance(events[-1], RunFinished) and sampling_at_end == [False]  # no sample after the run's end
    assert samples[-1].gpus == () and samples[-1].processes[0].rank == 0  # CPU here: no GPU rows
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert sum('"type":"SystemSampled"' in line for line in lines) == len(samples)
    after_read = [b for a, b in itertools.pairwise(lines) if a.startswith('{"type":"MetricsUpdated"')]
    assert after_read and all(b.startswith('{"type":"Layers') for b in after_read)  # a reading and its rows together
    # where the steps' time went: 8 images of 8 ms each per step waiting for data
    metrics = of_type(events, MetricsUpdated)
    assert len(metrics) == 3 and all(m.step_split is not None for m in metrics)
    for m in metrics:
        split = m.step_split
        assert set(split) == {DATA, COMPUTE, OPTIMIZER, REST} and min(split.values()) >= 0
        assert split[COMPUTE] > 0 and split[OPTIMIZER] > 0
        assert split[DATA] >= 8 * 8 * 0.9 and shares(split)[DATA] > 0.5
