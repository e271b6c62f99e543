"""A scripted engine and fixed event sequences: the dashboard's input without torch, deterministic to the byte."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune.engine.commands import (
    ApplyLR,
    Command,
    Control,
    FindLR,
    Pause,
    Resume,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import (
    CheckpointSaved,
    CommandApplied,
    CompressionReported,
    DomainShiftMeasured,
    EpochEnded,
    Event,
    FeatureCacheChanged,
    LayerInfo,
    LayersChanged,
    LRFound,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    UnfreezeSuggested,
)

GROUPS = (
    ("stem", 9_536),
    ("layer1", 147_968),
    ("layer2", 525_568),
    ("layer3", 2_099_712),
    ("layer4", 8_393_728),
    ("head", 5_130),
)
ORDER = ("head", "layer4", "layer3", "layer2", "layer1", "stem")  # progressive: from the head down
PHASES = tuple(ORDER[: i + 1] for i in range(len(ORDER)))
SPE = 20  # steps per epoch
EPOCHS = 6
LR = 3e-3
RUN = "demo-20250101-120000"
RUN_DIR = f"runs/{RUN}"


def layers(phase: int, step: int = 0, lr: float = LR) -> tuple[LayerInfo, ...]:
    trainable = set(PHASES[phase])
    out = []
    for name, params in GROUPS:
        if name in trainable:
            depth = ORDER.index(name)
            out.append(
                LayerInfo(
                    name,
                    params,
                    True,
                    lr=lr * 0.385**depth,
                    grad_norm=0.8 / (depth + 1),
                    drift=0.001 * step / (depth + 1),
                    bn=None if name == "head" else "train",
                )
            )
        else:
            out.append(LayerInfo(name, params, False, bn=None if name == "head" else "eval"))
    return tuple(out)


def steer_events(
    rows: tuple[LayerInfo, ...], command: SetGroupTrainable | ScaleGroupLR, epoch: int, global_step: int
) -> list[Event]:
    """What the engine answers a group command with: `CommandApplied`, then the rows as they now are."""
    out = []
    for row in rows:
        if isinstance(command, SetGroupTrainable) and row.name == command.group:
            depth = ORDER.index(row.name)
            row = dataclasses.replace(
                row,
                trainable=command.trainable,
                bn="train" if command.trainable else "eval",
                lr=LR * 0.385**depth if command.trainable else None,
                grad_norm=None,
            )
        elif isinstance(command, ScaleGroupLR) and row.lr is not None and command.group in (None, row.name):
            row = dataclasses.replace(row, lr=row.lr * command.factor)
        out.append(row)
    if isinstance(command, SetGroupTrainable):
        detail = f"{command.group} {'trainable' if command.trainable else 'frozen (optimizer state kept)'}"
    else:
        detail = f"{command.group or 'all groups'} x{command.factor:.3g}"
    return [
        LayersChanged(layers=tuple(out), global_step=global_step),
        CommandApplied(type(command).__name__, epoch, global_step, detail=detail),
    ]


def steered_events() -> list[Event]:
    """The mid run, then layer2 unfrozen out of turn and its LR raised once (x1.5)."""
    events = mid_run_events()
    g = 2 * SPE + 10
    rows = layers(1, g)
    for command in (SetGroupTrainable("layer2", True), ScaleGroupLR("layer2", 1.5)):
        more = steer_events(rows, command, 3, g)
        rows = more[0].layers  # type: ignore[union-attr]
        events += more
    return events


def run_started(profile: dict[str, Any] | None = None, metric: str = "acc") -> RunStarted:
    classes = () if metric == "rmse" else tuple(str(i) for i in range(10))
    return RunStarted(
        run_name=RUN,
        run_dir=RUN_DIR,
        device="cpu",
        layers=layers(0),
        phases=PHASES,
        phase=0,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        train_size=1280,
        val_size=320,
        classes=classes,
        profile=profile or {"model": {"name": "resnet18"}},
        metric=metric,
        higher_is_better=metric != "rmse",
    )


def _loss(g: int) -> float:
    return 2.3 * math.exp(-g / 35) + 0.25 + 0.08 * math.sin(g * 1.7)


def _acc(loss: float) -> float:
    return min(0.99, 1.05 - loss / 2.4)


def _rmse(loss: float) -> float:
    """A regression run's score: RMSE falls with the loss (lower is better)."""
    return math.sqrt(loss) * 0.8


