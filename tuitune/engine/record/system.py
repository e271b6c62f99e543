"""The machine under a run, sampled every few seconds on a thread of its own and sent as `SystemSampled` events.

What a person on a GPU box asks first: is the GPU busy, and is the data loader holding it back. Each GPU the run
trains on (utilisation, memory, temperature, power: NVML, through nvidia-ml-py's `pynvml`) and each rank's process
on this host (its CPU and memory, and its child processes': the DataLoader workers). Sampled on a thread, never the
training thread: an NVML call can take milliseconds, and the events go to the same sinks (the record, the socket,
the dashboard), so `attach`, `replay` and multi-rank runs show them like any other event.

The readers are objects with a `read()` method, given to the sampler: tests feed a recorded NVML (there is no GPU
on the test machine) through the real `NvmlReader`, and the real psutil process reader.

Plain Python: psutil and pynvml load inside the readers (nvidia-ml-py is an optional extra, `tuitune[gpu]`); no torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from tuitune.engine.events import Event, GpuSample, ProcessSample, SystemSampled

GB = 1e9  # as the metric events' GPU memory
FIRST_S = 1.0  # the first sample, at most this soon after the start (CPU % needs a baseline)
HELPERS = ("resource_tracker", "semaphore_tracker", "forkserver", "compile_worker")  # child processes, not workers


class GpuReader(Protocol):
    def read(self) -> tuple[GpuSample, ...]: ...


class NvmlReader:
    """The GPUs of the run's ranks, found by their UUID (else their PCI bus id, e.g. under MIG), read through
    `nvml` (the `pynvml` module, or a recording with the same functions). A reading the device does not support
    (temperature, power on some boards) is None, never an error."""

    def __init__(self, nvml: Any, devices: Sequence[tuple[int, int, Any]]) -> None:
        self.nvml, self.devices = nvml, list(devices)  # (rank, NVML index, handle)
        self._names = {index: _text(nvml.nvmlDeviceGetName(handle)) for _, index, handle in self.devices}

    @classmethod
    def open(cls, gpus: Sequence[tuple[int, str, str]], nvml: Any = None) -> NvmlReader | None:
        """`gpus`: (rank, UUID, PCI bus id) of each rank's GPU on this host. None where NVML is missing (no
        nvidia-ml-py, no driver) or none of them is found: the panel then has no GPU rows."""
        if not gpus:
            return None
        try:
            if nvml is None:
                import pynvml

                nvml = pynvml
            nvml.nvmlInit()
        except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            return None
        devices = []
        for rank, uuid, pci in gpus:
            handle = _try(nvml.nvmlDeviceGetHandleByUUID, uuid)
            handle = handle if handle is not None else _try(nvml.nvmlDeviceGetHandleByPciBusId, pci)
            if handle is not None:
                devices.append((rank, int(nvml.nvmlDeviceGetIndex(handle)), handle))
        return cls(nvml, devices) if devices else None

    def read(self) -> tuple[GpuSample, ...]:
        nvml, out = self.nvml, []
        for rank, index, h in self.devices:
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            temp = _try(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)
            power = _try(nvml.nvmlDeviceGetPowerUsage, h)  # milliwatts
            limit = _try(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            out.append(
                GpuSample(
                    rank=rank,
                    index=index,
                    name=self._names[index],
                    util_pct=float(nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    mem_used_gb=round(mem.used / GB, 3),
                    mem_total_gb=round(mem.total / GB, 3),
                    temp_c=None if temp is None else float(temp),
                    power_w=None if power is None else round(power / 1000.0, 1),
                    power_limit_w=None if limit is None else round(limit / 1000.0, 1),
                )
            )
        return tuple(out)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


class ProcessReader:
    """Each rank's process on this host (rank, pid) and its worker processes (its children but multiprocessing's and
    torch's helpers), through psutil. CPU % counts since the previous read (100 = one core); a worker seen for the
    first time reads 0 until the next read."""

    def __init__(self, ranks: Sequence[tuple[int, int]], psutil: Any = None) -> None:
        if psutil is None:
            import psutil as default

            psutil = default
        self.psutil = psutil
        self.ranks = [(rank, psutil.Process(pid)) for rank, pid in ranks]
        self._children: dict[int, Any] = {}  # pid -> psutil.Process, kept so CPU % has a baseline
        self._helpers: dict[int, bool] = {}  # pid -> a helper process, not a worker (`_is_worker`)
        self.read()  # the baseline

    def read(self) -> tuple[ProcessSample, ...]:
        out: list[ProcessSample] = []
        seen: set[int] = set()
        listed: set[int] = set()  # every child's pid, helpers too
        for rank, proc in self.ranks:
            try:
                with proc.oneshot():
                    cpu, ram = proc.cpu_percent(None), proc.memory_info().rss
                    kids = proc.children()
            except self.psutil.Error:  # the rank ended (the run is ending)
                continue
            kid_cpu = kid_ram = 0.0
            listed.update(kid.pid for kid in kids)
            kids = [kid for kid in kids if self._is_worker(kid)]
            for kid in kids:
                kid = self._children.setdefault(kid.pid, kid)
                seen.add(kid.pid)
                try:
                    kid_cpu += kid.cpu_percent(None)
                    kid_ram += kid.memory_info().rss
                except self.psutil.Error:  # ended between the listing and the reading
                    pass
            out.append(
                ProcessSample(
                    rank, round(cpu, 1), round(ram / GB, 3), len(kids), round(kid_cpu, 1), round(kid_ram / GB, 3)
                )
            )
        self._children = {pid: p for pid, p in self._children.items() if pid in seen}
        self._helpers = {pid: h for pid, h in self._helpers.items() if pid in listed}
        return tuple(out)

    def _is_worker(self, proc: Any) -> bool:
        """Not one of multiprocessing's or torch's own helpers (the resource tracker, a fork server, inductor's
        compile workers): those are not the run's data workers. Decided once per process, from its command line."""
        if proc.pid not in self._helpers:
            try:
                line = " ".join(proc.cmdline())
            except self.psutil.Error:
                line = ""
            self._helpers[proc.pid] = any(mark in line for mark in HELPERS)
        return not self._helpers[proc.pid]


