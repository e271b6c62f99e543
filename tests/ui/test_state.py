"""The dashboard state is a pure fold over events: unit tests without a terminal."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from tests.ui import scripted
from tuitune.engine.events import (
    RENAMED_KEYS,
    CommandApplied,
    CommandRefused,
    EpochEnded,
    LayersChanged,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    Warned,
    event_from_dict,
    event_from_json,
    to_json,
)
from tuitune.fmt import fmt_duration, fmt_rate
from tuitune.ui.plotdata import eta_s, smooth
from tuitune.ui.profiles import detail_rows, discover, unique_dirs
from tuitune.ui.reducer import fold, reduce, requested
from tuitune.ui.state import DashboardState

FIXTURES = Path(__file__).parent / "fixtures"


def test_smooth_matches_tensorboard_debiased_ema() -> None:
    assert smooth([]) == []
    assert smooth([2.0]) == [2.0]  # debiased: the first point is itself
    out = smooth([1.0, 0.0], weight=0.5)
    assert out[1] == (0.5 * 0.5 * 1.0 + 0.5 * 0.0) / (1 - 0.25)
    assert smooth([3.0, 1.0], weight=0.0) == [3.0, 1.0]


def test_fold_mid_run() -> None:
    s = fold(scripted.mid_run_events())
    assert s.status == "running" and s.phase == 1 and s.epoch == 3 and s.step == 10
    assert [layer.name for layer in s.layers if layer.trainable] == ["layer4", "head"]
    assert len(s.val_loss) == 2 and len(s.train_loss) == 25
    assert [m.kind for m in s.markers] == ["phase", "command"] and s.markers[0].x == 2.0
    assert s.checkpoints == {"best": f"{scripted.RUN_DIR}/best.pt"}
    assert s.best_val_score is not None and s.best_val_score == max(p[1] for p in s.val_score)
    assert eta_s(s) is not None and eta_s(s) > 0


def test_events_survive_json_round_trip_into_the_same_state() -> None:
    events = scripted.finished_events()
    assert fold(event_from_json(to_json(e)) for e in events) == fold(events)


def test_events_recorded_under_the_old_acc_names_replay_into_the_same_state() -> None:
    """An events.jsonl from before `*_acc` became `*_score` (fields, extras, RunFinished rows, test, metric names)."""
    old = {v: k for k, v in RENAMED_KEYS.items()}

    def as_before(d):
        if isinstance(d, dict):
            return {("acc" if k == "score" else old.get(k, k)): as_before(v) for k, v in d.items()}
        if isinstance(d, list):
            return [as_before(v) for v in d]
        return old.get(d, d) if isinstance(d, str) else d

    events = [*scripted.extras_events(), scripted.plateau_events()[-1], scripted.finished()]
    lines = [as_before(json.loads(to_json(e))) for e in events]
    assert '"val_acc"' in json.dumps(lines) and '"ema_val_acc"' in json.dumps(lines)
    assert '"best_val_acc"' in json.dumps(lines) and "_score" not in json.dumps(lines)
    assert [event_from_dict(line) for line in lines] == events
    assert fold(event_from_dict(line) for line in lines) == fold(events)


def test_pending_command_clears_on_confirmation_and_status_follows() -> None:
    s = fold(scripted.mid_run_events())
    s = requested(s, "Pause")
    assert s.pending == ("Pause",) and s.status == "running"
    s = reduce(s, CommandApplied("Pause", 3, 50))
    assert s.pending == () and s.status == "paused"
    s = reduce(s, CommandApplied("Resume", 3, 50))
    assert s.status == "running"


def test_a_queued_command_refused_by_the_engine_no_longer_waits_and_names_its_sender() -> None:
    """Refused at an entry point (never queued) the dashboard's pending command still waits; refused by the engine
    once queued (a group the run lacks) it does not. Both log lines name the sender."""
    s = requested(fold(scripted.mid_run_events()), "ScaleGroupLR")
    s = reduce(s, CommandRefused("ScaleGroupLR", "bad factor", 3, 50, sender="socket client 2"))
    assert s.pending == ("ScaleGroupLR",) and "refused from socket client 2: bad factor" in s.log[-1].text
    s = reduce(s, CommandRefused("ScaleGroupLR", "no group 'x'", 3, 50, sender="socket client 1", queued=True))
    assert s.pending == () and "refused from socket client 1: no group 'x'" in s.log[-1].text


def test_layers_changed_is_the_only_writer_of_the_layer_rows() -> None:
    """RunStarted seeds the rows through the LayersChanged path; metrics and phase changes leave them alone (the
    engine sends LayersChanged after each, as every events.jsonl it wrote shows)."""
    started = scripted.run_started()
    s = fold([started])
    assert s.layers == started.layers == reduce(DashboardState(), LayersChanged(started.layers, 0)).layers
    rows = s.layers
    s = reduce(s, MetricsUpdated(1, 2, 2, 0.5, 0.8, (1e-4,), 800.0, 3.0))
    s = reduce(s, PhaseChanged(1, 6, ("layer4", "head"), ("layer4",), 0, 2, "manual"))
    assert s.layers is rows and s.phase == 1
    new = scripted.layers(1, 2)
    assert reduce(s, LayersChanged(new, 2)).layers == new


def test_terminal_events() -> None:
    s = fold(scripted.finished_events())
    assert s.status == "stopped_early" and not s.live and s.finished is not None
    assert s.checkpoints["last"].endswith("last.pt")
    f = reduce(DashboardState(), RunFailed(message="boom", run_dir="runs/x"))
    assert f.status == "failed" and f.run_dir == "runs/x" and f.log[-1].kind == "error"


def test_trust_remote_code_and_warnings_reach_the_log() -> None:
    s = reduce(DashboardState(), scripted.run_started({"model": {"trust_remote_code": True}}))
    assert s.trust_remote_code and any("trust_remote_code" in line.text for line in s.log)
    s = reduce(s, Warned("skipped a non-finite step"))
    assert s.log[-1].kind == "warning" and [line.seq for line in s.log] == list(range(len(s.log)))


def test_fmt_duration() -> None:
    assert fmt_duration(None) == "--:--" and fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"


def test_a_slow_run_s_throughput_does_not_read_zero() -> None:
    from tuitune.ui.widgets import status_text

    assert fmt_rate(1234.4) == "1,234" and fmt_rate(12.6) == "13" and fmt_rate(4.25) == "4.2"
    assert fmt_rate(0.37) == "0.37" and fmt_rate(None) == "-"
    s = reduce(fold(scripted.mid_run_events()), MetricsUpdated(3, 12, 52, 0.5, 0.8, (), 0.37, 3.0))
    assert "0.37 samples/s" in status_text(s).plain  # a language model on a CPU: 0.37, not 0


def test_discover_profiles_dedupes_and_keeps_errors() -> None:
    d = FIXTURES / "profiles"
    assert unique_dirs([d, d / ".." / "profiles", FIXTURES / "nope"]) == [d]
    entries = discover([d])
    broken = [e for e in entries if not e.ok]
    assert [e.name for e in broken] == ["broken"] and "learning_rate" in broken[0].error
    demo = next(e for e in entries if e.name == "demo")
    assert demo.profile is not None
    assert dict(detail_rows(demo.profile))["backbone"].startswith("timm: resnet18")
    assert discover([d], ["train.epochs=0"])[1].error  # an override can break a profile, shown not raised


def test_picker_imports_neither_torch_nor_plotext() -> None:
    code = (
        "import sys; import tuitune.ui.launch, tuitune.ui.app, tuitune.ui.picker, tuitune.ui.compose, "
        "tuitune.engine.tools.layers; "
        "bad = [m for m in ('torch', 'timm', 'transformers', 'textual_plotext') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_state_module_is_textual_free() -> None:
    code = "import sys, tuitune.ui.reducer, tuitune.ui.profiles; sys.exit('textual' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_status_line_shows_gpu_memory_only_when_reported() -> None:
    from tuitune.ui.widgets import status_text

    s = fold(scripted.mid_run_events())
    assert "GPU" not in status_text(s).plain
    s = reduce(s, MetricsUpdated(3, 12, 52, 0.5, 0.8, (), 800.0, 3.0, gpu_mem_gb=1.25, gpu_peak_gb=2.5))
    assert "GPU 1.25 GB (peak 2.50)" in status_text(s).plain


def test_status_line_shows_the_best_macro_f1_when_the_run_counts_it() -> None:
    from tuitune.ui.widgets import status_text

    s = fold(scripted.mid_run_events())
    assert "macro-F1" not in status_text(s).plain
    for epoch, f1 in ((3, 0.912), (4, 0.881)):  # the best, not the last
        s = reduce(
            s,
            EpochEnded(epoch, epoch * 20, 1, 0.3, 0.95, 0.2, 0.96, 3.0, 1.0, 800.0, False, extra={"val_macro_f1": f1}),
        )
    assert "macro-F1 91.2%" in status_text(s).plain


def test_status_line_shows_world_size_and_largest_rank_memory_of_a_multi_rank_run() -> None:
    import dataclasses

    from tuitune.ui.widgets import status_text

    events = scripted.mid_run_events()
    one = status_text(fold(events)).plain
    assert "ranks" not in one and "max/rank" not in one  # one process, and logs from before these fields
    events[0] = dataclasses.replace(events[0], world_size=4)
    s = fold(events)
    s = reduce(s, MetricsUpdated(3, 12, 52, 0.5, 0.8, (), 800.0, 3.0, gpu_mem_gb=1.25, gpu_peak_gb=2.5, gpu_max_gb=3.1))
    line = status_text(s).plain
    assert "× 4 ranks" in line and "max/rank 3.10 GB" in line
    assert event_from_json(to_json(events[0])).world_size == 4  # recorded, replayed


def test_thin_keeps_last_point_and_bounds_count() -> None:
    from tuitune.ui.widgets import thin

    assert thin(5, 100) == [0, 1, 2, 3, 4]
    keep = thin(20_000, 400)
    assert len(keep) <= 401 and keep[-1] == 19_999 and keep[0] == 0


def test_regression_best_is_the_lowest_rmse() -> None:
    from tuitune.engine.events import EpochEnded

    s = fold(scripted.regression_events())
    assert s.metric == "rmse" and not s.higher_is_better
    worse = EpochEnded(
        epoch=3,
        global_step=3 * scripted.SPE,
        phase=0,
        train_loss=1.0,
        train_score=0.9,
        val_loss=2.0,
        val_score=5.0,
        elapsed_s=3.0,
        epoch_s=1.0,
        samples_per_s=1.0,
        is_best=False,
    )
    after = reduce(s, worse)
    assert after.best_val_score == s.best_val_score == min(p[1] for p in s.val_score)
    assert "rmse 5.0000" in after.log[-1].text and "%" not in after.log[-1].text


def test_feature_cache_badge_follows_the_events() -> None:
    from tuitune.engine.events import FeatureCacheChanged

    s = fold(scripted.regression_events())
    assert s.cache_active and "features cached" in s.cache_detail
    off = reduce(s, FeatureCacheChanged(False, "layer4 unfrozen", 3, 60))
    assert not off.cache_active and off.log[-1].text == "3.0ep · feature cache off: layer4 unfrozen"


def test_lr_found_settles_the_pending_find_and_is_logged() -> None:
    s = requested(fold(scripted.mid_run_events()), "FindLR")
    s = reduce(s, scripted.lr_found())
    assert not s.pending and s.lr_found is not None
    assert s.log[-1].text.endswith("LR finder: suggested 3.2e-03 (valley), steepest 1.1e-02, current 3.0e-03")


def test_extras_become_series_and_a_compact_log() -> None:
    from tuitune.ui.plotdata import plot_series

    s = fold(scripted.extras_events())
    assert [x.label for x in plot_series(s, "loss")] == ["task", "distill", "ema", "val"]
    assert [x.label for x in plot_series(s, "acc")] == ["train", "ema", "source", "val"]
    assert len(s.epoch_extra["source_acc"]) == 3 and s.extras["source_acc"] == 0.68
    plain = fold(scripted.mid_run_events())
    assert [x.label for x in plot_series(plain, "loss")] == ["train", "val"]


def test_formatting_by_metric() -> None:
    from tuitune.fmt import extras_text, fmt_score, fmt_value, score_label

    assert fmt_score("acc", 0.9125) == "91.2%" and fmt_score("f1", 0.5, 2) == "50.00%"
    assert fmt_score("rmse", 0.41234) == "0.4123" and fmt_score("rmse", None) == "-"
    assert score_label("val_score", "rmse") == "val rmse" and score_label("source_acc", "rmse") == "source acc"
    assert fmt_value("val_score", 0.5, "rmse") == "0.5000" and fmt_value("source_acc", 0.5, "rmse") == "50.00%"
    assert extras_text({"val_mae": 0.31, "source_acc": 0.723}, "rmse") == "mae 0.3100 · source acc 72.3%"


def test_compression_report_rows_read_once_drawn_three_ways() -> None:
    """One model of the report's rows: a row read back with missing or odd values draws `-` there, a non-row is
    skipped; `tuitune compress`'s table, the summary's and the event log's line show the same cells."""
    from rich.console import Console

    from tuitune.engine.tools.compress_report import format_report, read_report
    from tuitune.ui.event_text import compression_text
    from tuitune.ui.summary import compression_table

    raw = {
        "steps": [
            {"step": "original", "params": 10, "val_acc": 0.9, "zlib_bytes": 2e5},
            "junk",
            {"step": "int8", "params": True, "val_acc": float("nan"), "zlib_bytes": 5e4, "latency_ms": "x"},
        ]
    }
    report = read_report(raw)
    assert [s.step for s in report.steps] == ["original", "int8"]
    assert report.steps[0].cells()["val acc"] == "90.0%" and report.steps[0].cells()["zlib"] == "0.20 MB"
    assert {report.steps[1].cells()[c] for c in ("params", "val acc", "ms/batch", "nonzero")} == {"-"}
    assert compression_text(raw) == "compression: 2 steps, zlib 0.20 MB → 50.0 KB (int8), val acc 90.0% → -"
    assert read_report(None).steps == () and compression_table({"steps": "nonsense"}) is None
    full = scripted.compression_report()
    console = Console(width=200, record=True)
    console.print(compression_table(full))
    ui_lines, text_lines = console.export_text().splitlines(), format_report(full).splitlines()
    for step, ui_line, text_line in zip(read_report(full).steps, ui_lines[1:], text_lines[2:]):
        cells = step.cells()
        assert all(cells[c] in ui_line and cells[c] in text_line for c in ("step", "nonzero", "zlib", "val acc"))


