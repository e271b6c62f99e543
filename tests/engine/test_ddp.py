"""Multi-rank runs with real processes (gloo on 127.0.0.1, a free port, 2 ranks, tiny models): equivalence with
one process, DDP re-wrapped at an unfreeze, commands at the same step on every rank, a rank killed, resume.
Every process a test starts is killed when the test ends, passed or not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import tiny_profile
from tests.waiting import read_until
from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.commands import Control
from tuitune.engine.data.shards import EvalShard, GlobalBatchSampler
from tuitune.engine.events import EpochEnded, RunFailed, RunFinished, RunStarted, event_from_dict
from tuitune.engine.record import checkpoint
from tuitune.engine.record.runlog import read_events
from tuitune.engine.train.loop import Trainer
from tuitune.multirank import free_port

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
# a ViT (LayerNorm: no batch statistics, so per-rank batches normalise as the global one), no dropout
VIT = {
    "name": "vit_tiny_patch16_224",
    "img_size": 32,
    "kwargs": {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8},
}
PROGRESSIVE = {"kind": "progressive", "trigger": "epochs", "every_epochs": 1}


@pytest.fixture
def procs():
    """Processes to end when the test ends (their whole session: torchrun's ranks run in sessions of their own)."""
    started: list[subprocess.Popen] = []
    yield started
    _end(started)


def _end(started: list[subprocess.Popen]) -> None:
    for proc in started:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                _kill(pid)
            _kill(proc.pid)
            proc.wait(timeout=30)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"tuitune" in cmd:
            return pid
    return None


def _write(tmp: Path, name: str, **sections) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(dump_toml(profile_to_dict(tiny_profile(**sections))))
    return path


def _train(args: list[str], procs: list, **kw) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuitune", "train", *args],
        env=ENV,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kw,
    )
    procs.append(proc)
    return proc


def _val_losses(events: list) -> list[float]:
    return [e.val_loss for e in events if isinstance(e, EpochEnded)]


