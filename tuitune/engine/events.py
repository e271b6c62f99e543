"""Events: what the engine tells the world, as typed, immutable facts.

The UI, the headless console, the run recorder and replay all consume the same stream. Every event serialises to
one JSON object with a `"type"` field (`to_json`) and back (`event_from_json`), so a recorded `events.jsonl` replays
into the same dashboard. Plain Python only: no torch here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from tuitune.config.loop import OLD_VALUES, metric_name

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table: a named layer group and its live state."""

    name: str
    params: int
    trainable: bool
    lr: float | None = None
    grad_norm: float | None = None
    drift: float | None = None  # ||w - w0|| / ||w0|| since the run started
    bn: str | None = None  # the group's BatchNorm layers: "train" or "eval" (running statistics frozen); None: none
    adapters: int | None = None  # LoRA parameters in the group (`params` counts them too); None: no LoRA


@dataclass(frozen=True)
class RunStarted:
    run_name: str
    run_dir: str
    device: str
    layers: tuple[LayerInfo, ...]
    phases: tuple[tuple[str, ...], ...]  # the layer groups trainable in each phase, in order
    phase: int  # the phase the run starts in (non-zero on resume)
    epochs: int
    steps_per_epoch: int
    train_size: int
    val_size: int
    classes: tuple[str, ...]
    profile: dict[str, Any]
    start_epoch: int = 0
    warnings: tuple[str, ...] = ()
    # The task's score, carried by every `*_score` field below: "acc" (classification), "rmse" (regression, lower is
    # better) or "f1" (multi-label micro-F1).
    metric: str = "acc"
    higher_is_better: bool = True
    # Where this session starts (non-zero on resume): its global step (mid-epoch too) and the run's elapsed time
    # then, so a rate (ETA) uses this session's steps over this session's time.
    start_step: int = 0
    start_elapsed_s: float = 0.0
    world_size: int = 1  # ranks training together (`--nproc`, torchrun); the events are rank 0's
    loader_workers: int = 0  # DataLoader workers of each of a rank's loaders (`data.num_workers`, -1 resolved)


@dataclass(frozen=True)
class MetricsUpdated:
    """Emitted every `train.log_every` steps: running train metrics since the previous one."""

    epoch: int
    step: int  # step within the epoch, 1-based
    global_step: int
    train_loss: float
    train_score: float
    lrs: tuple[float, ...]  # per trainable layer group, in `LayerInfo` order of those groups
    samples_per_s: float
    elapsed_s: float
    gpu_mem_gb: float | None = None
    gpu_peak_gb: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. task_loss and distill_loss when distilling
    gpu_max_gb: float | None = None  # several ranks on CUDA: the largest memory allocated on any rank
    # Where the window's steps spent their time, in ms per optimizer step: "data" (waiting for the batch and its
    # copy to the device), "compute" (forward, loss, backward), "optimizer" (clip, step, schedule, EMA), "rest" (the
    # loop's bookkeeping, the metric read, commands); on CUDA as the GPU's timeline saw it (`train/step_clock.py`).
    # None in older logs.
    step_split: dict[str, float] | None = None


@dataclass(frozen=True)
class EpochEnded:
    epoch: int  # 1-based
    global_step: int
    phase: int
    train_loss: float
    train_score: float
    val_loss: float
    val_score: float
    elapsed_s: float
    epoch_s: float
    samples_per_s: float
    is_best: bool
    # More per-epoch figures, when the profile asks for them: val_mae, val_map, ema_val_loss, ema_val_score,
    # source_acc (retention of the pretraining task), train_task_loss, train_distill_loss.
    extra: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        """A metric by its name (`train.checkpoint_metric`, a sweep's): a field, or one of the extras
        (`val_macro_f1`); NaN when this epoch has none."""
        field_value = getattr(self, metric, None)
        return float(self.extra.get(metric, math.nan) if field_value is None else field_value)


@dataclass(frozen=True)
class PhaseChanged:
    phase: int  # 0-based index into RunStarted.phases
    num_phases: int
    trainable: tuple[str, ...]  # the layer groups trainable from now on
    unfrozen: tuple[str, ...]  # the ones this change added
    epoch: int
    global_step: int
    reason: str  # "manual", "epochs", "plateau", "resume", "rollback" (back to the phase before)
    refrozen: tuple[str, ...] = ()  # a rollback: the groups frozen again
    restored_epoch: int | None = None  # the weights were put back to this epoch's (a phase's best)


@dataclass(frozen=True)
class LayersChanged:
    layers: tuple[LayerInfo, ...]
    global_step: int