def epoch_events(
    epoch: int, phase: int, steps: int = SPE, with_end: bool = True, metric: str = "acc", extras: bool = False
) -> list[Event]:
    """Metrics every 2 steps of `epoch` (1-based), then its `EpochEnded`. `extras`: a distilled run with an EMA
    model and a source-task check (the `extra` dicts filled)."""
    score = _rmse if metric == "rmse" else _acc
    events: list[Event] = []
    lrs = tuple(row.lr for row in layers(phase) if row.trainable)  # as the phase's LayersChanged rows say
    for step in range(2, steps + 1, 2):
        g = (epoch - 1) * SPE + step
        loss = _loss(g)
        extra = {"task_loss": loss * 0.7, "distill_loss": loss * 0.3 + 0.05} if extras else {}
        events.append(
            MetricsUpdated(
                epoch=epoch,
                step=step,
                global_step=g,
                train_loss=loss,
                train_score=score(loss),
                lrs=lrs,
                samples_per_s=812.0,
                elapsed_s=g * 0.05,
                extra=extra,
            )
        )
    if with_end:
        g = epoch * SPE
        val = _loss(g) + 0.1
        val_score = _rmse(val) if metric == "rmse" else 0.95 - _loss(g) / 2.6
        extra = {"val_mae": _rmse(val) * 0.8} if metric == "rmse" else {}
        if extras:
            extra = {"ema_val_loss": val - 0.05, "ema_val_score": val_score + 0.03, "source_acc": 0.80 - 0.04 * epoch}
        events.append(
            EpochEnded(
                epoch=epoch,
                global_step=g,
                phase=phase,
                train_loss=_loss(g),
                train_score=score(_loss(g)) if metric == "rmse" else 1.05 - _loss(g) / 2.4,
                val_loss=val,
                val_score=val_score,
                elapsed_s=g * 0.05,
                epoch_s=1.0,
                samples_per_s=812.0,
                is_best=True,
                extra=extra,
            )
        )
    return events


def unfreeze_events(phase: int, epoch: int, global_step: int) -> list[Event]:
    """The engine's answer to `UnfreezeNext`, in its order: the change, the new layer table, then the confirmation
    (tests/ui/test_scripted_order.py holds this to the real engine's order)."""
    return [
        PhaseChanged(
            phase=phase,
            num_phases=len(PHASES),
            trainable=PHASES[phase],
            unfrozen=(ORDER[phase],),
            epoch=epoch,
            global_step=global_step,
            reason="manual",
        ),
        LayersChanged(layers=layers(phase, global_step), global_step=global_step),
        CommandApplied("UnfreezeNext", epoch, global_step),
    ]


def rollback_events(phase: int, epoch: int, global_step: int) -> list[Event]:
    """The engine's answer to `RollBackPhase` from phase `phase + 1`, in its order (as `unfreeze_events`)."""
    detail = (
        f"phase {phase + 2} rolled back: the weights of epoch 2 (phase {phase + 1}'s best); froze {ORDER[phase + 1]}"
    )
    return [
        PhaseChanged(
            phase=phase,
            num_phases=len(PHASES),
            trainable=PHASES[phase],
            unfrozen=(),
            epoch=epoch,
            global_step=global_step,
            reason="rollback",
            refrozen=(ORDER[phase + 1],),
            restored_epoch=2,
        ),
        LayersChanged(layers=layers(phase, global_step), global_step=global_step),
        CommandApplied("RollBackPhase", epoch, global_step, detail=detail),
    ]


def mid_run_events() -> list[Event]:
    """Two epochs on the head, one manual unfreeze of layer4, half of epoch 3."""
    return [
        run_started(),
        *epoch_events(1, 0),
        *epoch_events(2, 0),
        CheckpointSaved(f"{RUN_DIR}/best.pt", "best", 2, 2 * SPE),
        *unfreeze_events(1, 2, 2 * SPE),
        *epoch_events(3, 1, steps=10, with_end=False),
    ]


def regression_events() -> list[Event]:
    """A regression run (RMSE, lower is better) training its head on cached backbone features."""
    return [
        run_started(metric="rmse"),
        FeatureCacheChanged(True, "head-only phase: 1,280 train features cached (2.6 MB)", 0, 0),
        *epoch_events(1, 0, metric="rmse"),
        *epoch_events(2, 0, metric="rmse"),
        *epoch_events(3, 0, steps=10, with_end=False, metric="rmse"),
    ]


def extras_events() -> list[Event]:
    """A distilled run with an EMA model and a source-task check: every extra series the plots know."""
    return [
        run_started(),
        *epoch_events(1, 0, extras=True),
        *epoch_events(2, 0, extras=True),
        *unfreeze_events(1, 2, 2 * SPE),
        *epoch_events(3, 1, extras=True),
    ]