# ------------------------------------------------------------------------------------------------ samplers
def test_global_batches_are_the_one_process_batches_split_among_ranks() -> None:
    """Rank slices of every global batch add up to one process's batch of the same global size, epoch after
    epoch (the generators end each epoch in the same state); the uneven last batch's shares weigh exactly."""
    one = torch.utils.data.DataLoader(
        range(70), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    ranks = [GlobalBatchSampler(70, 16, r, 2, gens[r]) for r in range(2)]
    for _ in range(2):
        torch.empty((), dtype=torch.int64).random_(generator=one.generator)  # as the DataLoader draws first
        for gen in gens:
            torch.empty((), dtype=torch.int64).random_(generator=gen)
        expected = [list(batch) for batch in one.batch_sampler]
        got = [a + b for a, b in zip(*[list(r) for r in ranks])]  # each rank to its end
        assert [sorted(b) for b in got] == [sorted(b) for b in expected]
    assert len(ranks[0]) == 3 and [ranks[0].share(i) for i in range(3)] == [1.0, 1.0, 1.0]  # 32, 32, 6 = 3 + 3
    odd = [GlobalBatchSampler(5, 2, r, 2, torch.Generator().manual_seed(0)) for r in range(2)]
    assert [len(b) for b in list(odd[0])] == [2] and len(odd[0]) == 1  # 4 + a last global batch of 1: dropped
    three = [GlobalBatchSampler(7, 2, r, 2, torch.Generator().manual_seed(0)) for r in range(2)]
    sizes = [len(list(three[r])[-1]) for r in range(2)]  # a last global batch of 3: 1 + 2, weighed 2/3 and 4/3
    assert sizes == [1, 2] and [three[r].share(1) for r in range(2)] == pytest.approx([2 / 3, 4 / 3])


def test_eval_shards_cover_the_set_once_without_padding() -> None:
    shards = [list(EvalShard(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]


# ------------------------------------------------------------------------------------------------- runs
def _ranks(tmp: Path, procs: list, jobs: dict[str, dict]) -> dict[str, list[dict]]:
    """Two ranks (`ddp_worker`) that run `jobs` ({name: {"profile", and flags}}) one after the other in one process
    group: for each name, what each rank wrote."""
    for name, job in jobs.items():
        (tmp / name).mkdir()
        job.update(run_dir=str(tmp / name / "run"), out=str(tmp / name))
    (tmp / "jobs.json").write_text(json.dumps(list(jobs.values())))
    port = free_port()
    started = []
    for rank in range(2):
        env = {
            **ENV,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.engine.ddp_worker", str(tmp / "jobs.json")],
            env=env,
            cwd=ROOT,
            text=True,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(proc)
        started.append(proc)
    for proc in started:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    return {name: [json.loads((tmp / name / f"rank{r}.json").read_text()) for r in range(2)] for name in jobs}


FEATURE_CACHE = {"model": VIT, "train": {"epochs": 3, "lr": 0.01, "cache_memory_gb": 0.00015}, "strategy": PROGRESSIVE}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[dict]]]:
    """The 2-rank runs of the tests below, in one start of two ranks (each start costs seconds of imports): "cached"
    (the feature cache) and then "manual" (commands, a stop). Every process is ended when the module's tests end,
    passed or not."""
    tmp = tmp_path_factory.mktemp("ddp")
    manual = _write(
        tmp,
        "manual",
        train={"epochs": 4, "log_every": 2, "lr": 0.01},
        strategy={"kind": "progressive", "trigger": "manual", "fallback": "none"},
        distill={"teacher": "self", "alpha": 0.5},
    )
    jobs: dict[str, dict] = {
        "cached": {"profile": str(_write(tmp, "cached", **FEATURE_CACHE))},
        "manual": {"profile": str(manual), "unfreeze_at": 2, "pause_at": 5, "stop_at": 8},
    }
    started: list[subprocess.Popen] = []
    try:
        yield _ranks(tmp, started, jobs)
    finally:
        _end(started)


@pytest.mark.xdist_group("ddp_two_rank_runs")  # with the fixture's other test on one worker: one start of the ranks
def test_commands_reach_both_ranks_at_the_same_step_and_unfrozen_params_stay_identical(
    two_rank_runs: dict[str, list[dict]],
) -> None:
    """u at step 2, layer4 frozen by hand and p at step 5 (resumed a second later) put on rank 0's Control, and a
    stop sent through rank 0's control socket at step 8 (4 epochs of 3 steps: 72 examples, 2 x 16 a step): both ranks
    apply each at the same global step, and both stop at the same step, saying "interrupted"; DDP is
    re-wrapped at each change of the trainable set; the unfrozen parameters moved from their start and are
    identical on both ranks (checksums);
    frozen BatchNorm layers stay in eval mode on both. Self-distillation is on (a pre-logits loss: the model and its
    pre-logits run through DDP's forward), so identical parameters also say its gradients were all-reduced."""
    ranks = two_rank_runs["manual"]

    def applied(rank: dict) -> list[tuple[str, int]]:
        return [(e["command"], e["global_step"]) for e in rank["events"] if e["type"] == "CommandApplied"]

    assert (
        applied(ranks[0])
        == applied(ranks[1])
        == [("UnfreezeNext", 2), ("SetGroupTrainable", 5), ("Pause", 5), ("Resume", 5)]
    )
    changes = [[(e["phase"], e["global_step"]) for e in r["events"] if e["type"] == "PhaseChanged"] for r in ranks]
    assert changes[0] == changes[1] == [(1, 2)]
    ends = [(r["events"][-1]["status"], r["events"][-1]["global_step"]) for r in ranks]
    assert ends[0] == ends[1] and ends[0][0] == "interrupted" and 8 <= ends[0][1] < 12  # before the 4th epoch ends
    unfrozen = [n for n in ranks[0]["sums"] if n.startswith("layer4.")]  # trained at steps 3-5, then frozen
    assert ranks[0]["trainable"] == ranks[1]["trainable"] and not set(unfrozen) & set(ranks[0]["trainable"])
    assert all(ranks[0]["sums"][n] == ranks[1]["sums"][n] for n in ranks[0]["sums"])
    assert all(ranks[0]["sums"][n] != ranks[0]["start"][n] for n in unfrozen if n.endswith("weight"))
    assert ranks[0]["frozen_bn_training"] == ranks[1]["frozen_bn_training"] == []  # frozen BN: eval on each rank


@pytest.mark.xdist_group("ddp_two_rank_runs")
def test_feature_cache_per_rank_gives_the_one_process_training(
    tmp_path: Path, two_rank_runs: dict[str, list[dict]]
) -> None:
    """Two ranks equal one process with the global batch, with the feature cache on. 2 ranks x batch 16 (the
    tiny ViT, an unfreeze after each epoch; a budget
    that keeps pre_logits and blocks.0 from the first pass, so the second unfreeze drops the cache and epoch 3
    rebuilds it at the stem): the same cache events at the same steps on both ranks and as in one process x batch
    32 with the cache; per-epoch val loss within 1e-4 of one process without it; parameters equal across ranks."""
    sections = FEATURE_CACHE
    ranks = two_rank_runs["cached"]
    runs = {}
    for cache in (True, False):
        runs[cache] = []
        profile = tiny_profile(
            **{**sections, "train": {**sections["train"], "feature_cache": cache}}, data={"batch_size": 32}
        )
        Trainer(profile, tmp_path / f"one-{cache}", runs[cache].append, Control()).run()

    def said(events: list[dict]) -> list[tuple[bool, int, str]]:
        return [
            (e["active"], e["global_step"], e["detail"].split(" (")[0])
            for e in events
            if e["type"] == "FeatureCacheChanged"
        ]

    one = [
        (e.active, e.global_step, e.detail.split(" (")[0])
        for e in runs[True]
        if type(e).__name__ == "FeatureCacheChanged"
    ]
    assert said(ranks[0]["events"]) == said(ranks[1]["events"]) == one
    assert [d for _, _, d in one] == [
        "output of pre_logits cached",
        "output of blocks.0 cached",
        "dropped: the layers up to blocks.0 are no longer all frozen; rebuilt at the next epoch",
        "output of stem cached",
    ]
    val = [[e["val_loss"] for e in r["events"] if e["type"] == "EpochEnded"] for r in ranks]
    assert len(val[0]) == 3 and val[0] == val[1] == pytest.approx(_val_losses(runs[False]), abs=1e-4)
    # the validation's macro-F1 and confusion matrix: each rank counts its shard, together those of one process
    f1 = [[e["extra"]["val_macro_f1"] for e in r["events"] if e["type"] == "EpochEnded"] for r in ranks]
    one_f1 = [e.extra["val_macro_f1"] for e in runs[True] if isinstance(e, EpochEnded)]
    assert f1[0] == f1[1] == pytest.approx(one_f1, abs=1e-6)
    ends = [r["events"][-1] for r in ranks]
    assert ends[0]["confusion"] == ends[1]["confusion"] == [list(row) for row in runs[True][-1].confusion]
    assert sum(map(sum, runs[True][-1].confusion)) == 24  # the whole val set
    assert ranks[0]["sums"] == ranks[1]["sums"]
    assert all(ranks[0]["sums"][n] != ranks[0]["start"][n] for n in ranks[0]["trainable"])


def _wait_for(proc: subprocess.Popen, prefix: str) -> None:
    """Rank 0's progress lines, up to one starting with `prefix` (a hung run fails the test in 240 s)."""
    read_until(proc, lambda line: line.startswith(prefix), 240, f"a line starting {prefix!r}")


def test_a_killed_rank_fails_the_run_naming_it_ctrl_c_stops_every_rank_and_resume_continues(
    tmp_path: Path, procs: list
) -> None:
    """kill -9 of rank 1: the run ends within 60 s, marked failed once, naming rank 1; `last` intact.
    --resume --nproc 2 continues; Ctrl+C (SIGINT to the launcher) stops both ranks at the same step, rank 0
    saves `last` and records 'interrupted' once (exit 130). Resumed again in one process (global batch 16, not 32),
    the run continues with a warning that the data order differs."""
    profile = _write(tmp_path, "long", train={"epochs": 400})
    run = tmp_path / "run"
    proc = _train([str(profile), "--headless", "--nproc", "2", "--out", str(run)], procs)
    _wait_for(proc, "epoch   2/")  # epoch 1's checkpoints are saved right after its line
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 60 and proc.returncode == 1
    events = read_events(run)
    assert isinstance(events[-1], RunFailed) and events[-1].kind == "rank_lost"
    assert events[-1].message.startswith("rank 1 died (killed by SIGKILL)") and "rank 1 died" in err
    assert sum(isinstance(e, (RunFailed, RunFinished)) for e in events) == 1
    assert events[0].world_size == 2 and [type(e) for e in events].count(RunStarted) == 1  # one writer: rank 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "rank 1" in summary["stop_reason"]
    _, state = checkpoint.open_checkpoint(run / "checkpoints", "last")  # intact
    assert state["epoch"] >= 1 and state["world_size"] == 2

    again = _train(["--resume", str(run), "--headless", "--nproc", "2"], procs)
    _wait_for(again, f"epoch {state['epoch'] + 1:>3}/")
    again.send_signal(signal.SIGINT)
    _, err = again.communicate(timeout=90)
    assert again.returncode == 130, err[-2000:]
    resumed = read_events(run)[len(events) :]
    assert isinstance(resumed[0], RunStarted) and resumed[0].start_epoch == state["epoch"]
    assert isinstance(resumed[-1], RunFinished) and resumed[-1].status == "interrupted"
    assert sum(isinstance(e, (RunFailed, RunFinished)) for e in resumed) == 1

    _, state = checkpoint.open_checkpoint(run / "checkpoints", "last")
    alone: list = []
    Trainer(tiny_profile(train={"epochs": state["epoch"] + 1}), run, alone.append, Control(), resume=run).run()
    assert any("the run was saved on 2" in w and "data order differs" in w for w in alone[0].warnings)
    assert isinstance(alone[-1], RunFinished) and alone[-1].epochs == state["epoch"] + 1


def test_old_events_without_the_new_fields_still_read() -> None:
    started = {
        "type": "RunStarted",
        "run_name": "x",
        "run_dir": "r",
        "device": "cpu",
        "layers": [],
        "phases": [],
        "phase": 0,
        "epochs": 1,
        "steps_per_epoch": 1,
        "train_size": 1,
        "val_size": 1,
        "classes": [],
        "profile": {},
    }
    assert event_from_dict(started).world_size == 1


def test_bad_multi_rank_input_is_one_line_naming_the_key(tmp_path: Path, capsys) -> None:
    from tuitune.cli import main
    from tuitune.engine.train.distributed import DistContext
    from tuitune.engine.train.parts import rank_batch_size
    from tuitune.errors import UserError

    profile = _write(tmp_path, "p")
    assert main(["train", str(profile), "--headless", "--nproc", "-1", "--out", str(tmp_path / "r2")]) == 2
    assert "--nproc: -1 is not a number of ranks" in capsys.readouterr().err
    three = DistContext(rank=0, world=3)
    assert rank_batch_size(tiny_profile(data={"batch_size": 48, "batch_scope": "global"}), three) == 16
    assert rank_batch_size(tiny_profile(data={"batch_size": 16}), three) == 16  # per rank, the default
    with pytest.raises(UserError, match=r"data.batch_size: 16 does not divide among 3 ranks"):
        rank_batch_size(tiny_profile(data={"batch_size": 16, "batch_scope": "global"}), three)
