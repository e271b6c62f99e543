"""The dashboard's state: what the screen shows about a run, as one frozen value.

`tuitune/ui/reducer.py` computes it from engine events; the widgets, the plots and the questions only read it. Kept
apart from the reduction so a reader (a plot, a widget) depends on the shape of the state, not on how events build
it. No Textual here, and no clock: every time shown is derived from event fields (`elapsed_s`, `epoch_s`, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tuitune.config.loop import recorded_checkpoint_metric
from tuitune.engine.events import (
    LayerInfo,
    LRFound,
    MemoryPlanned,
    RunFailed,
    RunFinished,
    SamplesGenerated,
    SetupProgressed,
    SystemSampled,
    UnfreezeSuggested,
)
from tuitune.ui.downsample import Downsampled

LIVE_STATUSES = ("starting", "running", "paused", "stopping")
MAX_LOG = 500


@dataclass(frozen=True)
class Marker:
    """A vertical line on the plots: where a phase changed or a command took effect."""

    x: float
    kind: str  # "phase", "command" or "lr" (an LR was set: the label names it)
    label: str


@dataclass(frozen=True)
class LogLine:
    kind: str  # "info", "phase", "command", "checkpoint", "warning", "error", "epoch"
    text: str
    seq: int = 0  # position in the whole log, so a widget can append only what it has not shown


@dataclass(frozen=True)
class DashboardState:
    status: str = "starting"  # starting, running, paused, stopping, finished, stopped_early, interrupted, failed
    run_name: str = ""
    run_dir: str = ""
    device: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    layers: tuple[LayerInfo, ...] = ()
    phases: tuple[tuple[str, ...], ...] = ()
    phase: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    start_epoch: int = 0
    start_step: int = 0  # this session's first global step and the run's elapsed time then (resume: non-zero)
    start_elapsed_s: float = 0.0
    train_size: int = 0
    val_size: int = 0
    classes: tuple[str, ...] = ()
    metric: str = "acc"  # the score every *_score series carries: "acc", "rmse" or "f1"
    higher_is_better: bool = True
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    samples_per_s: float = 0.0
    elapsed_s: float = 0.0
    gpu_mem_gb: float | None = None
    gpu_peak_gb: float | None = None
    world_size: int = 1  # ranks training together (RunStarted.world_size; 1 in logs from before it existed)
    loader_workers: int = 0  # each loader's workers (RunStarted.loader_workers): what data.num_workers resolved to
    gpu_max_gb: float | None = None  # several ranks on CUDA: the largest memory allocated on any rank
    step_split: dict[str, float] | None = None  # the newest MetricsUpdated.step_split: the header's step bar
    # The plot series, downsampled (tuitune/ui/downsample.py): a per-step series is indexed by `readings`, the
    # number of MetricsUpdated before its point (a condensed history's `LinesSkipped` counts the ones it passed).
    readings: int = 0
    train_loss: Downsampled = field(default_factory=Downsampled)
    train_score: Downsampled = field(default_factory=Downsampled)
    val_loss: Downsampled = field(default_factory=Downsampled)
    val_score: Downsampled = field(default_factory=Downsampled)
    best_val_score: float | None = None
    # The checkpoint metric's best (EpochEnded.is_best; the metric: `best_key`): what `best` checkpoints, early
    # stopping and the summary keep, which need not be the plotted score (a language model plots token accuracy,
    # keeps exact match).
    best_value: float | None = None
    train_extra: dict[str, Downsampled] = field(default_factory=dict)  # MetricsUpdated.extra series
    epoch_extra: dict[str, Downsampled] = field(default_factory=dict)  # EpochEnded.extra series
    extras: dict[str, float] = field(default_factory=dict)  # the latest EpochEnded.extra
    cache_active: bool = False
    cache_detail: str = ""
    lr_found: LRFound | None = None
    markers: tuple[Marker, ...] = ()
    log: tuple[LogLine, ...] = ()
    pending: tuple[str, ...] = ()  # commands sent, not yet confirmed by the engine
    checkpoints: dict[str, str] = field(default_factory=dict)
    suggestion: UnfreezeSuggested | None = None  # the plateau question, open until a phase change or its wait ends
    lr_question: LRFound | None = None  # a phase's LR sweep waiting for an answer, open until its ApplyLR applies
    finished: RunFinished | None = None
    failed: RunFailed | None = None
    trust_remote_code: bool = False
    setup: SetupProgressed | None = None  # a long setup step under way (download, scan, tokenize, cache build)
    domain_shift: dict[str, float | None] = field(default_factory=dict)  # the latest DomainShiftMeasured, by group
    memory: MemoryPlanned | None = None  # each phase's planned memory peak (before the first step)
    samples: SamplesGenerated | None = None  # a language model's latest samples
    system: SystemSampled | None = None  # the machine's newest sample (the system panel)
    events_seen: int = 0

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def num_phases(self) -> int:
        return len(self.phases)

    @property
    def best_key(self) -> str:
        """The checkpoint metric, as the run's profile names it (`val_score` when it does not)."""
        return recorded_checkpoint_metric(self.profile)

    @property
    def can_unfreeze(self) -> bool:
        return self.phase + 1 < self.num_phases


_FIELDS = frozenset(f.name for f in dataclasses.fields(DashboardState))


def evolve(state: DashboardState, **changes: Any) -> DashboardState:
    """`dataclasses.replace` for the state, without re-running `__init__` over its fifty fields: the fold's cost
    per event (a day's history is folded before the first frame)."""
    if not changes.keys() <= _FIELDS:
        raise TypeError(f"DashboardState has no field {sorted(changes.keys() - _FIELDS)}")
    new = object.__new__(DashboardState)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


def x_at(state: DashboardState, global_step: int) -> float:
    """Plot x coordinate: epochs completed, from the global step."""
    return global_step / max(state.steps_per_epoch, 1)


def better(state: DashboardState, value: float, than: float | None) -> bool:
    """Whether `value` beats `than` for this run's score (RMSE: lower is better)."""
    if than is None:
        return True
    return value > than if state.higher_is_better else value < than