@dataclass(frozen=True)
class LayersMeasured:
    """The layer table's columns that move at every log step, in `LayerInfo` order (None: not trainable): sent
    at a metric read instead of `LayersChanged` when nothing else in the rows changed, so a long run's
    events.jsonl grows by two numbers a group per read, not by whole rows (the rows follow a change)."""

    lrs: tuple[float | None, ...]
    grad_norms: tuple[float | None, ...]
    global_step: int


@dataclass(frozen=True)
class UnfreezeSuggested:
    """The plateau trigger fired in an interactive run: the UI asks the user instead of the engine acting."""

    metric: str
    epochs: int
    next_groups: tuple[str, ...]
    epoch: int
    waiting: bool = False  # the run is paused until the answer (UnfreezeNext and/or Resume) arrives


@dataclass(frozen=True)
class CommandApplied:
    command: str  # the command's class name, e.g. "UnfreezeNext"
    epoch: int
    global_step: int
    detail: str = ""
    value: float | None = None  # the number the command set, when it set one (ApplyLR: the head's LR)
    sender: str = ""  # who sent it: "dashboard", "socket client 3", "agent (socket client 3)"; "" when unknown


@dataclass(frozen=True)
class CommandRefused:
    """A command was refused and the run did not change: a bad value where it entered (socket, dashboard, command
    line), or, at the step boundary, a layer group the run does not have."""

    command: str  # the command's type as sent ("ScaleGroupLR"), or "command" when not even that was readable
    reason: str  # one line naming the key: "ScaleGroupLR: 'factor' must be a finite number, got NaN"
    epoch: int = 0
    global_step: int = 0
    sender: str = ""  # "socket client 3", "dashboard"; "" when unknown
    # True: refused by the engine at the step boundary, once queued (the answer its sender waits for); False:
    # refused where it entered, never queued (its sender was answered then)
    queued: bool = False


@dataclass(frozen=True)
class CheckpointSaved:
    path: str
    kind: str  # "best", "last" or "manual"
    epoch: int
    global_step: int


@dataclass(frozen=True)
class Warned:
    message: str
    epoch: int = 0
    global_step: int = 0
    kind: str = ""  # "nonfinite" for skipped steps / a refused save; "" otherwise


@dataclass(frozen=True)
class FeatureCacheChanged:
    """The frozen backbone's features are (no longer) cached: head-only epochs train on stored features."""

    active: bool
    detail: str
    epoch: int
    global_step: int


@dataclass(frozen=True)
class LRFound:
    """An LR-finder sweep ended (weights and optimizer restored). `suggestion` is what `ApplyLR` would set."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # smoothed
    suggestion: float
    steep: float
    valley: float
    current_lr: float  # the head's LR when the sweep started
    path: str  # the curve as CSV
    epoch: int
    global_step: int
    phase: int = -1  # strategy.phase_lr = "find": the phase (0-based) whose LR this sweep sets; -1: asked with `f`
    wait_s: float = 0.0  # how long a person has to answer (ApplyLR) before the suggestion applies; 0: applied at once

    @property
    def found(self) -> bool:
        """False when the sweep was too short to tell (it stopped before the LR grew tenfold: a loss near its floor
        "diverges" on one noisy batch): `suggestion` is then the current LR, `steep` and `valley` 0."""
        return not (self.valley == 0.0 and self.steep == 0.0)

    def no_suggestion_text(self) -> str:
        return (
            f"no suggestion: the sweep stopped after {len(self.lrs)} steps, before the LR grew tenfold (a loss "
            f"near its floor); the LR stays {self.current_lr:.3g}"
        )


@dataclass(frozen=True)
class DomainShiftMeasured:
    """How far the target data sits from what each layer group's pretrained weights expect (see
    `engine/train/domain_shift.py`): at the start, after every epoch and after `AdaptBatchNorm`."""

    groups: tuple[str, ...]  # every layer group, in `LayerInfo` order
    shifts: tuple[float | None, ...]  # symmetric KL per group (0: no shift); None where nothing was measured
    reference: str  # "bn": the BatchNorm running statistics; "source": the source data's output statistics
    epoch: int
    global_step: int
    reason: str = "epoch"  # "start", "epoch" or "AdaptBatchNorm"


@dataclass(frozen=True)
class PhaseMemory:
    """What one phase will hold at its peak, in bytes (see `engine/memory_plan.py`): the resident model
    (parameters, buffers, and copies of the weights: EMA, L2-SP's anchors, on the CPU drift's), the gradients and
    optimizer state of its trainable set, the activations a batch keeps for the backward (with the batch itself),
    and the feature cache held on the device. `peak` is not their sum: the gradients grow as the activations are
    freed, and the running op's working memory comes on top."""

    groups: tuple[str, ...]
    model: int
    grads: int
    optimizer: int
    activations: int
    cache: int
    peak: int


