"""A scripted engine and fixed event sequences: the dashboard's input without torch, deterministic to the byte."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tuitune.engine.commands import Command, Control, Pause, Resume, SaveCheckpoint, StopEarly, UnfreezeNext
from tuitune.engine.events import (CheckpointSaved, CommandApplied, EpochEnded, Event, LayerInfo, LayersChanged,
                                   MetricsUpdated, PhaseChanged, RunFailed, RunFinished, RunStarted,
                                   UnfreezeSuggested)

GROUPS = (("stem", 9_536), ("layer1", 147_968), ("layer2", 525_568), ("layer3", 2_099_712),
          ("layer4", 8_393_728), ("head", 5_130))
ORDER = ("head", "layer4", "layer3", "layer2", "layer1", "stem")  # progressive: from the head down
PHASES = tuple(ORDER[: i + 1] for i in range(len(ORDER)))
SPE = 20  # steps per epoch
EPOCHS = 6
LR = 3e-3
RUN = "demo-20250101-120000"
RUN_DIR = f"runs/{RUN}"


def layers(phase: int, step: int = 0) -> tuple[LayerInfo, ...]:
    trainable = set(PHASES[phase])
    out = []
    for name, params in GROUPS:
        if name in trainable:
            depth = ORDER.index(name)
            out.append(LayerInfo(name, params, True, lr=LR * 0.385 ** depth, grad_norm=0.8 / (depth + 1),
                                 drift=0.001 * step / (depth + 1)))
        else:
            out.append(LayerInfo(name, params, False))
    return tuple(out)


def run_started(profile: dict[str, Any] | None = None) -> RunStarted:
    return RunStarted(run_name=RUN, run_dir=RUN_DIR, device="cpu", layers=layers(0), phases=PHASES, phase=0,
                      epochs=EPOCHS, steps_per_epoch=SPE, train_size=1280, val_size=320,
                      classes=tuple(str(i) for i in range(10)), profile=profile or {"model": {"name": "resnet18"}})


def _loss(g: int) -> float:
    return 2.3 * math.exp(-g / 35) + 0.25 + 0.08 * math.sin(g * 1.7)


def epoch_events(epoch: int, phase: int, steps: int = SPE, with_end: bool = True) -> list[Event]:
    """Metrics every 2 steps of `epoch` (1-based), then its `EpochEnded`."""
    events: list[Event] = []
    n_lrs = len(PHASES[phase])
    for step in range(2, steps + 1, 2):
        g = (epoch - 1) * SPE + step
        loss = _loss(g)
        events.append(MetricsUpdated(epoch=epoch, step=step, global_step=g, train_loss=loss,
                                     train_acc=min(0.99, 1.05 - loss / 2.4), lrs=(LR,) * n_lrs,
                                     samples_per_s=812.0, elapsed_s=g * 0.05))
    if with_end:
        g = epoch * SPE
        events.append(EpochEnded(epoch=epoch, global_step=g, phase=phase, train_loss=_loss(g),
                                 train_acc=1.05 - _loss(g) / 2.4, val_loss=_loss(g) + 0.1,
                                 val_acc=0.95 - _loss(g) / 2.6, elapsed_s=g * 0.05, epoch_s=1.0,
                                 samples_per_s=812.0, is_best=True))
    return events


def unfreeze_events(phase: int, epoch: int, global_step: int) -> list[Event]:
    return [CommandApplied("UnfreezeNext", epoch, global_step, detail=f"phase {phase + 1}"),
            PhaseChanged(phase=phase, num_phases=len(PHASES), trainable=PHASES[phase],
                         unfrozen=(ORDER[phase],), epoch=epoch, global_step=global_step, reason="manual"),
            LayersChanged(layers=layers(phase, global_step), global_step=global_step)]


def mid_run_events() -> list[Event]:
    """Two epochs on the head, one manual unfreeze of layer4, half of epoch 3."""
    return [run_started(), *epoch_events(1, 0), *epoch_events(2, 0),
            CheckpointSaved(f"{RUN_DIR}/best.pt", "best", 2, 2 * SPE),
            *unfreeze_events(1, 2, 2 * SPE), *epoch_events(3, 1, steps=10, with_end=False)]


def plateau_events() -> list[Event]:
    return [run_started(), *epoch_events(1, 0), *epoch_events(2, 0), *epoch_events(3, 0),
            UnfreezeSuggested(metric="val_loss", epochs=2, next_groups=("layer4",), epoch=3)]


def finished(status: str = "stopped_early", reason: str = "stopped from the dashboard (s)") -> RunFinished:
    return RunFinished(
        status=status, reason=reason, epochs=3, global_step=3 * SPE,
        best={"metric": "val_acc", "value": 0.9125, "epoch": 3},
        final={"val_loss": 0.3412, "val_acc": 0.9125}, test={"test_loss": 0.3601, "test_acc": 0.9031},
        phases=({"index": 0, "groups": ["head"], "start_epoch": 0, "epochs": 2, "best_val_acc": 0.8412,
                 "time_s": 61.0},
                {"index": 1, "groups": ["head", "layer4"], "start_epoch": 2, "epochs": 1, "best_val_acc": 0.9125,
                 "time_s": 42.5}),
        per_class_acc={str(i): 0.97 - 0.045 * i for i in range(10)}, samples_per_s=812.0, wall_s=103.5,
        checkpoints={"best": f"{RUN_DIR}/best.pt", "last": f"{RUN_DIR}/last.pt"})


def finished_events() -> list[Event]:
    return [*mid_run_events(), *epoch_events(3, 1, steps=SPE)[5:], CommandApplied("StopEarly", 3, 3 * SPE),
            CheckpointSaved(f"{RUN_DIR}/last.pt", "last", 3, 3 * SPE), finished()]


def failed_events() -> list[Event]:
    return [run_started(), *epoch_events(1, 0, steps=8, with_end=False),
            RunFailed(message="CUDA out of memory: tried to allocate 2.00 GiB after unfreezing layer3",
                      run_dir=RUN_DIR, log_path=f"{RUN_DIR}/error.log", epoch=1, global_step=8, kind="oom")]


class ScriptedEngine:
    """A fake `run_training`: emits `prefix`, then answers commands like the real engine would.

    With `gate` clear, commands are received (recorded) but not acknowledged, so a test can look at the screen
    between the key press and the confirming event.
    """

    def __init__(self, prefix: list[Event] | None = None, auto: bool = True) -> None:
        self.prefix = prefix if prefix is not None else mid_run_events()
        self.received: list[Command] = []
        self.gate = threading.Event()
        if auto:
            self.gate.set()
        self.started = threading.Event()
        self.ended = threading.Event()
        self.phase = next((e.phase for e in reversed(self.prefix) if isinstance(e, PhaseChanged)), 0)

    def __call__(self, profile: Any, run_dir: Path, emit: Callable[[Event], None], control: Control, *,
                 interactive: bool = True, resume: Path | None = None) -> Event:
        try:
            return self._run(emit, control)
        finally:
            self.ended.set()

    def _run(self, emit: Callable[[Event], None], control: Control) -> Event:
        for event in self.prefix:
            emit(event)
        self.started.set()
        todo: list[Command] = []
        while not control.stop_requested:
            new = control.drain()
            self.received.extend(new)
            todo.extend(new)
            if self.gate.is_set():
                for command in todo:
                    end = self._answer(command, emit)
                    if end is not None:
                        return end
                todo.clear()
            time.sleep(0.005)
        end = finished("interrupted", "quit from the dashboard")
        emit(end)
        return end

    def _answer(self, command: Command, emit: Callable[[Event], None]) -> Event | None:
        g = 2 * SPE + 10
        if isinstance(command, UnfreezeNext):
            self.phase += 1
            for event in unfreeze_events(self.phase, 3, g):
                emit(event)
        elif isinstance(command, (Pause, Resume)):
            emit(CommandApplied(type(command).__name__, 3, g))
        elif isinstance(command, SaveCheckpoint):
            emit(CheckpointSaved(f"{RUN_DIR}/manual-{g}.pt", "manual", 3, g))
            emit(CommandApplied("SaveCheckpoint", 3, g))
        elif isinstance(command, StopEarly):
            emit(CommandApplied("StopEarly", 3, g))
            end = finished()
            emit(end)
            return end
        return None