def lr_found(epoch: int = 3, global_step: int = 2 * SPE + 10) -> LRFound:
    """A 100-step sweep from 1e-6 to 1: flat, a dip around 3e-3, then divergence."""
    lrs = tuple(10 ** (-6 + 6 * i / 99) for i in range(100))
    losses = tuple(
        2.3 - 1.4 / (1 + math.exp(-3 * (math.log10(lr) + 3.5))) + 0.25 * math.exp(3.2 * (math.log10(lr) + 1.6))
        for lr in lrs
    )
    return LRFound(
        lrs=lrs,
        losses=losses,
        suggestion=3.2e-3,
        steep=1.1e-2,
        valley=3.2e-3,
        current_lr=LR,
        path=f"{RUN_DIR}/lr_find.csv",
        epoch=epoch,
        global_step=global_step,
    )


def phase_lr_found(wait_s: float = 10.0) -> LRFound:
    """`strategy.phase_lr = "find"`: the sweep at the start of phase 2 (after `mid_run_events`' unfreeze), waiting
    `wait_s` for a person's answer."""
    return dataclasses.replace(
        lr_found(epoch=2, global_step=2 * SPE), path=f"{RUN_DIR}/lr_find_phase2.csv", phase=1, wait_s=wait_s
    )


def phase_lr_events() -> list[Event]:
    """`strategy.phase_lr = "find"`: the head's LR found at the run's start, then layer4 unfrozen by the epochs
    trigger with its phase's LR found and applied, and half of epoch 3."""
    head = dataclasses.replace(lr_found(epoch=0, global_step=0), phase=0, path=f"{RUN_DIR}/lr_find_phase1.csv")
    return [
        run_started(),
        head,
        CommandApplied(
            "ApplyLR",
            0,
            0,
            value=3.2e-3,
            detail="phase 1 head LR 0.0032, the finder's suggestion; deeper groups keep their ratios",
        ),
        *epoch_events(1, 0),
        *epoch_events(2, 0),
        PhaseChanged(
            phase=1,
            num_phases=len(PHASES),
            trainable=PHASES[1],
            unfrozen=("layer4",),
            epoch=2,
            global_step=2 * SPE,
            reason="epochs",
        ),
        phase_lr_found(wait_s=0.0),
        CommandApplied(
            "ApplyLR",
            2,
            2 * SPE,
            value=1.1e-3,
            detail="phase 2 head LR 0.0011, chosen in the dashboard (suggested 0.0032); deeper groups "
            "keep their ratios",
        ),
        LayersChanged(layers=layers(1, 2 * SPE, lr=1.1e-3), global_step=2 * SPE),
        *epoch_events(3, 1, steps=10, with_end=False),
    ]


def plateau_events(waiting: bool = False) -> list[Event]:
    """Three epochs, then the plateau trigger's question (`waiting`: the run holds until the answer, as the demo's
    `strategy.plateau_wait`)."""
    return [
        run_started(),
        *epoch_events(1, 0),
        *epoch_events(2, 0),
        *epoch_events(3, 0),
        UnfreezeSuggested(metric="val_loss", epochs=2, next_groups=("layer4",), epoch=3, waiting=waiting),
    ]


def finished(status: str = "stopped_early", reason: str = "stopped from the dashboard (s)") -> RunFinished:
    return RunFinished(
        status=status,
        reason=reason,
        epochs=3,
        global_step=3 * SPE,
        best={"metric": "val_score", "value": 0.9125, "epoch": 3},
        final={"val_loss": 0.3412, "val_score": 0.9125},
        test={"test_loss": 0.3601, "test_acc": 0.9031},
        phases=(
            {"index": 0, "groups": ["head"], "start_epoch": 0, "epochs": 2, "best_val_score": 0.8412, "time_s": 61.0},
            {
                "index": 1,
                "groups": ["head", "layer4"],
                "start_epoch": 2,
                "epochs": 1,
                "best_val_score": 0.9125,
                "time_s": 42.5,
            },
        ),
        per_class_acc={str(i): 0.97 - 0.045 * i for i in range(10)},
        samples_per_s=812.0,
        wall_s=103.5,
        checkpoints={"best": f"{RUN_DIR}/best.pt", "last": f"{RUN_DIR}/last.pt"},
    )


