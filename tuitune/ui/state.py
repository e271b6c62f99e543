"""The dashboard state: a pure fold over engine events.

`reduce(state, event) -> state` is the only way the dashboard learns anything about a run, so a recorded
`events.jsonl` replays into exactly the same screen, and tests feed scripted events without a terminal. No Textual
here, and no clock: every time shown is derived from event fields (`elapsed_s`, `epoch_s`, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tuitune.engine.events import (CheckpointSaved, CommandApplied, EpochEnded, Event, LayerInfo, LayersChanged,
                                   MetricsUpdated, PhaseChanged, RunFailed, RunFinished, RunStarted,
                                   UnfreezeSuggested, Warned)

Point = tuple[float, float]  # (x in epochs, y)
LIVE_STATUSES = ("starting", "running", "paused", "stopping")
MAX_LOG = 500
MAX_POINTS = 20_000

COMMAND_LABELS = {
    "UnfreezeNext": "unfreeze next phase",
    "StopEarly": "stop early",
    "Pause": "pause",
    "Resume": "resume",
    "SaveCheckpoint": "save checkpoint",
}


@dataclass(frozen=True)
class Marker:
    """A vertical line on the plots: where a phase changed or a command took effect."""

    x: float
    kind: str  # "phase" or "command"
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
    train_size: int = 0
    val_size: int = 0
    classes: tuple[str, ...] = ()
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    samples_per_s: float = 0.0
    elapsed_s: float = 0.0
    gpu_mem_gb: float | None = None
    gpu_peak_gb: float | None = None
    train_loss: tuple[Point, ...] = ()
    train_acc: tuple[Point, ...] = ()
    val_loss: tuple[Point, ...] = ()
    val_acc: tuple[Point, ...] = ()
    best_val_acc: float | None = None
    markers: tuple[Marker, ...] = ()
    log: tuple[LogLine, ...] = ()
    pending: tuple[str, ...] = ()  # commands sent, not yet confirmed by the engine
    checkpoints: dict[str, str] = field(default_factory=dict)
    suggestion: UnfreezeSuggested | None = None
    finished: RunFinished | None = None
    failed: RunFailed | None = None
    trust_remote_code: bool = False
    events_seen: int = 0

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def num_phases(self) -> int:
        return len(self.phases)

    @property
    def can_unfreeze(self) -> bool:
        return self.phase + 1 < self.num_phases


# --------------------------------------------------------------------------------------------------- helpers


def _x(state: DashboardState, global_step: int) -> float:
    """Plot x coordinate: epochs completed, from the global step."""
    return global_step / max(state.steps_per_epoch, 1)


def _log(state: DashboardState, kind: str, text: str) -> tuple[LogLine, ...]:
    seq = state.log[-1].seq + 1 if state.log else 0
    return (*state.log, LogLine(kind, text, seq))[-MAX_LOG:]


def _append(series: tuple[Point, ...], point: Point) -> tuple[Point, ...]:
    return (*series, point)[-MAX_POINTS:]


def _where(state: DashboardState, epoch: int, global_step: int) -> str:
    """Where in the run, as epochs done (the plots' x axis): the engine's `epoch` fields differ in base."""
    return f"{_x(state, global_step):.1f}ep"


def _apply_lrs(layers: tuple[LayerInfo, ...], lrs: tuple[float, ...]) -> tuple[LayerInfo, ...]:
    """`MetricsUpdated.lrs` lists one LR per trainable group, in layer order: fold them into the rows."""
    trainable = [i for i, layer in enumerate(layers) if layer.trainable]
    if not lrs or len(trainable) != len(lrs):
        return layers
    out = list(layers)
    for i, lr in zip(trainable, lrs):
        out[i] = dataclasses.replace(out[i], lr=lr)
    return tuple(out)


def _add_marker(state: DashboardState, marker: Marker) -> tuple[Marker, ...]:
    if any(abs(m.x - marker.x) < 1e-9 and m.kind == marker.kind for m in state.markers):
        return state.markers
    return (*state.markers, marker)


def metric_label(metric: str) -> str:
    return metric.replace("_", " ")


# --------------------------------------------------------------------------------------------------- reducers


def _run_started(s: DashboardState, e: RunStarted) -> DashboardState:
    trc = bool(e.profile.get("model", {}).get("trust_remote_code", False))
    s = dataclasses.replace(
        s, status="running", run_name=e.run_name, run_dir=e.run_dir, device=e.device, profile=e.profile,
        layers=e.layers, phases=e.phases, phase=e.phase, epochs=e.epochs, steps_per_epoch=e.steps_per_epoch,
        start_epoch=e.start_epoch, train_size=e.train_size, val_size=e.val_size, classes=e.classes,
        epoch=e.start_epoch, global_step=e.start_epoch * e.steps_per_epoch, trust_remote_code=trc)
    resumed = f", resumed at epoch {e.start_epoch}" if e.start_epoch else ""
    log = _log(s, "info", f"run {e.run_name} on {e.device}: {len(e.layers)} groups, {len(e.phases)} phases, "
                          f"{e.train_size} train / {e.val_size} val{resumed}")
    s = dataclasses.replace(s, log=log)
    if trc:
        s = dataclasses.replace(s, log=_log(s, "warning", "trust_remote_code = true: this checkpoint runs its own "
                                                          "Python code"))
    for warning in e.warnings:
        s = dataclasses.replace(s, log=_log(s, "warning", warning))
    return s


def _metrics(s: DashboardState, e: MetricsUpdated) -> DashboardState:
    x = _x(s, e.global_step)
    return dataclasses.replace(
        s, status="running" if s.status == "starting" else s.status, epoch=e.epoch, step=e.step,
        global_step=e.global_step, samples_per_s=e.samples_per_s, elapsed_s=e.elapsed_s,
        gpu_mem_gb=e.gpu_mem_gb, gpu_peak_gb=e.gpu_peak_gb, train_loss=_append(s.train_loss, (x, e.train_loss)),
        train_acc=_append(s.train_acc, (x, e.train_acc)), layers=_apply_lrs(s.layers, e.lrs))


def _epoch_ended(s: DashboardState, e: EpochEnded) -> DashboardState:
    x = _x(s, e.global_step)
    best = e.val_acc if s.best_val_acc is None else max(s.best_val_acc, e.val_acc)
    text = (f"epoch {e.epoch}/{s.epochs}: train loss {e.train_loss:.4f} acc {e.train_acc:.1%} · val loss "
            f"{e.val_loss:.4f} acc {e.val_acc:.1%}" + (" ★ best" if e.is_best else ""))
    return dataclasses.replace(
        s, epoch=e.epoch, global_step=e.global_step, elapsed_s=e.elapsed_s, samples_per_s=e.samples_per_s,
        val_loss=_append(s.val_loss, (x, e.val_loss)), val_acc=_append(s.val_acc, (x, e.val_acc)),
        best_val_acc=best, log=_log(s, "epoch", text))


def _phase_changed(s: DashboardState, e: PhaseChanged) -> DashboardState:
    trainable = set(e.trainable)
    layers = tuple(dataclasses.replace(layer, trainable=layer.name in trainable) for layer in s.layers)
    label = f"phase {e.phase + 1}"
    added = ", ".join(e.unfrozen) or "-"
    text = f"phase {e.phase + 1}/{e.num_phases} ({e.reason}): unfroze {added}"
    s = dataclasses.replace(s, phase=e.phase, layers=layers, suggestion=None)
    return dataclasses.replace(s, markers=_add_marker(s, Marker(_x(s, e.global_step), "phase", label)),
                               log=_log(s, "phase", f"{_where(s, e.epoch, e.global_step)} · {text}"))


def _layers_changed(s: DashboardState, e: LayersChanged) -> DashboardState:
    return dataclasses.replace(s, layers=e.layers)


def _suggested(s: DashboardState, e: UnfreezeSuggested) -> DashboardState:
    return dataclasses.replace(s, suggestion=e, log=_log(s, "info", suggestion_text(e)))


def _command_applied(s: DashboardState, e: CommandApplied) -> DashboardState:
    pending = list(s.pending)
    if e.command in pending:
        pending.remove(e.command)
    status = {"Pause": "paused", "Resume": "running", "StopEarly": "stopping"}.get(e.command, s.status)
    if s.status not in LIVE_STATUSES:
        status = s.status
    label = COMMAND_LABELS.get(e.command, e.command)
    text = f"{_where(s, e.epoch, e.global_step)} · applied: {label}" + (f" ({e.detail})" if e.detail else "")
    s = dataclasses.replace(s, pending=tuple(pending), status=status)
    return dataclasses.replace(s, markers=_add_marker(s, Marker(_x(s, e.global_step), "command", label)),
                               log=_log(s, "command", text))


def _checkpoint(s: DashboardState, e: CheckpointSaved) -> DashboardState:
    checkpoints = {**s.checkpoints, e.kind: e.path}
    text = f"{_where(s, e.epoch, e.global_step)} · checkpoint ({e.kind}) {e.path}"
    return dataclasses.replace(s, checkpoints=checkpoints, log=_log(s, "checkpoint", text))


def _warned(s: DashboardState, e: Warned) -> DashboardState:
    return dataclasses.replace(s, log=_log(s, "warning", e.message))


def _finished(s: DashboardState, e: RunFinished) -> DashboardState:
    text = f"run {e.status.replace('_', ' ')}: {e.reason}"
    return dataclasses.replace(s, status=e.status, finished=e, pending=(), suggestion=None,
                               checkpoints={**s.checkpoints, **e.checkpoints}, log=_log(s, "info", text))


def _failed(s: DashboardState, e: RunFailed) -> DashboardState:
    return dataclasses.replace(s, status="failed", failed=e, pending=(), suggestion=None,
                               run_dir=s.run_dir or e.run_dir, log=_log(s, "error", f"failed: {e.message}"))


_REDUCERS: dict[type, Callable[[DashboardState, Any], DashboardState]] = {
    RunStarted: _run_started, MetricsUpdated: _metrics, EpochEnded: _epoch_ended, PhaseChanged: _phase_changed,
    LayersChanged: _layers_changed, UnfreezeSuggested: _suggested, CommandApplied: _command_applied,
    CheckpointSaved: _checkpoint, Warned: _warned, RunFinished: _finished, RunFailed: _failed,
}


def reduce(state: DashboardState, event: Event) -> DashboardState:
    """The next state after `event`. Unknown event types are counted and otherwise ignored."""
    reducer = _REDUCERS.get(type(event))
    if reducer is not None:
        state = reducer(state, event)
    return dataclasses.replace(state, events_seen=state.events_seen + 1)


def fold(events: Iterable[Event], state: DashboardState | None = None) -> DashboardState:
    state = state or DashboardState()
    for event in events:
        state = reduce(state, event)
    return state


def requested(state: DashboardState, command: str) -> DashboardState:
    """Note a command the user sent; it stays pending until the engine's `CommandApplied` confirms it."""
    return dataclasses.replace(state, pending=(*state.pending, command))


# --------------------------------------------------------------------------------------------------- derived


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0 = raw)."""
    out: list[float] = []
    last = 0.0
    for i, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** i) if weight > 0 else value)
    return out


def eta_s(state: DashboardState) -> float | None:
    """Seconds left, from this session's steps and its elapsed time (both from events)."""
    total = state.epochs * state.steps_per_epoch
    done = state.global_step - state.start_epoch * state.steps_per_epoch
    if not state.live or done <= 0 or total <= 0 or state.elapsed_s <= 0:
        return None
    return state.elapsed_s / done * max(total - state.global_step, 0)


def suggestion_text(e: UnfreezeSuggested) -> str:
    groups = ", ".join(e.next_groups) or "the next group"
    return f"{metric_label(e.metric)} flat for {e.epochs} epochs: unfreeze {groups}?"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def fmt_metric(metric: str, value: Any) -> str:
    if value is None:
        return "-"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    return f"{value:.2%}" if metric.endswith("acc") else f"{value:.4f}"