@dataclass(frozen=True)
class MemoryPlanned:
    """Before the first step: each phase's memory at `batch_size` against what the device has (`budget`: free GPU
    memory, `train.memory_gb`, or the available RAM, as `budget_source` says; 0 when unknown). `advice` is one
    line when a phase will not fit, else empty."""

    phases: tuple[PhaseMemory, ...]
    batch_size: int
    device: str  # "cuda" or "cpu"
    budget: int
    budget_source: str
    advice: str = ""
    checkpointing: bool = False  # train.gradient_checkpointing was on when the activations were measured
    note: str = ""  # how `data.batch_size = "auto"` chose `batch_size`; empty when it was given


@dataclass(frozen=True)
class SamplesGenerated:
    """A language model's greedy generations for fixed validation prompts, beside their references: at every
    evaluation (`[generate] samples`) and when asked (`GenerateSamples`, the `g` key)."""

    samples: tuple[dict[str, Any], ...]  # {"prompt", "reference", "output", "match"}: texts cut to SAMPLE_CHARS
    epoch: int
    global_step: int
    reason: str = "epoch"  # "epoch" (an evaluation) or "asked"


SAMPLE_CHARS = 400  # the most characters of a prompt, reference or output an event carries (records stay bounded)


@dataclass(frozen=True)
class GpuSample:
    """One GPU as NVML saw it at a `SystemSampled`."""

    rank: int  # the rank training on it
    index: int  # NVML's index of the device (every GPU of the machine counts, whatever CUDA_VISIBLE_DEVICES says)
    name: str
    util_pct: float  # the share of the last sample period in which a kernel ran
    mem_used_gb: float  # the device's memory in use, by every process on it
    mem_total_gb: float
    temp_c: float | None = None  # None where the device does not say
    power_w: float | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class ProcessSample:
    """One rank's process at a `SystemSampled`: its own CPU and memory, and its DataLoader workers' (its child
    processes but multiprocessing's and torch's helpers)."""

    rank: int
    cpu_pct: float  # 100 = one core busy since the previous sample
    ram_gb: float  # resident memory
    workers: int  # worker processes
    workers_cpu_pct: float
    workers_ram_gb: float


@dataclass(frozen=True)
class SystemSampled:
    """The machine under the run, sampled every few seconds on a thread of the run process (not the training
    thread; see `tuitune/engine/record/system.py`): each rank's GPU and each rank's process on this host. A record
    keeps only the newest in its condensed history: it is what the system panel shows."""

    gpus: tuple[GpuSample, ...]  # empty where NVML is missing or the run trains on no GPU
    processes: tuple[ProcessSample, ...]
    cpus: int  # cores the run process may use (its CPU affinity)
    ram_total_gb: float  # the machine's memory


@dataclass(frozen=True)
class ModelCompiled:
    """`train.compile`: torch.compile compiled graphs since the last report (sent at the metric reads and epoch
    ends that follow them). The first step compiles; so does the first step after each change of the trainable set
    (a phase, a group frozen or unfrozen by hand: the old set's graphs are dropped then, see `compile_watch`), and a
    guard that fails recompiles (a new input shape, such as an epoch's short last batch)."""

    compiles: int  # graphs compiled since the last report
    recompiles: int  # of those, recompiles of a graph whose guards failed
    seconds: float  # the time they took
    total: int  # graphs compiled in the run so far (this session)
    epoch: int
    global_step: int

    def text(self) -> str:
        """`torch.compile: 2 graphs in 14.2 s (1 recompile), 5 in this run`: the log's and the console's line."""
        graphs = f"{self.compiles} graph{'s' if self.compiles != 1 else ''}"
        again = f" ({self.recompiles} recompile{'s' if self.recompiles != 1 else ''})" if self.recompiles else ""
        return f"torch.compile: {graphs} in {self.seconds:.1f} s{again}, {self.total} in this run"


@dataclass(frozen=True)
class CompressionReported:
    """Post-training compression finished (emitted before `RunFinished`, which carries the same report)."""

    report: dict[str, Any]


@dataclass(frozen=True)
class RunFinished:
    status: str  # "finished", "stopped_early", "interrupted" or "preempted" (SIGTERM / SIGUSR1: requeue it)
    reason: str
    epochs: int
    global_step: int
    best: dict[str, Any]  # {"metric", "value", "epoch"}
    final: dict[str, Any]  # last val metrics
    test: dict[str, Any] | None
    phases: tuple[dict[str, Any], ...]  # {"index", "groups", "start_epoch", "epochs", "best_val_score", "time_s"}
    per_class_acc: dict[str, float]
    samples_per_s: float
    wall_s: float
    checkpoints: dict[str, str]
    compression: dict[str, Any] | None = None  # the post-training compression report, when the profile asks
    export_dir: str = ""  # where the best model was exported (safetensors + classes.json + profile.toml)
    # class targets: the last val epoch's {class: {precision, recall, f1, support}}; empty in older logs
    per_class_report: dict[str, Any] = field(default_factory=dict)
    # The last validation's confusion matrix (rows: true class, columns: predicted; class targets only) and, for
    # image data, its worst errors: {"true", "pred", "loss", "size", "rgb": hex of size x size x 3 uint8 pixels}.
    confusion: tuple[tuple[int, ...], ...] | None = None
    misclassified: tuple[dict[str, Any], ...] = ()
    samples: tuple[dict[str, Any], ...] = ()  # a language model's last `SamplesGenerated` samples