def compression_report() -> dict[str, Any]:
    """The shape `tuitune.engine.tools.compress.compress_model` reports."""

    def row(step: str, nonzero: float, file_b: int, zlib_b: int, acc: float, ms: float) -> dict[str, Any]:
        return {
            "step": step,
            "params": 11_181_642,
            "nonzero": nonzero,
            "nonzero_prunable": nonzero - 0.002,
            "file_bytes": file_b,
            "zlib_bytes": zlib_b,
            "val_acc": acc,
            "latency_ms": ms,
            "threads": 1,
            "batch_size": 64,
        }

    return {
        "checkpoint": "best",
        "sparsity": 0.5,
        "quantize": True,
        "fine_tune_epochs": 1,
        "steps": [
            row("original", 1.0, 44_780_000, 41_300_000, 0.9125, 38.41),
            row("pruned 50%", 0.502, 44_780_000, 24_100_000, 0.8731, 38.02),
            row("pruned + fine-tuned", 0.502, 44_780_000, 24_050_000, 0.9062, 38.10),
            row("int8 (Linear)", 0.502, 44_770_000, 24_040_000, 0.9050, 37.88),
        ],
        "notes": [
            "int8 dynamic quantization converts nn.Linear only: 1 Linear layer(s) holding 5,120 of "
            "11,181,642 parameters (0.0%); convolutions, norms and embeddings stay fp32. CPU only."
        ],
        "pruned_tensors": 21,
    }


def compressed_finished_events() -> list[Event]:
    """A run that finished, was compressed and exported."""
    end = dataclasses.replace(
        finished("finished", "all 3 epochs done"), compression=compression_report(), export_dir=f"{RUN_DIR}/export"
    )
    return [
        *mid_run_events(),
        *epoch_events(3, 1, steps=SPE)[5:],
        CheckpointSaved(f"{RUN_DIR}/last.pt", "last", 3, 3 * SPE),
        CompressionReported(compression_report()),
        end,
    ]


def finished_events() -> list[Event]:
    return [
        *mid_run_events(),
        *epoch_events(3, 1, steps=SPE)[5:],
        CommandApplied("StopEarly", 3, 3 * SPE),
        CheckpointSaved(f"{RUN_DIR}/last.pt", "last", 3, 3 * SPE),
        finished(),
    ]


def imbalanced_finished_events() -> list[Event]:
    """A 2-class run on imbalanced data (437 ham, 63 spam in val) chosen by macro-F1: the summary's per-class table."""
    report = {
        "ham": {"precision": 0.9775, "recall": 0.9954, "f1": 0.9864, "support": 437},
        "spam": {"precision": 0.9623, "recall": 0.8095, "f1": 0.8793, "support": 63},
    }
    end = dataclasses.replace(
        finished("finished", "completed 3 epochs"),
        best={"metric": "val_macro_f1", "value": 0.9329, "epoch": 3},
        final={"val_loss": 0.0712, "val_score": 0.9740, "val_macro_f1": 0.9329},
        test={"loss": 0.0801, "score": 0.9700, "macro_f1": 0.9254},
        per_class_acc={c: r["recall"] for c, r in report.items()},
        per_class_report=report,
    )
    return [dataclasses.replace(run_started(), classes=("ham", "spam")), *epoch_events(1, 0), end]


def failed_events() -> list[Event]:
    return [
        run_started(),
        *epoch_events(1, 0, steps=8, with_end=False),
        RunFailed(
            message="CUDA out of memory: tried to allocate 2.00 GiB after unfreezing layer3",
            run_dir=RUN_DIR,
            log_path=f"{RUN_DIR}/error.log",
            epoch=1,
            global_step=8,
            kind="oom",
        ),
    ]


