"""The console sink: a run's events as concise lines on stdout (errors on stderr), for headless runs, the run
process's `run.log` and the command-line tools. Plain Python: no torch, no Textual."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TextIO

from tuitune.engine.events import (
    CheckpointSaved,
    CommandApplied,
    CommandRefused,
    CompressionReported,
    EpochEnded,
    Event,
    FeatureCacheChanged,
    LRFound,
    MemoryPlanned,
    ModelCompiled,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    SamplesGenerated,
    SetupProgressed,
    Warned,
)
from tuitune.engine.memory_plan import planned_lines
from tuitune.engine.record.progress import progress_text
from tuitune.engine.tools.compress_report import format_report
from tuitune.fmt import fmt_rate, phase_change_text

__all__ = ["PROGRESS_EVERY_S", "ConsolePrinter", "compression_table"]

PROGRESS_EVERY_S = 3.0  # a long setup step (a download, tokenization) prints a line this often, and when done


class ConsolePrinter:
    """Concise progress on stdout: a line per epoch, per phase change and per notable event. A failure is one
    line on stderr, like every other error of the CLI (`tuitune: error: ...`)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, log: Path | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.log = log  # where lines go on when `out` or `err` breaks (RUN_DIR/run.log; RunStarted tells it too)
        self.epochs = 0
        self.num_phases = 1
        self.phase = 0
        self.metric = "acc"  # the task's score (RunStarted.metric): acc, rmse or f1
        self._progress_at: dict[str, float] = {}  # task -> when its last line was printed

    def say(self, text: str) -> None:
        self.out = _write(self.out, text, self.log)

    def __call__(self, event: Event) -> None:
        handler = self.HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _started(self, event: RunStarted) -> None:
        self.log = self.log or Path(event.run_dir) / "run.log"
        self.epochs, self.num_phases, self.phase = event.epochs, len(event.phases), event.phase
        self.metric = event.metric
        # under LoRA a trainable group trains its adapters (the head, with none, trains in full)
        trainable = sum(layer.adapters or layer.params for layer in event.layers if layer.trainable)
        total = sum(layer.params for layer in event.layers)
        self.say(
            f"run {event.run_name} on {event.device}: {event.train_size} train / {event.val_size} val, "
            f"{len(event.classes)} classes, {len(event.layers)} layer groups, {len(event.phases)} phase(s)"
            f"; trainable {trainable:,} of {total:,} params -> {event.run_dir}"
        )
        for warning in event.warnings:
            self.say(f"warning: {warning}")

    def _epoch(self, event: EpochEnded) -> None:
        m = self.metric
        extra = "".join(f"  {k} {v:.4f}" for k, v in event.extra.items())
        self.say(
            f"epoch {event.epoch:>3}/{self.epochs}  phase {event.phase + 1}/{self.num_phases}  "
            f"train loss {event.train_loss:.4f} {m} {event.train_score:.3f}  "
            f"val loss {event.val_loss:.4f} {m} {event.val_score:.3f}{extra}  "
            f"{fmt_rate(event.samples_per_s)} samples/s  {event.epoch_s:.1f}s{'  *best' if event.is_best else ''}"
        )

    def _lr_found(self, event: LRFound) -> None:
        finder = f"LR finder for phase {event.phase + 1}" if event.phase >= 0 else "LR finder"
        said = (
            f"suggested {event.suggestion:.3g} (valley {event.valley:.3g}, steepest {event.steep:.3g}; "
            f"current {event.current_lr:.3g})"
            if event.found
            else event.no_suggestion_text()
        )
        self.say(f"{finder}: {said}; curve in {event.path}")

    def _compressed(self, event: CompressionReported) -> None:
        self.say("compression:\n" + compression_table(event.report))

    def _phase(self, event: PhaseChanged) -> None:
        self.say(
            f"phase {event.phase + 1}/{event.num_phases} ({event.reason}, after epoch {event.epoch}): "
            f"{phase_change_text(event)}"
        )

    def _command(self, event: CommandApplied) -> None:
        detail = f": {event.detail}" if event.detail else ""
        self.say(f"command {event.command} applied at step {event.global_step}{detail}")

    def _refused(self, event: CommandRefused) -> None:
        self.say(f"command refused{f' from {event.sender}' if event.sender else ''}: {event.reason}")

    def _checkpoint(self, event: CheckpointSaved) -> None:
        if event.kind == "manual":  # the periodic best / last saves would drown the epoch lines
            self.say(f"checkpoint saved: {event.path}")

    def _warned(self, event: Warned) -> None:
        self.say(f"warning: {event.message}")

    def _memory(self, event: MemoryPlanned) -> None:
        """Each phase's planned peak, and what to change when one will not fit (before the first step)."""
        for line in planned_lines(event):
            self.say(line)

    def _cache(self, event: FeatureCacheChanged) -> None:
        """Whether a phase runs only what it trains, and why not."""
        self.say(f"feature cache {'on' if event.active else 'off'}: {event.detail}")

    def _samples(self, event: SamplesGenerated) -> None:
        """A language model's samples: how many match, then each as `prompt -> output (reference)`, cut short."""
        hits = sum(bool(s.get("match")) for s in event.samples)
        self.say(f"samples at step {event.global_step} ({event.reason}): {hits}/{len(event.samples)} match")
        for s in event.samples:
            line = " ".join(
                f"{'✓' if s.get('match') else '✗'} {s['prompt']!r} -> {s['output']!r} ({s['reference']!r})".split()
            )
            self.say(f"  {line[:160]}")

    def _compiled(self, event: ModelCompiled) -> None:
        self.say(event.text())

    def _failed(self, event: RunFailed) -> None:
        traceback = f" (traceback: {event.log_path})" if event.log_path else ""
        self.err = _write(self.err, f"tuitune: error: {event.message}{traceback}", self.log)

    def _progress(self, event: SetupProgressed) -> None:
        """The first line of a task, then one every few seconds, and the last: a log, not a progress bar."""
        now = time.monotonic()
        last = self._progress_at.get(event.task)
        if event.finished or last is None or now - last >= PROGRESS_EVERY_S:
            self._progress_at[event.task] = now
            self.say(progress_text(event))

    def _finished(self, event: RunFinished) -> None:
        best = event.best
        value = "n/a" if best.get("value") is None else f"{best['value']:.4f}"
        name = str(best.get("metric")).replace("_score", f"_{self.metric}")  # val_score -> val_acc, val_rmse
        self.say(
            f"{event.status}: {event.reason}. best {name} {value} at epoch {best.get('epoch')}, "
            f"final val {self.metric} {event.final.get('val_score', float('nan')):.4f}, {event.wall_s:.1f}s"
        )
        for p in event.phases:
            acc = "n/a" if p.get("best_val_score") is None else f"{p['best_val_score']:.4f}"
            self.say(
                f"  phase {p['index'] + 1}: {', '.join(p['groups'])}: {p['epochs']} epoch(s), "
                f"best val {self.metric} {acc}{' (rolled back)' if p.get('rolled_back') else ''}"
            )
        if event.test:
            f1 = f", macro-F1 {event.test['macro_f1']:.4f}" if "macro_f1" in event.test else ""
            self.say(f"  test {self.metric} {event.test['score']:.4f}{f1}")
        for name, r in list(event.per_class_report.items())[:20]:  # the last val epoch's, per class
            self.say(
                f"  class {name}: precision {r['precision']:.3f} recall {r['recall']:.3f} F1 {r['f1']:.3f} "
                f"({int(r['support'])} val)"
            )
        if event.export_dir:
            self.say(f"  exported to {event.export_dir}")

    # event type -> its handler; the other events (every step's metrics, the layer table...) print nothing
    HANDLERS: ClassVar[dict[type, Callable[[ConsolePrinter, Any], None]]] = {
        RunStarted: _started,
        EpochEnded: _epoch,
        ModelCompiled: _compiled,
        SetupProgressed: _progress,
        LRFound: _lr_found,
        CompressionReported: _compressed,
        PhaseChanged: _phase,
        CommandApplied: _command,
        CommandRefused: _refused,
        CheckpointSaved: _checkpoint,
        Warned: _warned,
        FeatureCacheChanged: _cache,
        MemoryPlanned: _memory,
        RunFinished: _finished,
        RunFailed: _failed,
        SamplesGenerated: _samples,
    }


def compression_table(report: dict[str, Any]) -> str:
    """A compression report (`CompressionReported.report`, `tuitune compress`) as a fixed-width table."""
    return format_report(report)


def _write(stream: TextIO, text: str, log: Path | None) -> TextIO:
    """Print a line; the stream to use from now on. A closed or broken stream (`| head -2`, a closed terminal, a
    full disk) never fails the run: the line and the ones after it go on into `log` (else nowhere), and a broken
    standard stream is pointed at /dev/null so that Python's flush at exit cannot fail either."""
    try:
        print(text, file=stream, flush=True)
        return stream
    except (OSError, ValueError):  # ValueError: the file was closed
        pass
    if stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):
            pass
    try:
        spare: TextIO = open(log, "a", encoding="utf-8") if log is not None else open(os.devnull, "w")  # noqa: SIM115
        print(text, file=spare, flush=True)
    except OSError:
        spare = open(os.devnull, "w")  # noqa: SIM115
    return spare