def test_summary_names_scores_by_metric_and_shows_compression() -> None:
    import dataclasses
    import io

    from rich.console import Console

    from tuitune.ui.summary import summary_renderable

    def text(renderable: object) -> str:
        console = Console(width=120, file=io.StringIO(), color_system=None)
        console.print(renderable)
        return console.file.getvalue()  # type: ignore[attr-defined]

    end = scripted.finished()
    regression = dataclasses.replace(
        end,
        final={"val_loss": 0.2, "val_score": 0.4123},
        per_class_acc={},
        best={"metric": "val_loss", "value": 0.2, "epoch": 3},
    )
    out = text(summary_renderable(regression, "rmse"))
    assert "val rmse 0.4123" in out and "best val rmse" in out and "per-class" not in out
    assert "84.12%" not in out and "0.8412" in out  # the per-phase column too
    done = scripted.compressed_finished_events()[-1]
    out = text(summary_renderable(done))
    assert "pruned + fine-tuned" in out and "24.05 MB" in out and f"export   {scripted.RUN_DIR}/export" in out
    assert "per-class accuracy" in out


def test_eta_after_resume_uses_the_steps_and_time_since_the_resume() -> None:
    """6 epochs of 20 steps. Resumed at step 40 after 100 s; 20 more steps took 10 s since the resume: 60 steps
    left at 0.5 s a step is 30 s (the whole 110 s over the 20 new steps would say 330 s)."""
    resumed = scripted.run_started()
    resumed = dataclasses.replace(resumed, start_epoch=2, start_step=40, start_elapsed_s=100.0)
    s = fold([resumed, MetricsUpdated(3, 20, 60, 0.5, 0.8, (3e-3,), 800.0, 110.0)])
    assert eta_s(s) == 30.0
    # resumed in mid-epoch, at step 50 (epoch 3, step 10): 10 steps in 10 s since then, 60 left
    resumed = dataclasses.replace(resumed, start_step=50)
    s = fold([resumed, MetricsUpdated(3, 20, 60, 0.5, 0.8, (3e-3,), 800.0, 110.0)])
    assert eta_s(s) == 60.0
    # a fresh run: from step 0 and its own elapsed time; 20 steps in 10 s, 100 left
    s = fold([scripted.run_started(), MetricsUpdated(1, 20, 20, 0.5, 0.8, (3e-3,), 800.0, 10.0)])
    assert eta_s(s) == 50.0


