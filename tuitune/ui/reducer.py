"""The reduction: a pure fold over engine events into the dashboard state (`tuitune/ui/state.py`).

`reduce(state, event) -> state` is the only way the dashboard learns anything about a run, so a recorded
`events.jsonl` replays into exactly the same screen, and tests feed scripted events without a terminal. Each event
type has one handler in `_REDUCERS`. No Textual here, and no clock: every time shown is derived from event fields
(`elapsed_s`, `epoch_s`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from tuitune.engine.events import (
    CheckpointSaved,
    CommandApplied,
    CommandRefused,
    CompressionReported,
    DomainShiftMeasured,
    EpochEnded,
    Event,
    FeatureCacheChanged,
    LayersChanged,
    LayersMeasured,
    LRFound,
    MemoryPlanned,
    MetricsUpdated,
    ModelCompiled,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    SamplesGenerated,
    SetupProgressed,
    SystemSampled,
    UnfreezeSuggested,
    Warned,
)
from tuitune.engine.memory_plan import planned_lines
from tuitune.engine.questions import questions_after
from tuitune.engine.record.history import LinesSkipped, Recorded
from tuitune.engine.record.progress import progress_text
from tuitune.fmt import extras_text, fmt_sci, fmt_score, phase_change_text
from tuitune.ui.downsample import EMPTY, Downsampled
from tuitune.ui.event_text import compression_text, lr_found_text, shift_text, suggestion_text
from tuitune.ui.keys import COMMAND_LABELS
from tuitune.ui.state import LIVE_STATUSES, MAX_LOG, DashboardState, LogLine, Marker, better, evolve, x_at

# --------------------------------------------------------------------------------------------------- helpers


def _log(state: DashboardState, kind: str, text: str) -> tuple[LogLine, ...]:
    seq = state.log[-1].seq + 1 if state.log else 0
    return (*state.log, LogLine(kind, text, seq))[-MAX_LOG:]


def _append_extra(
    series: dict[str, Downsampled], x: float, extra: dict[str, float], index: int | None = None
) -> dict[str, Downsampled]:
    if not extra:
        return series
    out = dict(series)
    for key, value in extra.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, EMPTY).append((x, float(value)), index)
    return out


def _unpend(pending: tuple[str, ...], command: str) -> tuple[str, ...]:
    out = list(pending)
    if command in out:
        out.remove(command)
    return tuple(out)


def _where(state: DashboardState, epoch: int, global_step: int) -> str:
    """Where in the run, as epochs done (the plots' x axis): the engine's `epoch` fields differ in base."""
    return f"{x_at(state, global_step):.1f}ep"


def _add_marker(state: DashboardState, marker: Marker) -> tuple[Marker, ...]:
    if any(abs(m.x - marker.x) < 1e-9 and m.kind == marker.kind for m in state.markers):
        return state.markers
    return (*state.markers, marker)


# --------------------------------------------------------------------------------------------------- reducers


def _run_started(s: DashboardState, e: RunStarted) -> DashboardState:
    trc = bool(e.profile.get("model", {}).get("trust_remote_code", False))
    s = evolve(
        s,
        status="running",
        run_name=e.run_name,
        run_dir=e.run_dir,
        device=e.device,
        profile=e.profile,
        phases=e.phases,
        phase=e.phase,
        epochs=e.epochs,
        steps_per_epoch=e.steps_per_epoch,
        start_epoch=e.start_epoch,
        train_size=e.train_size,
        val_size=e.val_size,
        classes=e.classes,
        metric=e.metric,
        higher_is_better=e.higher_is_better,
        epoch=e.start_epoch,
        start_step=max(e.start_step, e.start_epoch * e.steps_per_epoch),
        start_elapsed_s=e.start_elapsed_s,
        global_step=max(e.start_step, e.start_epoch * e.steps_per_epoch),
        trust_remote_code=trc,
        world_size=e.world_size,
        loader_workers=e.loader_workers,
    )
    s = _layers_changed(s, LayersChanged(layers=e.layers, global_step=s.global_step))  # the one writer of rows
    resumed = f", resumed at epoch {e.start_epoch}" if e.start_epoch else ""
    log = _log(
        s,
        "info",
        f"run {e.run_name} on {e.device}: {len(e.layers)} groups, {len(e.phases)} phases, "
        f"{e.train_size} train / {e.val_size} val{resumed}",
    )
    s = evolve(s, log=log)
    if trc:
        s = evolve(s, log=_log(s, "warning", "trust_remote_code = true: this checkpoint runs its own Python code"))
    for warning in e.warnings:
        s = evolve(s, log=_log(s, "warning", warning))
    return s


def _metrics(s: DashboardState, e: MetricsUpdated) -> DashboardState:
    x = x_at(s, e.global_step)
    return evolve(
        s,
        status="running" if s.status == "starting" else s.status,
        epoch=e.epoch,
        step=e.step,
        global_step=e.global_step,
        samples_per_s=e.samples_per_s,
        elapsed_s=e.elapsed_s,
        gpu_mem_gb=e.gpu_mem_gb,
        gpu_peak_gb=e.gpu_peak_gb,
        gpu_max_gb=e.gpu_max_gb,
        step_split=e.step_split,
        readings=s.readings + 1,
        train_loss=s.train_loss.append((x, e.train_loss), s.readings),
        train_score=s.train_score.append((x, e.train_score), s.readings),
        train_extra=_append_extra(s.train_extra, x, e.extra, s.readings),
    )


def _epoch_ended(s: DashboardState, e: EpochEnded) -> DashboardState:
    x = x_at(s, e.global_step)
    best = e.val_score if better(s, e.val_score, s.best_val_score) else s.best_val_score
    m = s.metric
    text = (
        f"epoch {e.epoch}/{s.epochs}: train loss {e.train_loss:.4f} {m} {fmt_score(m, e.train_score)} · val loss "
        f"{e.val_loss:.4f} {m} {fmt_score(m, e.val_score)}"
    )
    if e.extra:
        text += " · " + extras_text(e.extra, m)
    text += " ★ best" if e.is_best else ""
    return evolve(
        s,
        epoch=e.epoch,
        step=s.steps_per_epoch,  # every step of it ran, whether or not its last one was a reading (`log_every`)
        global_step=e.global_step,
        elapsed_s=e.elapsed_s,
        samples_per_s=e.samples_per_s,
        val_loss=s.val_loss.append((x, e.val_loss)),
        val_score=s.val_score.append((x, e.val_score)),
        best_val_score=best,
        best_value=e.value(s.best_key) if e.is_best else s.best_value,
        epoch_extra=_append_extra(s.epoch_extra, x, e.extra),
        extras=dict(e.extra),
        log=_log(s, "epoch", text),
    )


def _phase_changed(s: DashboardState, e: PhaseChanged) -> DashboardState:
    label = f"phase {e.phase + 1}"
    text = f"phase {e.phase + 1}/{e.num_phases} ({e.reason}): {phase_change_text(e)}"
    s = evolve(s, phase=e.phase, **_asked(s, e))  # the rows follow in the engine's LayersChanged
    return evolve(
        s,
        markers=_add_marker(s, Marker(x_at(s, e.global_step), "phase", label)),
        log=_log(s, "phase", f"{_where(s, e.epoch, e.global_step)} · {text}"),
    )


def _layers_changed(s: DashboardState, e: LayersChanged) -> DashboardState:
    """The only writer of the layer rows (RunStarted seeds them through here; `LayersMeasured` updates their LRs and
    gradient norms). The engine sends the rows after every epoch end, phase change and LR change, and after a
    metric read when more than those two columns moved (older events.jsonl files: after every metric read)."""
    return evolve(s, layers=e.layers)


def _layers_measured(s: DashboardState, e: LayersMeasured) -> DashboardState:
    """A log step's LRs and gradient norms into the rows the last LayersChanged wrote (nothing else moved)."""
    rows = tuple(
        dataclasses.replace(row, lr=lr, grad_norm=norm) for row, lr, norm in zip(s.layers, e.lrs, e.grad_norms)
    )
    return evolve(s, layers=rows + s.layers[len(rows) :])


def _skipped(s: DashboardState, e: LinesSkipped) -> DashboardState:
    """A condensed history passed over readings no series keeps: count them (`reduce` counts the marker once)."""
    return evolve(s, readings=s.readings + e.readings, events_seen=s.events_seen + e.lines - 1)


def _suggested(s: DashboardState, e: UnfreezeSuggested) -> DashboardState:
    status = "paused" if e.waiting and s.status in LIVE_STATUSES else s.status  # held until the answer
    return evolve(s, status=status, log=_log(s, "info", suggestion_text(e, s.metric)), **_asked(s, e))


def _command_applied(s: DashboardState, e: CommandApplied) -> DashboardState:
    status = {"Pause": "paused", "Resume": "running", "StopEarly": "stopping"}.get(e.command, s.status)
    if s.status not in LIVE_STATUSES:
        status = s.status
    label = COMMAND_LABELS.get(e.command, e.command)
    text = f"{_where(s, e.epoch, e.global_step)} · applied: {label}" + (f" ({e.detail})" if e.detail else "")
    s = evolve(s, pending=_unpend(s.pending, e.command), status=status, **_asked(s, e))
    marker = Marker(x_at(s, e.global_step), "command", label)
    if e.command == "ApplyLR" and e.value is not None:  # the plots name the LR chosen (older logs: a plain line)
        marker = Marker(marker.x, "lr", f"lr {fmt_sci(e.value)}")
    return evolve(s, markers=_add_marker(s, marker), log=_log(s, "command", text))


def _command_refused(s: DashboardState, e: CommandRefused) -> DashboardState:
    """One log line; the run did not change. Refused by the engine once queued (a group the run lacks), it may be
    this dashboard's own command, which then no longer waits for its confirmation; refused at an entry point, it
    is not (the dashboard checks its commands before sending them)."""
    text = f"{_where(s, e.epoch, e.global_step)} · refused" + (f" from {e.sender}" if e.sender else "")
    pending = _unpend(s.pending, e.command) if e.queued else s.pending
    return dataclasses.replace(s, pending=pending, log=_log(s, "warning", f"{text}: {e.reason}"))


def _checkpoint(s: DashboardState, e: CheckpointSaved) -> DashboardState:
    checkpoints = {**s.checkpoints, e.kind: e.path}
    text = f"{_where(s, e.epoch, e.global_step)} · checkpoint ({e.kind}) {e.path}"
    return evolve(s, checkpoints=checkpoints, log=_log(s, "checkpoint", text))


def _warned(s: DashboardState, e: Warned) -> DashboardState:
    return evolve(s, log=_log(s, "warning", e.message))


def _cache(s: DashboardState, e: FeatureCacheChanged) -> DashboardState:
    text = f"{_where(s, e.epoch, e.global_step)} · feature cache {'on' if e.active else 'off'}"
    text += f": {e.detail}" if e.detail else ""
    return evolve(s, cache_active=e.active, cache_detail=e.detail, log=_log(s, "info", text))


def _memory(s: DashboardState, e: MemoryPlanned) -> DashboardState:
    """A log line per phase (the advice, when a phase will not fit, as a warning); the layer table's subtitle
    shows the phase in progress."""
    s = evolve(s, memory=e)
    for line in planned_lines(e):
        s = evolve(s, log=_log(s, "warning" if line == e.advice else "info", line.strip()))
    return s


def _asked(s: DashboardState, e: Any) -> dict[str, Any]:
    """The questions open after `e` (`engine.questions`: the rule `tuitune ctl` follows too): an applied LR answers
    a phase's LR question, a Resume ends a waiting plateau question (whoever sent it), a phase change or the run's
    end makes them moot."""
    plateau, lr = questions_after(s.suggestion, s.lr_question, e)
    return {"suggestion": plateau, "lr_question": lr}


def _lr_found(s: DashboardState, e: LRFound) -> DashboardState:
    finder = f"LR finder for phase {e.phase + 1}" if e.phase >= 0 else "LR finder"
    text = f"{_where(s, e.epoch, e.global_step)} · {finder}: {lr_found_text(e)}"
    pending = _unpend(s.pending, "FindLR")
    return evolve(s, lr_found=e, pending=pending, log=_log(s, "command", text), **_asked(s, e))


def _compressed(s: DashboardState, e: CompressionReported) -> DashboardState:
    return evolve(s, log=_log(s, "info", compression_text(e.report)))


def _finished(s: DashboardState, e: RunFinished) -> DashboardState:
    text = f"run {e.status.replace('_', ' ')}: {e.reason}"
    return evolve(
        s,
        status=e.status,
        finished=e,
        pending=(),
        cache_active=False,
        checkpoints={**s.checkpoints, **e.checkpoints},
        log=_log(s, "info", text),
        **_asked(s, e),
    )


def _shift(s: DashboardState, e: DomainShiftMeasured) -> DashboardState:
    text = f"{_where(s, e.epoch, e.global_step)} · {shift_text(e, s.layers)}"
    return evolve(s, domain_shift=dict(zip(e.groups, e.shifts)), log=_log(s, "info", text))


def _samples(s: DashboardState, e: SamplesGenerated) -> DashboardState:
    """The samples panel shows the latest; the log counts the matches (`g`'s samples confirm its command)."""
    hits = sum(bool(x.get("match")) for x in e.samples)
    asked = " (asked)" if e.reason == "asked" else ""
    text = f"{_where(s, e.epoch, e.global_step)} · samples{asked}: {hits}/{len(e.samples)} match their reference"
    return evolve(s, samples=e, log=_log(s, "info", text))


def _setup(s: DashboardState, e: SetupProgressed) -> DashboardState:
    """The step under way shows on the status bar; a finished one leaves a line in the log."""
    if e.finished:
        return evolve(s, setup=None, log=_log(s, "info", progress_text(e)))
    return evolve(s, setup=e)


def _failed(s: DashboardState, e: RunFailed) -> DashboardState:
    return evolve(
        s,
        status="failed",
        failed=e,
        pending=(),
        cache_active=False,
        setup=None,
        run_dir=s.run_dir or e.run_dir,
        log=_log(s, "error", f"failed: {e.message}"),
        **_asked(s, e),
    )


def _compiled(s: DashboardState, e: ModelCompiled) -> DashboardState:
    return evolve(s, log=_log(s, "info", f"{_where(s, e.epoch, e.global_step)} · {e.text()}"))


def _system(s: DashboardState, e: SystemSampled) -> DashboardState:
    """The newest sample replaces the last: the panel shows the machine now (a record keeps only the newest)."""
    return evolve(s, system=e)


_REDUCERS: dict[type, Callable[[DashboardState, Any], DashboardState]] = {
    RunStarted: _run_started,
    MetricsUpdated: _metrics,
    EpochEnded: _epoch_ended,
    PhaseChanged: _phase_changed,
    LayersChanged: _layers_changed,
    LayersMeasured: _layers_measured,
    LinesSkipped: _skipped,
    UnfreezeSuggested: _suggested,
    CommandApplied: _command_applied,
    CommandRefused: _command_refused,
    CheckpointSaved: _checkpoint,
    Warned: _warned,
    RunFinished: _finished,
    RunFailed: _failed,
    FeatureCacheChanged: _cache,
    LRFound: _lr_found,
    CompressionReported: _compressed,
    SetupProgressed: _setup,
    DomainShiftMeasured: _shift,
    MemoryPlanned: _memory,
    SamplesGenerated: _samples,
    SystemSampled: _system,
    ModelCompiled: _compiled,
}


def reduce(state: DashboardState, event: Recorded) -> DashboardState:
    """The next state after `event`. Unknown event types are counted and otherwise ignored."""
    reducer = _REDUCERS.get(type(event))
    if reducer is not None:
        state = reducer(state, event)
    return evolve(state, events_seen=state.events_seen + 1)


def fold(events: Iterable[Event], state: DashboardState | None = None) -> DashboardState:
    state = state or DashboardState()
    for event in events:
        state = reduce(state, event)
    return state


def requested(state: DashboardState, command: str) -> DashboardState:
    """Note a command the user sent; it stays pending until the engine's `CommandApplied` confirms it."""
    return evolve(state, pending=(*state.pending, command))
