"""The three runs of benchmarks/overhead.py: a hand-written loop, the engine headless, the engine under the
dashboard. Each `run_mode` call trains one epoch of `warmup + steps` steps and returns what the timed steps cost.

torch, timm and Textual are imported here, not in overhead.py: with process isolation (the default) only the
worker processes load them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tuitune.config import RunProfile, profile_from_dict  # noqa: E402

VAL_FRACTION = 0.02  # the engine validates once at the end (outside the timed window): keep it short


def make_profile(args: argparse.Namespace) -> RunProfile:
    """One epoch of exactly warmup + steps full-model training steps on synthetic images."""
    total = args.warmup + args.steps
    samples = math.ceil(total * args.batch_size / (1 - VAL_FRACTION)) + 2 * args.num_classes
    table = {
        "name": "overhead",
        "model": {
            "source": "timm",
            "name": args.model,
            "pretrained": False,
            "kwargs": args.kwargs,
            "img_size": args.img_size,
        },
        "data": {
            "kind": "synthetic",
            "num_samples": samples,
            "num_classes": args.num_classes,
            "batch_size": args.batch_size,
            "val_fraction": VAL_FRACTION,
            "num_workers": -1,
        },
        "train": {
            "epochs": 1,
            "lr": 1e-3,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "constant",
            "seed": 0,
            "device": args.device,
            "log_every": args.log_every,
            "max_steps_per_epoch": total,
        },
        "strategy": {"kind": "full"},
        "early_stopping": {"enabled": False},
        "report": {"to": list(getattr(args, "report_to", []))},
    }
    return profile_from_dict(table, file="<overhead>")


def share_synthetic_data() -> None:
    """Build the synthetic images once per process: all runs read the same tensors, and a GPU-sized set
    (10k x 3x224x224 floats, 6 GB) is not regenerated nine times. Setup only; nothing timed changes."""
    import importlib

    for name in ("tuitune.engine.data.synthetic", "tuitune.engine.data.datasets"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "build_synthetic_images", None)
        if original is not None:
            break
    else:
        print("note: build_synthetic_images not found; each run builds its own data")
        return
    built: dict[str, Any] = {}

    def cached(*args: Any, **kwargs: Any) -> Any:
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = original(*args, **kwargs)
        return built[key]

    module.build_synthetic_images = cached


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main_thread_cpu() -> float:
    """CPU seconds of the main thread (Textual's event loop in `tui`), read from any thread."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(threading.main_thread().ident or 0))
    except (AttributeError, OSError):  # not on Linux / macOS
        return math.nan


class ComputeMeter:
    """CPU seconds of the calling thread spent inside the work every loop does: the model's forward (outermost
    module call), backward, the optimizer step and the data loader's `next()`. `--overhead` subtracts them from
    the training thread's CPU time over the window; what is left is the loop's own time (the engine's bookkeeping,
    or a hand-written loop's few lines). Thread CPU time, not wall time: on a shared machine a thread that is
    descheduled mid-step would otherwise charge the wait to whatever it was doing (torch runs one thread here).
    Installed process-wide (global module and optimizer hooks, two patched methods), so every mode pays the same
    for the timers."""

    def __init__(self) -> None:
        self.total = 0.0
        self._depth = 0
        self._t0 = 0.0

    def install(self) -> None:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        register_module_forward_pre_hook(self._enter)
        register_module_forward_hook(self._leave)
        register_optimizer_step_pre_hook(lambda *_: self._start())
        register_optimizer_step_post_hook(lambda *_: self._stop())
        torch.Tensor.backward = self._timed(torch.Tensor.backward)  # type: ignore[method-assign]
        _BaseDataLoaderIter.__next__ = self._timed(_BaseDataLoaderIter.__next__)  # type: ignore[method-assign]

    def _start(self) -> None:
        self._t0 = time.thread_time()

    def _stop(self) -> None:
        self.total += time.thread_time() - self._t0

    def _enter(self, *_: Any) -> None:
        if self._depth == 0:
            self._t0 = time.thread_time()
        self._depth += 1

    def _leave(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._stop()

    def _timed(self, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.thread_time() - t0

        return timed


METER = ComputeMeter()


class Window:
    """The timed steps: wall time, and CPU time of the training thread, of the main thread (the UI's, in `tui`)
    and of the whole process (with torch's OpenMP workers). CPU figures explain a slowdown; samples/s is wall."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.wall = self.thread_cpu = self.main_cpu = self.process_cpu = self.compute = math.nan
        self._t0: tuple[float, float, float, float, float] | None = None

    def start(self) -> None:
        self._t0 = (time.perf_counter(), time.thread_time(), main_thread_cpu(), time.process_time(), METER.total)

    def stop(self) -> None:
        assert self._t0 is not None
        w, t, m, p, c = self._t0
        self.wall, self.thread_cpu = time.perf_counter() - w, time.thread_time() - t
        self.main_cpu, self.process_cpu = main_thread_cpu() - m, time.process_time() - p
        self.compute = METER.total - c

    @property
    def done(self) -> bool:
        return not math.isnan(self.wall)

    @property
    def sps(self) -> float:
        return self.samples / self.wall


def _bare_setup(profile: RunProfile, args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, Any]:
    """Model, loader and optimizer as a user would write them, from the same profile as the engine's."""
    from torch.utils.data import DataLoader

    from tuitune.engine.data.datasets import resolve_num_workers
    from tuitune.engine.data.kinds import build_datasets
    from tuitune.engine.model.backbone import build_backbone

    torch.manual_seed(profile.train.seed)  # as the engine's seed_everything, before the model is built
    backbone = build_backbone(profile.model, args.num_classes, task="image")
    model = backbone.model.to(device)
    train = build_datasets(profile.data, task="image", data_config=backbone.data_config, seed=profile.train.seed).train
    workers = resolve_num_workers(profile.data.num_workers, device.type)
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(profile.train.seed),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=profile.train.lr, weight_decay=profile.train.weight_decay)
    return model, loader, opt


def run_bare(profile: RunProfile, args: argparse.Namespace) -> Window:
    """The hand-written loop: bf16 autocast, channels-last and cudnn.benchmark on CUDA (restored after, for
    --in-process)."""
    device = torch.device(args.device)
    model, loader, opt = _bare_setup(profile, args, device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # as the engine does
    model.to(memory_format=layout)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or cudnn_benchmark
    model.train()
    window, end = Window(args.steps * args.batch_size), args.warmup + args.steps
    try:
        for step, (x, y) in enumerate(loader, start=1):
            x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step == args.warmup:
                sync(device)
                window.start()
            elif step == end:
                sync(device)
                window.stop()
                return window
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    raise RuntimeError(f"bare: the loader ran out before step {end}")


class StepClock:
    """An emit that times the steps between the MetricsUpdated events closing steps `start` and `end`."""

    def __init__(self, start: int, end: int, samples: int) -> None:
        self.start, self.end = start, end
        self.window = Window(samples)
        self.final: Any = None
        self.metric_events = 0
        self.done = threading.Event()

    def __call__(self, event: Any) -> None:
        from tuitune.engine.events import MetricsUpdated, RunFailed, RunFinished

        if isinstance(event, MetricsUpdated):
            self.metric_events += 1
            if event.global_step == self.start:
                self.window.start()
            elif event.global_step == self.end:
                self.window.stop()
        elif isinstance(event, (RunFinished, RunFailed)):
            self.final = event
            self.done.set()

    def result(self, mode: str) -> Window:
        from tuitune.engine.events import RunFinished

        if not isinstance(self.final, RunFinished) or self.final.status != "finished":
            raise RuntimeError(f"{mode}: the run did not finish: {self.final}")
        if not self.window.done:
            raise RuntimeError(f"{mode}: no MetricsUpdated at global steps {self.start} and {self.end}")
        return self.window


def run_engine(profile: RunProfile, args: argparse.Namespace, run_dir: Path) -> Window:
    """The engine headless, as `tuitune train --headless` runs it (minus the console printer)."""
    from tuitune.engine.commands import Control
    from tuitune.engine.session import run_training

    clock = StepClock(args.warmup, args.warmup + args.steps, args.steps * args.batch_size)
    run_training(profile, run_dir, clock, Control(), interactive=False)
    return clock.result("engine")


def run_tui(profile: RunProfile, args: argparse.Namespace, run_dir: Path) -> tuple[Window, dict[str, int]]:
    """The engine under the real dashboard (Textual headless); also counts what the dashboard drew."""
    clock = StepClock(args.warmup, args.warmup + args.steps, args.steps * args.batch_size)
    seen = asyncio.run(_drive_tui(profile, run_dir, clock))
    return clock.result("tui"), seen


async def _drive_tui(profile: RunProfile, run_dir: Path, clock: StepClock) -> dict[str, int]:
    from tuitune.engine.session import run_training
    from tuitune.ui.app import TuituneApp
    from tuitune.ui.dashboard import DashboardScreen

    def runner(profile: RunProfile, run_dir: Path, emit: Callable, control: Any, **kw: Any) -> Any:
        def both(event: Any) -> None:
            clock(event)
            emit(event)  # the dashboard's own emit: post_message to the UI thread

        return run_training(profile, run_dir, both, control, **kw)

    redraws = [0]
    original = DashboardScreen._render_plots

    def counted(self: DashboardScreen) -> None:
        redraws[0] += 1
        original(self)

    DashboardScreen._render_plots = counted  # type: ignore[method-assign]
    try:
        app = TuituneApp("train", profile=profile, run_dir=run_dir, runner=runner)
        async with app.run_test(size=(120, 40)) as pilot:
            while not clock.done.is_set():
                await asyncio.sleep(0.05)
            await pilot.pause()
            shown = app.dashboard.state.global_step if app.dashboard is not None else -1
            app.exit()
    finally:
        DashboardScreen._render_plots = original  # type: ignore[method-assign]
    return {"plot_redraws": redraws[0], "metric_events": clock.metric_events, "dashboard_global_step": shown}


def run_attached(profile: RunProfile, args: argparse.Namespace, run_dir: Path) -> tuple[Window, dict[str, Any]]:
    """The engine as a run process runs it (`tuitune.remote`: control socket, process record, the server as an
    event sink) with the real dashboard attached from another process (`attach_viewer.py`). Training starts once
    the viewer has received the (empty) history and is live, so the timed steps all have a viewer."""
    import json
    import subprocess

    from tuitune.engine.commands import Control
    from tuitune.engine.record.runlog import tee
    from tuitune.engine.session import run_training
    from tuitune.remote.server import RunServer
    from tuitune.runs.process import write_process_record

    run_dir.mkdir(parents=True, exist_ok=True)
    control = Control()
    server = RunServer(run_dir, control)
    write_process_record(run_dir, server.path, "benchmark")
    viewer = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "attach_viewer.py"), str(run_dir), "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(c.live for c in list(server.clients)):
            if viewer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"attached: the viewer never attached: {viewer.communicate()[1][-1000:]}")
            time.sleep(0.02)
        clock = StepClock(args.warmup, args.warmup + args.steps, args.steps * args.batch_size)
        run_training(profile, run_dir, tee(server, clock), control, interactive=False)
        server.close()
        out, err = viewer.communicate(timeout=120)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    lines = [line for line in out.splitlines() if line.startswith("VIEWER ")]
    if not lines:
        raise RuntimeError(f"attached: no VIEWER line: {err[-1000:]}")
    seen = json.loads(lines[-1][len("VIEWER ") :])
    return clock.result("attached"), {
        "viewer_events": seen["events_seen"],
        "viewer_global_step": seen["global_step"],
        "viewer_cpu_s": seen["cpu_s"],
    }


def run_mode(mode: str, profile: RunProfile, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """One run of `mode`; the timed window's figures (seconds) and, for `tui`, what the dashboard drew."""
    seen: dict[str, int] = {}
    if mode == "bare":
        window = run_bare(profile, args)
    elif mode == "engine":
        window = run_engine(profile, args, run_dir)
    elif mode == "tui":
        window, seen = run_tui(profile, args, run_dir)
    elif mode == "attached":
        window, seen = run_attached(profile, args, run_dir)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {
        "sps": window.sps,
        "wall": window.wall,
        "thread_cpu": window.thread_cpu,
        "main_cpu": window.main_cpu,
        "process_cpu": window.process_cpu,
        "compute": window.compute,
        "torch_threads": torch.get_num_threads(),
        **seen,
    }