def test_x_axis_follows_the_run_and_can_show_the_whole_plan() -> None:
    """200 planned epochs, 3 done: the curves get the plot (epochs 0-4), not its left fiftieth; `whole` is 0-200."""
    from tuitune.ui.plotdata import x_range

    start = dataclasses.replace(scripted.run_started(), epochs=200)
    s = fold([start, MetricsUpdated(4, 0, 3 * scripted.SPE, 0.5, 0.8, (3e-3,), 800.0, 10.0)])
    assert x_range(s) == (0.0, 4.0)
    assert x_range(s, whole=True) == (0.0, 200.0)
    s = reduce(s, MetricsUpdated(101, 0, 100 * scripted.SPE, 0.5, 0.8, (3e-3,), 800.0, 300.0))
    assert x_range(s) == (0.0, 125.0)  # a margin of a quarter of the way so far
    s = reduce(s, MetricsUpdated(200, 0, 190 * scripted.SPE, 0.5, 0.8, (3e-3,), 800.0, 600.0))
    assert x_range(s) == (0.0, 200.0)  # never past the plan
    resumed = dataclasses.replace(start, start_epoch=50, start_step=50 * scripted.SPE)
    assert x_range(fold([resumed])) == (50.0, 51.0)  # a resumed session starts where it resumed


