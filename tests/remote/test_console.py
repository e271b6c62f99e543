"""The console sink (`tuitune.console.ConsolePrinter`): what a headless run, a run process's run.log and the tools
print for each event, looked up in its table by event type."""

from __future__ import annotations

import io

from tests.engine.test_imports import _modules_after
from tests.remote.test_exits import finished, started
from tuitune.console import ConsolePrinter
from tuitune.engine.events import (
    EVENT_TYPES,
    CheckpointSaved,
    CommandApplied,
    CompressionReported,
    EpochEnded,
    FeatureCacheChanged,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    Warned,
)

STEP = {"step": "original", "params": 2_130, "nonzero": 1.0, "nonzero_prunable": 1.0, "file_bytes": 9_000}
REPORT = {
    "steps": [
        {**STEP, "zlib_bytes": 8_000, "val_acc": 0.75, "latency_ms": 1.5, "batch_size": 16, "threads": 1},
        {
            **STEP,
            "step": "pruned",
            "nonzero": 0.5,
            "nonzero_prunable": 0.5,
            "zlib_bytes": 5_000,
            "val_acc": 0.7,
            "latency_ms": 1.4,
            "batch_size": 16,
            "threads": 1,
        },
    ],
    "notes": ["int8: 1 Linear layer(s)"],
}


def epoch(n: int) -> EpochEnded:
    return EpochEnded(
        epoch=n,
        global_step=4 * n,
        phase=0,
        train_loss=0.5,
        train_score=0.8,
        val_loss=0.6,
        val_score=0.75,
        elapsed_s=2.0 * n,
        epoch_s=2.0,
        samples_per_s=32.0,
        is_best=True,
    )


def test_each_notable_event_is_one_line_and_the_rest_print_nothing() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = ConsolePrinter(out=out, err=err)
    events = [
        started(),
        MetricsUpdated(1, 1, 1, train_loss=0.5, train_score=0.8, lrs=(), samples_per_s=1.0, elapsed_s=1.0),
        epoch(1),
        CheckpointSaved(path="r/best.safetensors", kind="best", epoch=1, global_step=4),
        CheckpointSaved(path="r/manual.safetensors", kind="manual", epoch=1, global_step=4),
        PhaseChanged(1, 2, ("head", "body"), ("body",), 1, 4, "plateau"),
        CommandApplied(command="Pause", epoch=1, global_step=5),
        FeatureCacheChanged(active=False, detail="the backbone trains", epoch=1, global_step=5),
        Warned(message="loss is not finite"),
        CompressionReported(report=REPORT),
        finished("stopped_early"),
        RunFailed(message="boom", run_dir="r", log_path="r/error.log"),
    ]
    for event in events:
        printer(event)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("run r on cpu: 8 train / 4 val, 2 classes, 2 layer groups, 1 phase(s)")
    assert lines[1].startswith("epoch   1/1  phase 1/1  train loss 0.5000 acc 0.800") and lines[1].endswith("*best")
    assert lines[2:7] == [
        "checkpoint saved: r/manual.safetensors",  # the periodic best / last saves print nothing
        "phase 2/2 (plateau, after epoch 1): unfroze body",
        "command Pause applied at step 5",
        "feature cache off: the backbone trains",
        "warning: loss is not finite",
    ]
    assert lines[7] == "compression:" and lines[8].split()[:3] == ["step", "params", "nonzero"]
    assert lines[10].startswith("original") and lines[11].startswith("pruned") and "5.0 KB" in lines[11]
    assert lines[13] == "int8: 1 Linear layer(s)"
    assert lines[14].startswith("stopped_early: test. best")
    assert err.getvalue() == "tuitune: error: boom (traceback: r/error.log)\n"
    assert len(lines) == 15


def test_the_table_names_only_real_events_and_each_handler_takes_its_type() -> None:
    for event_type, handler in ConsolePrinter.HANDLERS.items():
        assert EVENT_TYPES[event_type.__name__] is event_type
        assert handler.__annotations__["event"] == event_type.__name__, handler.__name__


def test_printing_a_compression_report_imports_no_torch() -> None:
    """The console is plain Python (it runs in `tuitune compress`'s output and every run.log): its compression table
    is its own, not the compression tool's (which imports torch)."""
    loaded = _modules_after(
        "from tuitune.console import ConsolePrinter\n"
        "from tuitune.engine.events import CompressionReported\n"
        f"ConsolePrinter()(CompressionReported(report={REPORT!r}))"
    )
    assert "tuitune.console" in loaded and not {"torch", "textual"} & loaded