class ScriptedEngine:
    """A fake `run_training`: emits `prefix`, then answers commands like the real engine would, in its order.

    With `gate` clear, commands are received (recorded) but not acknowledged, so a test can look at the screen
    between the key press and the confirming event.
    """

    def __init__(self, prefix: list[Event] | None = None, auto: bool = True, samples: Any = None) -> None:
        self.prefix = prefix if prefix is not None else mid_run_events()
        self.samples = samples  # what `GenerateSamples` answers (a language model's SamplesGenerated), if anything
        self.received: list[Command] = []
        self.gate = threading.Event()
        if auto:
            self.gate.set()
        self.started = threading.Event()
        self.ended = threading.Event()
        self.phase = next((e.phase for e in reversed(self.prefix) if isinstance(e, PhaseChanged)), 0)
        self.rows = next((e.layers for e in reversed(self.prefix) if isinstance(e, (LayersChanged, RunStarted))), ())

    def __call__(
        self,
        profile: Any,
        run_dir: Path,
        emit: Callable[[Event], None],
        control: Control,
        *,
        interactive: bool = True,
        resume: Path | None = None,
    ) -> Event:
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
        status, reason = control.stop_status
        end = finished(status, reason) if status == "preempted" else finished("interrupted", "quit from the dashboard")
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
        elif isinstance(command, FindLR):
            emit(lr_found(3, g))
            emit(CommandApplied("FindLR", 3, g, detail=f"{command.steps} steps, weights restored"))
        elif isinstance(command, ApplyLR):
            emit(LayersChanged(layers=layers(self.phase, g, lr=command.lr), global_step=g))
            emit(CommandApplied("ApplyLR", 3, g, detail=f"head lr {command.lr:.1e}", value=command.lr))
        elif isinstance(command, (SetGroupTrainable, ScaleGroupLR)):
            events = steer_events(self.rows, command, 3, g)
            self.rows = events[0].layers  # type: ignore[union-attr]
            for event in events:
                emit(event)
        elif type(command).__name__ == "AdaptBatchNorm":
            emit(shift(3, g, "AdaptBatchNorm", 0.12))
            emit(
                CommandApplied(
                    "AdaptBatchNorm",
                    3,
                    g,
                    detail="running statistics of 20 BatchNorm layers re-estimated on 20 target batches",
                )
            )
        elif type(command).__name__ == "GenerateSamples" and self.samples is not None:
            emit(dataclasses.replace(self.samples, epoch=3, global_step=g, reason="asked"))
            emit(CommandApplied("GenerateSamples", 3, g, detail="3 samples, 2 matching their reference"))
        elif type(command).__name__ == "RollBackPhase" and self.phase > 0:
            self.phase -= 1
            for event in rollback_events(self.phase, 3, g):
                emit(event)
        elif isinstance(command, StopEarly):
            emit(CommandApplied("StopEarly", 3, g))
            emit(CheckpointSaved(f"{RUN_DIR}/last.pt", "last", 3, g))
            end = finished()
            emit(end)
            return end
        return None


CLOTHING = ("dress", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "t-shirt")


def clothing_confusion() -> tuple[tuple[int, ...], ...]:
    """40 val photos a class; shirts and t-shirts, longsleeves and outwear, shorts and pants mixed up."""
    mixups = {(4, 7): 9, (7, 4): 6, (1, 2): 7, (2, 1): 4, (6, 3): 5, (3, 6): 2, (0, 4): 3, (1, 4): 2, (5, 3): 1}
    rows = []
    for r in range(len(CLOTHING)):
        row = [mixups.get((r, c), 0) for c in range(len(CLOTHING))]
        row[r] = 40 - sum(row)
        rows.append(tuple(row))
    return tuple(rows)


def views_finished_events() -> list[Event]:
    """A finished image run with the confusion matrix and worst errors (16x16 thumbnails of real clothing photos
    from /work/shared/data/clothing/val, CC0, in fixtures/misclassified.json)."""
    import json

    conf = clothing_confusion()
    worst = json.loads((Path(__file__).parent / "fixtures" / "misclassified.json").read_text())
    end = dataclasses.replace(
        finished(),
        per_class_acc={c: conf[i][i] / 40 for i, c in enumerate(CLOTHING)},
        confusion=conf,
        misclassified=tuple(worst),
    )
    events = finished_events()
    return [dataclasses.replace(events[0], classes=CLOTHING), *events[1:-1], end]


def shift(epoch: int, global_step: int, reason: str, scale: float = 1.0) -> DomainShiftMeasured:
    """BatchNorm shift per group: the stem and layer1 see data far from their pretraining statistics."""
    base = {"stem": 2.41, "layer1": 1.37, "layer2": 0.62, "layer3": 0.21, "layer4": 0.08}
    return DomainShiftMeasured(
        groups=tuple(g for g, _ in GROUPS),
        shifts=tuple(base[g] * scale if g in base else None for g, _ in GROUPS),
        reference="bn",
        epoch=epoch,
        global_step=global_step,
        reason=reason,
    )


def shift_events() -> list[Event]:
    """The mid run with the domain shift measured at the start, after each epoch, and after AdaBN (`b`)."""
    events = mid_run_events()
    out: list[Event] = [events[0], shift(0, 0, "start")]
    for e in events[1:]:
        out.append(e)
        if isinstance(e, EpochEnded):
            out.append(shift(e.epoch, e.global_step, "epoch", 1.0 - 0.05 * e.epoch))
    g = 2 * SPE + 10
    return [
        *out,
        shift(2, g, "AdaptBatchNorm", 0.12),
        CommandApplied(
            "AdaptBatchNorm",
            2,
            g,
            detail="running statistics of 20 BatchNorm layers re-estimated on 20 target batches; mean shift now 0.114",
        ),
    ]
