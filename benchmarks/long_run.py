"""Histories of any length: the first frame of `replay`, `compare` and `attach` for runs of 1e4, 1e5 and 1e6 metric
readings.

Builds finished run directories in the format the engine writes (lines written directly, fast): per reading a
`MetricsUpdated` and a `LayersMeasured` (6 layer groups), per epoch (`--per-epoch` readings) an `EpochEnded`, the
full `LayersChanged` and a `CheckpointSaved`; `history.jsonl` as the recorder leaves it when the run ends. Then
times each command in a process of its own, from spawn to the first frame (Textual headless: the screen shown and
the refresh after it processed, as benchmarks/first_frame.py does), and reads that process's peak RSS
(`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` after each child, children run smallest first, and the child's own
figure). `attach` attaches to the run as a live run serves it: the run's control socket server (`RunServer`, as in
a run process, counting the recorded lines as a resumed run does) in a process of its own over the directory,
recorded in `process.json` (removed again afterwards); its first frame is the one after the history ended. `runs`
times `tuitune runs FOLDER` (the listing `tuitune attach` and the picker make too) over a folder holding that one run
(`listing-N`, a link to it), from spawn to its first line of output. `--old` also times a run directory of 1e5
readings written the old way (full rows at every read, no `history.jsonl`), replayed and listed. Prints one JSON
line.

    python benchmarks/long_run.py [--sizes 1e4,1e5,1e6] [--dir /tmp/tuitune-long] [--old]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GROUPS = ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "head")
PARAMS = (9_536, 147_968, 525_568, 2_099_712, 8_393_728, 5_130)


def _rows(epoch: int, trainable: int = 2) -> list[dict[str, Any]]:
    out = []
    for i, (name, params) in enumerate(zip(GROUPS, PARAMS)):
        on = i >= len(GROUPS) - trainable
        out.append(
            {
                "name": name,
                "params": params,
                "trainable": on,
                "lr": 1e-3 / 2.6 ** (5 - i) if on else None,
                "grad_norm": 0.5 / (i + 1) if on else None,
                "drift": 0.001 * epoch * on,
                "bn": "eval" if not on else "train",
                "adapters": None,
            }
        )
    return out


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def write_run(run_dir: Path, readings: int, per_epoch: int, old: bool = False) -> None:
    """A finished run of `readings` metric readings; `old`: full layer rows at every read and no snapshot."""
    from tuitune.engine.record import history

    run_dir.mkdir(parents=True, exist_ok=True)
    steps = 10 * per_epoch  # log_every = 10
    epochs = -(-readings // per_epoch)
    started = {
        "type": "RunStarted",
        "run_name": run_dir.name,
        "run_dir": str(run_dir),
        "device": "cuda:0",
        "layers": _rows(0),
        "phases": [["head"], ["stages.3", "head"]],
        "phase": 0,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "train_size": steps * 64,
        "val_size": 10_000,
        "classes": [str(i) for i in range(10)],
        "profile": {"name": run_dir.name, "train": {"lr": 1e-3}},
        "start_epoch": 0,
        "warnings": [],
        "metric": "acc",
        "higher_is_better": True,
        "start_step": 0,
        "start_elapsed_s": 0.0,
        "world_size": 1,
    }
    c = history.Condenser()
    with open(run_dir / "events.jsonl", "w", encoding="ascii") as f:

        def put(text: str) -> None:
            f.write(text)
            if not old:
                c.feed(text.encode())

        put(_line(started))
        put(_line({"type": "LayersChanged", "layers": _rows(0), "global_step": 0}))
        lrs = [r["lr"] for r in _rows(0)]
        lr_json = json.dumps([x for x in lrs if x is not None], separators=(",", ":"))
        for i in range(readings):
            g = 10 * (i + 1)
            epoch = i // per_epoch
            loss = 2.0 / (1 + g / 5000) + 0.05 * ((i * 7919) % 13) / 13
            put(
                f'{{"type":"MetricsUpdated","epoch":{epoch + 1},"step":{g - epoch * steps},"global_step":{g},'
                f'"train_loss":{loss!r},"train_score":{1 - loss / 2.5!r},"lrs":{lr_json},"samples_per_s":2211.5,'
                f'"elapsed_s":{g * 0.29!r},"gpu_mem_gb":3.2,"gpu_peak_gb":4.1,"extra":{{}},"gpu_max_gb":null}}\n'
            )
            norms = [None] * 4 + [0.25 + 0.01 * (i % 7), 0.5 + 0.01 * (i % 5)]
            if old:
                rows = _rows(epoch)
                for row, n in zip(rows, norms):
                    row["grad_norm"] = n
                put(_line({"type": "LayersChanged", "layers": rows, "global_step": g}))
            else:
                put(_line({"type": "LayersMeasured", "lrs": lrs, "grad_norms": norms, "global_step": g}))
            if (i + 1) % per_epoch == 0 or i + 1 == readings:
                e = epoch + 1
                put(
                    _line(
                        {
                            "type": "EpochEnded",
                            "epoch": e,
                            "global_step": g,
                            "phase": 0,
                            "train_loss": loss,
                            "train_score": 1 - loss / 2.5,
                            "val_loss": loss * 1.1,
                            "val_score": 1 - loss / 2.2,
                            "elapsed_s": g * 0.29,
                            "epoch_s": steps * 0.29,
                            "samples_per_s": 2211.5,
                            "is_best": True,
                            "extra": {},
                        }
                    )
                )
                put(_line({"type": "LayersChanged", "layers": _rows(e), "global_step": g}))
                put(
                    _line(
                        {
                            "type": "CheckpointSaved",
                            "path": str(run_dir / "best.safetensors"),
                            "kind": "best",
                            "epoch": e,
                            "global_step": g,
                        }
                    )
                )
        put(
            _line(
                {
                    "type": "RunFinished",
                    "status": "finished",
                    "reason": "planned epochs done",
                    "epochs": epochs,
                    "global_step": 10 * readings,
                    "best": {"metric": "val_score", "value": 0.9, "epoch": epochs},
                    "final": {"val_loss": 0.2, "val_score": 0.9},
                    "test": None,
                    "phases": [],
                    "per_class_acc": {},
                    "samples_per_s": 2211.5,
                    "wall_s": readings * 2.9,
                    "checkpoints": {},
                }
            )
        )
    if not old:
        history.write_snapshot(run_dir, c)
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "wall_s": readings * 2.9}))


CHILD = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
from textual.app import App
original = App.run
def ready(app):
    d = getattr(app, "dashboard", None)
    if sys.argv[2] == "replay":
        return d is not None and d.state.events_seen > 0
    if sys.argv[2] == "attach":  # the history has ended: the screen is live
        return d is not None and d.state.events_seen > 0 and not d.in_history
    from tuitune.ui.compare import CurvesPlot
    return bool(app.screen.query(CurvesPlot))
def run(self, **kwargs):
    async def first_frame(pilot):
        await pilot.pause()
        while not ready(pilot.app):
            await pilot.pause()
        await pilot.pause()  # the refresh after it: the first frame is drawn
        d = getattr(pilot.app, "dashboard", None)
        seen = d.state.events_seen if d is not None else 0
        print(f"FIRST_FRAME {seen} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
        pilot.app.exit(return_code=0)
    kwargs.update(headless=True, auto_pilot=first_frame, size=(120, 40))
    return original(self, **kwargs)
App.run = run
if sys.argv[2] == "compare":  # what `tuitune compare` does on a terminal (its output here is a pipe)
    from pathlib import Path
    from tuitune.runs.compare import load_runs
    from tuitune.ui.launch import open_compare
    open_compare(runs=load_runs([Path(d) for d in sys.argv[3:]]))
else:
    from tuitune.cli import main
    main(sys.argv[2:])
"""


SERVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tuitune.engine.commands import Control
from tuitune.remote.server import RunServer
from tuitune.runs.process import PROCESS_FILE, write_process_record
run_dir = Path(sys.argv[2])
server = RunServer(run_dir, Control(), resumed=True)
try:
    write_process_record(run_dir, server.path, "benchmark")
    print("SERVING", server.base, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
finally:
    server.close(drain_s=0.5)
    (run_dir / PROCESS_FILE).unlink(missing_ok=True)
"""


def attach_first_frame(run_dir: Path) -> dict[str, Any]:
    """`tuitune attach RUN_DIR` to a run served by a `RunServer` in a process of its own (started and ended here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT), str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if not line.startswith("SERVING"):
            raise SystemExit(f"the run server over {run_dir} did not start")
        return first_frame(["attach", str(run_dir)])
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def first_frame(args: list[str]) -> dict[str, Any]:
    """Spawn `tuitune ARGS` headless; seconds from spawn to its first frame, and its peak RSS in MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seconds, seen, rss = None, 0, 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("FIRST_FRAME"):
            seconds = time.perf_counter() - t0
            _, seen_s, rss_s = line.split()
            seen, rss = int(seen_s), int(rss_s)
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait(timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # to exit: a little past the frame
    children = after.ru_maxrss
    if seconds is None:
        raise SystemExit(f"no first frame from tuitune {' '.join(args)}: {err[-2000:]}")
    return {
        "first_frame_s": round(seconds, 2),
        "cpu_s": round(cpu, 2),
        "rss_mb": round(rss / 1024),
        "children_maxrss_mb": round(children / 1024),
        "events_seen": seen,
    }


RUNS = "import sys; sys.path.insert(0, sys.argv[1]); from tuitune.cli import main; main(sys.argv[2:])"


def runs_first_output(run_dir: Path) -> dict[str, Any]:
    """Spawn `tuitune runs` over a folder holding only `run_dir` (a link to it); seconds from spawn to its first line
    of output (the table is printed whole), its CPU seconds to exit and the run's row."""
    folder = run_dir.parent / f"listing-{run_dir.name}"
    folder.mkdir(exist_ok=True)
    if not (folder / run_dir.name).exists():
        (folder / run_dir.name).symlink_to(run_dir.resolve(), target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNS, str(ROOT), "runs", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    seconds = time.perf_counter() - t0
    rest = proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait(timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not first:
        raise SystemExit(f"tuitune runs {folder} failed: {err[-2000:]}")
    return {
        "first_output_s": round(seconds, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "row": " ".join(rest.split()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e4,1e5,1e6")
    ap.add_argument("--dir", default="/tmp/tuitune-long")
    ap.add_argument("--per-epoch", type=int, default=1000, help="readings per epoch (10,000 steps at log_every 10)")
    ap.add_argument("--old", action="store_true", help="also a 1e5 run directory in the old format")
    a = ap.parse_args()
    base = Path(a.dir)
    out: dict[str, Any] = {"per_epoch": a.per_epoch, "runs": {}}
    tiny = base / "tiny-10"
    if not (tiny / "summary.json").exists():
        write_run(tiny, 10, a.per_epoch)
    out["baseline_10_readings"] = first_frame(["replay", str(tiny)])  # interpreter, imports, Textual: the floor
    out["runs_baseline_10_readings"] = runs_first_output(tiny)  # interpreter and the CLI's imports: the floor
    for size in (int(float(s)) for s in a.sizes.split(",")):
        run, twin = base / f"run-{size}", base / f"twin-{size}"
        t = time.perf_counter()
        for d in (run, twin):
            if not (d / "summary.json").exists():
                write_run(d, size, a.per_epoch)
        row: dict[str, Any] = {
            "build_s": round(time.perf_counter() - t, 1),
            "events_mb": round((run / "events.jsonl").stat().st_size / 1e6, 1),
        }
        row["replay"] = first_frame(["replay", str(run)])
        row["compare"] = first_frame(["compare", str(run), str(twin)])
        row["attach"] = attach_first_frame(run)
        row["runs"] = runs_first_output(run)
        out["runs"][str(size)] = row
    if a.old:
        old = base / "old-100000"
        if not (old / "summary.json").exists():
            write_run(old, 100_000, a.per_epoch, old=True)
        out["old_format_1e5"] = {
            "events_mb": round((old / "events.jsonl").stat().st_size / 1e6, 1),
            "replay": first_frame(["replay", str(old)]),
            "runs": runs_first_output(old),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