class SharedEmit:
    """The run's one sink, shared by the training thread and the sampler's: one event at a time (the record, the
    socket and the console expect one writer), and a burst of the training thread's kept whole (`together`). A
    failure in the sampler's thread (a full disk) is kept and raised in the training thread at its next event,
    where the run's failure handling lives."""

    def __init__(self, sink: Callable[[Event], None]) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self._lock = threading.RLock()

    def together(self) -> AbstractContextManager[Any]:
        """Hold the sink for events that belong together (a metric read and its layer measures): no sample comes
        between them, so a reader of events.jsonl finds them side by side."""
        return self._lock

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            self.sink(event)

    def from_thread(self, event: Event) -> bool:
        """Emit from another thread; False when it failed (the failure waits for the training thread)."""
        with self._lock:
            if self.error is not None:
                return False
            try:
                self.sink(event)
            except Exception as e:
                self.error = e
                return False
            return True


class SystemSampler:
    """Sends a `SystemSampled` every `every_s` seconds from a daemon thread, between `start()` and `stop()`."""

    def __init__(
        self,
        emit: Callable[[SystemSampled], bool],
        processes: ProcessReader,
        gpus: GpuReader | None,
        every_s: float,
        *,
        cpus: int | None = None,
        ram_total_gb: float | None = None,
    ) -> None:
        self.emit, self.processes, self.gpus, self.every_s = emit, processes, gpus, every_s
        self.cpus = cpus if cpus is not None else cpu_count()
        if ram_total_gb is None:
            ram_total_gb = round(processes.psutil.virtual_memory().total / GB, 1)
        self.ram_total_gb = ram_total_gb
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> SystemSampled:
        gpus: tuple[GpuSample, ...] = ()
        if self.gpus is not None:
            try:
                gpus = self.gpus.read()
            except Exception:  # a GPU that fell off the bus, a driver reload: the rows go, the run goes on
                self.gpus = None
        return SystemSampled(gpus, self.processes.read(), self.cpus, self.ram_total_gb)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuitune-system", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        wait = min(self.every_s, FIRST_S)
        while not self._stop.wait(wait):
            if not self.emit(self.sample()):
                return
            wait = self.every_s

    def stop(self) -> None:
        """Idempotent; returns once the thread has ended, so no sample follows the run's last event."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if isinstance(self.gpus, NvmlReader):
            self.gpus.close()
            self.gpus = None


def cpu_count() -> int:
    """The cores this process may use (its affinity, which a container or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _try(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, or None where it raises (NVMLError: not supported on this device, not found)."""
    try:
        return call(*args)
    except Exception:
        return None


def _text(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
