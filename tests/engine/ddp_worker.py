"""One rank of a test's multi-rank runs (started by tests/engine/test_ddp.py with torchrun's environment).

`python -m tests.engine.ddp_worker JOBS.json`: JOBS.json is a list of runs, each `{"profile", "run_dir", "out"}`
and optionally `"unfreeze_at"`, `"pause_at"`, `"stop_at"`. One after the other in the one process group (a rank
costs a few CPU seconds of imports to start, a run under a second: several runs share one start), each a Trainer on
its profile, writing what the test compares into OUT/rank<N>.json: every event this rank
emitted (rank 0's are the run's; the others' are dropped by the CLI, kept here to compare) and a checksum per
parameter at the end. `unfreeze_at: STEP` puts `UnfreezeNext` on rank 0's Control when its metrics for that step
are emitted, as a dashboard would; `pause_at` also freezes layer4 again by hand (`SetGroupTrainable`), so DDP is
re-wrapped for a smaller trainable set too. `stop_at: STEP` sends a stop through rank 0's control socket (a real
`RunServer`, as `tuitune attach` would reach it): only rank 0 hears it; every rank must stop.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from torch.nn.modules.batchnorm import _BatchNorm

from tuitune.config import load_profile
from tuitune.engine.commands import Control, Pause, Resume, SetGroupTrainable, UnfreezeNext
from tuitune.engine.events import MetricsUpdated, to_json
from tuitune.engine.train.distributed import DistContext, from_env
from tuitune.engine.train.loop import Trainer
from tuitune.remote.client import RunClient
from tuitune.remote.server import RunServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("jobs", help="a JSON list of runs: {profile, run_dir, out[, unfreeze_at, pause_at, stop_at]}")
    jobs = json.loads(Path(ap.parse_args().jobs).read_text())
    dist = from_env(load_profile(jobs[0]["profile"]).train.device, 60)
    for job in jobs:
        out = run_job(dist, job)
        (Path(job["out"]) / f"rank{dist.rank}.json").write_text(json.dumps(out))
    dist.close()
    return 0


def run_job(dist: DistContext, job: dict) -> dict:
    """One run of `job` on this rank: its events, parameter checksums (start and end), trainable parameters and
    the frozen BatchNorm layers seen training."""
    profile = load_profile(job["profile"])
    stop_at = job.get("stop_at", 0)
    control, events = Control(), []
    plan = {
        job.get("unfreeze_at", 0): [UnfreezeNext()],
        job.get("pause_at", 0): [SetGroupTrainable("layer4", False), Pause()],
    }
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    server = RunServer(run_dir, control) if dist.is_main else None

    held: dict = {}  # the trainer, once built
    frozen_bn_training: set[str] = set()  # BatchNorm layers with frozen parameters seen in train mode mid-epoch

    def emit(event) -> None:
        events.append(json.loads(to_json(event)))
        if isinstance(event, MetricsUpdated) and "trainer" in held:
            for name, m in held["trainer"].parts.model.named_modules():
                own = list(m.parameters(recurse=False))
                if isinstance(m, _BatchNorm) and own and not any(q.requires_grad for q in own) and m.training:
                    frozen_bn_training.add(name)
        if server is not None and isinstance(event, MetricsUpdated) and event.global_step == stop_at:
            client = RunClient(server.path)
            client.stop_run()
            client.close()
        if dist.is_main and isinstance(event, MetricsUpdated):
            for command in plan.get(event.global_step, []):
                control.put(command)
                if isinstance(command, Pause):  # a person presses p again a second later
                    threading.Timer(1.0, control.put, (Resume(),)).start()

    trainer = held["trainer"] = Trainer(profile, run_dir, emit, control, dist=dist, interactive=True)
    trainer.run()
    if server is not None:
        server.close(drain_s=0.5)
    return {
        "events": events,
        "sums": {n: float(p.detach().double().sum()) for n, p in trainer.parts.model.named_parameters()},
        "start": {n: float(w.double().sum()) for n, w in trainer.st._w0.items()},
        "trainable": [n for n, p in trainer.parts.model.named_parameters() if p.requires_grad],
        "frozen_bn_training": sorted(frozen_bn_training),
    }


if __name__ == "__main__":
    sys.exit(main())