def test_the_status_line_keeps_the_checkpoint_metrics_best_not_the_plotted_scores() -> None:
    """A language model plots next-token accuracy but keeps (`best.safetensors`) the epoch of best exact match:
    the status line says that one, with its value at the epoch the engine marked best."""
    from tuitune.ui.widgets import status_text

    started = scripted.run_started({"model": {"name": "lm"}, "train": {"checkpoint_metric": "val_exact_match"}})
    s = reduce(DashboardState(), dataclasses.replace(started, metric="token_acc"))
    fields = dict(global_step=10, phase=0, train_loss=1.0, train_score=0.5, val_loss=1.0, elapsed_s=1.0)
    fields |= dict(epoch_s=1.0, samples_per_s=1.0)
    for epoch, (token_acc, exact, best) in enumerate([(0.90, 0.50, True), (0.97, 0.40, False)], start=1):
        e = EpochEnded(epoch=epoch, val_score=token_acc, is_best=best, extra={"val_exact_match": exact}, **fields)
        s = reduce(s, e)
    line = status_text(s).plain
    assert "best val exact match 50.0%" in line and "97.0%" not in line, line


def test_an_ended_epoch_shows_all_its_steps_even_when_its_last_was_not_a_reading() -> None:
    """`max_steps_per_epoch` under `log_every`: no reading in the epoch, yet the header read "step 0/4" at the end."""
    s = reduce(DashboardState(), dataclasses.replace(scripted.run_started(), steps_per_epoch=4))
    fields = dict(global_step=4, phase=0, train_loss=1.0, train_score=0.5, val_loss=1.0, val_score=0.5, elapsed_s=1.0)
    s = reduce(s, EpochEnded(epoch=1, epoch_s=1.0, samples_per_s=1.0, is_best=True, **fields))
    assert s.step == 4


def test_a_record_naming_its_checkpoint_metric_by_the_old_name_shows_its_best() -> None:
    """A profile from before `*_acc` became `*_score` (`checkpoint_metric = "val_acc"`): the events are read under
    the new names, so the best is looked up under the new name too."""
    from tuitune.ui.widgets import status_text

    started = scripted.run_started({"model": {"name": "resnet18"}, "train": {"checkpoint_metric": "val_acc"}})
    fields = dict(global_step=10, phase=0, train_loss=1.0, train_score=0.5, val_loss=1.0, elapsed_s=1.0)
    e = EpochEnded(epoch=1, val_score=0.75, is_best=True, epoch_s=1.0, samples_per_s=1.0, **fields)
    assert "best val acc 75.0%" in status_text(reduce(reduce(DashboardState(), started), e)).plain
