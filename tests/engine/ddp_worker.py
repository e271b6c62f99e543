"""One rank of a test's multi-rank run (started by tests/engine/test_ddp.py with torchrun's environment).

Runs a Trainer on a profile and writes what the test compares into OUT/rank<N>.json: every event this rank
emitted (rank 0's are the run's; the others' are dropped by the CLI, kept here to compare) and a checksum per
parameter at the end. `--unfreeze-at STEP` puts `UnfreezeNext` on rank 0's Control when its metrics for that step
are emitted, as a dashboard would; `--pause-at` also freezes layer4 again by hand (`SetGroupTrainable`), so DDP is
re-wrapped for a smaller trainable set too. `--stop-at STEP` sends a stop through rank 0's control socket (a real
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
from tuitune.engine.train.distributed import from_env
from tuitune.engine.train.loop import Trainer
from tuitune.remote.client import RunClient
from tuitune.remote.server import RunServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("run_dir")
    ap.add_argument("out")
    ap.add_argument("--unfreeze-at", type=int, default=0)
    ap.add_argument("--pause-at", type=int, default=0)
    ap.add_argument("--stop-at", type=int, default=0)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    dist = from_env(profile.train.device, 60)
    control, events = Control(), []
    plan = {
        args.unfreeze_at: [UnfreezeNext()],
        args.pause_at: [SetGroupTrainable("layer4", False), Pause()],
    }
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    server = RunServer(Path(args.run_dir), control) if dist.is_main else None

    held: dict = {}  # the trainer, once built
    frozen_bn_training: set[str] = set()  # BatchNorm layers with frozen parameters seen in train mode mid-epoch

    def emit(event) -> None:
        events.append(json.loads(to_json(event)))
        if isinstance(event, MetricsUpdated) and "trainer" in held:
            for name, m in held["trainer"].parts.model.named_modules():
                own = list(m.parameters(recurse=False))
                if isinstance(m, _BatchNorm) and own and not any(q.requires_grad for q in own) and m.training:
                    frozen_bn_training.add(name)
        if server is not None and isinstance(event, MetricsUpdated) and event.global_step == args.stop_at:
            client = RunClient(server.path)
            client.stop_run()
            client.close()
        if dist.is_main and isinstance(event, MetricsUpdated):
            for command in plan.get(event.global_step, []):
                control.put(command)
                if isinstance(command, Pause):  # a person presses p again a second later
                    threading.Timer(1.0, control.put, (Resume(),)).start()

    trainer = held["trainer"] = Trainer(profile, Path(args.run_dir), emit, control, dist=dist, interactive=True)
    trainer.run()
    if server is not None:
        server.close(drain_s=0.5)
    sums = {n: float(p.detach().double().sum()) for n, p in trainer.parts.model.named_parameters()}
    trainable = [n for n, p in trainer.parts.model.named_parameters() if p.requires_grad]
    start = {n: float(w.double().sum()) for n, w in trainer.st._w0.items()}
    out = {
        "events": events,
        "sums": sums,
        "start": start,
        "trainable": trainable,
        "frozen_bn_training": sorted(frozen_bn_training),
    }
    (Path(args.out) / f"rank{dist.rank}.json").write_text(json.dumps(out))
    dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