@dataclass(frozen=True)
class RunFailed:
    message: str  # one line
    run_dir: str
    log_path: str = ""  # the full traceback, when there is one
    bad_input: bool = False  # a user-fixable error (profile, data, model, checkpoint): exit code 2
    epoch: int = 0
    global_step: int = 0
    kind: str = ""  # "bad_input", "nonfinite", "oom", "write" (a record's write failed: a full disk) or "error"
    # (any other exception; traceback in log_path)


@dataclass(frozen=True)
class SetupProgressed:
    """A long step before or between epochs moved on: a download, a dataset scan, tokenization, a cache build.

    Emitted at most a few times a second per task (and once with `finished=True`), so a person never stares at a
    silent screen and the UI never has to parse a progress bar."""

    task: str  # "download", "scan", "tokenize", "cache"
    detail: str  # what is being worked on: a file name, a split, a cache name
    done: float
    total: float | None  # None when unknown
    unit: str  # "MB", "files", "texts", "batches"
    rate: float | None = None  # units per second
    finished: bool = False


Event = Union[  # noqa: UP007 (read at run time by typing.get_args, like commands.Command)
    RunStarted,
    MetricsUpdated,
    EpochEnded,
    PhaseChanged,
    LayersChanged,
    LayersMeasured,
    UnfreezeSuggested,
    CommandApplied,
    CommandRefused,
    CheckpointSaved,
    Warned,
    FeatureCacheChanged,
    LRFound,
    CompressionReported,
    RunFinished,
    RunFailed,
    SetupProgressed,
    DomainShiftMeasured,
    MemoryPlanned,
    SamplesGenerated,
    SystemSampled,
    ModelCompiled,
]
EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(Event)}


def to_dict(event: DataclassInstance) -> dict[str, Any]:
    """An event, or a command (they serialize alike), as {"type": its class name, its fields...}."""
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


def to_json(event: DataclassInstance) -> str:
    return json.dumps(to_dict(event), separators=(",", ":"))


_NESTED = (LayerInfo, PhaseMemory, GpuSample, ProcessSample)  # records inside events


def _revive(hint: Any, value: Any) -> Any:
    """Turn JSON data back into the annotated type (tuples, nested LayerInfo)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:  # `Optional[X]` and `X | None`
        for arm in typing.get_args(hint):
            if arm is not type(None):
                return _revive(arm, value)
    if origin is tuple:
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_revive(item, v) for v in value)
    if hint in _NESTED:
        return hint(**{k: _revive(v_hint, value[k]) for k, v_hint in _hints(hint).items() if k in value})
    return value


# Names from before the task's score was called a score (`*_acc` fields carried RMSE or F1 too): old events.jsonl
# files, summaries and checkpoints are read with them renamed.
RENAMED_KEYS = {old: metric_name(old) for old in (*OLD_VALUES, "ema_val_acc")} | {"best_val_acc": "best_val_score"}


def renamed_keys(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with its old metric keys (and an old metric name as a "metric" value) under their new names."""
    out = {RENAMED_KEYS.get(k, k): v for k, v in d.items()}
    if "metric" in out:
        out["metric"] = metric_name(out["metric"])
    return out


def upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """An event recorded under the old names, renamed: its fields, `extra`, and RunFinished's `best`, `final`,
    `test` ("acc" -> "score") and per-phase rows."""
    data = renamed_keys(data)
    for key in ("extra", "final", "best"):
        if isinstance(data.get(key), dict):
            data[key] = renamed_keys(data[key])
    if isinstance(data.get("test"), dict) and "acc" in data["test"]:
        data["test"] = {("score" if k == "acc" else k): v for k, v in data["test"].items()}
    if data.get("type") == "RunFinished" and isinstance(data.get("phases"), list):
        data["phases"] = [renamed_keys(p) if isinstance(p, dict) else p for p in data["phases"]]
    return data


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # slow (it evaluates every annotation): once per type


def event_from_dict(data: dict[str, Any]) -> Event:
    data = upgraded(data)
    cls = EVENT_TYPES[data.pop("type")]
    hints = _hints(cls)
    return cls(**{k: _revive(hints[k], v) for k, v in data.items() if k in hints})


def event_from_json(line: str) -> Event:
    return event_from_dict(json.loads(line))
