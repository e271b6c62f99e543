"""Branches: a new run that starts from a checkpoint of another run (its parent) with changed settings.

A branch is a run directory of its own. Its `checkpoints/` start as copies of the parent's chosen checkpoint
(as `last`, which the branch resumes from) and of the parent's `best`; `branch.json` names the parent, the
checkpoint and its position. The parent's directory is only read. The copied optimizer state gets the branch's
`train.lr` and `train.weight_decay`: resuming restores the optimizer's groups as saved, so without this a `--set
train.lr=...` would not reach the groups already training (the ratios between groups and any hand-made scaling are
kept: every group's base LR is multiplied by new LR / parent LR).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuitune.engine.record import checkpoint
from tuitune.engine.record.files import atomic_write, write_json_atomic
from tuitune.errors import UserError

BRANCH_FILE = "branch.json"
TAGS = ("last", "best")  # the checkpoints a run keeps (no per-epoch ones)


@dataclass(frozen=True)
class BranchPoint:
    """The parent's checkpoint a branch starts from: `tag` (last or best), its epoch and global step."""

    parent: Path
    tag: str
    epoch: int
    global_step: int


def parse_spec(spec: str) -> tuple[Path, str]:
    """`RUN_DIR[@last|@best|@EPOCH]` -> (RUN_DIR, what follows the @; "last" when nothing does)."""
    run, at, which = spec.rpartition("@")
    return (Path(run), which) if at and run else (Path(spec), "last")


def find_branch_point(spec: str) -> BranchPoint:
    """The checkpoint `spec` names, checked without writing anything: a run directory, a kept checkpoint, a known
    `@` value (`last`, `best`, or an epoch that one of them was saved at, between epochs)."""
    parent, which = parse_spec(spec)
    if not (parent / "events.jsonl").exists() or not (parent / "profile.toml").exists():
        raise UserError(f"{parent}: --branch: not a run directory (no events.jsonl and profile.toml)")
    kept = {tag: _state(parent, tag) for tag in TAGS if (parent / "checkpoints" / f"{tag}.state.pt").exists()}
    if which in TAGS:
        if which not in kept:
            raise UserError(f"{parent}: --branch: no {which} checkpoint (checkpoints/{which}.state.pt)")
        return _point(parent, which, kept[which])
    if not which.isdigit():
        raise UserError(f"{spec}: --branch: unknown checkpoint {which!r} (use @last, @best or @EPOCH)")
    epoch = int(which)
    for tag, state in kept.items():
        if state["epoch"] == epoch and not state.get("step_in_epoch"):
            return _point(parent, tag, state)
    have = ", ".join(f"{t} (epoch {s['epoch']})" for t, s in kept.items()) or "none"
    raise UserError(
        f"{spec}: --branch: no checkpoint of epoch {epoch} is kept (a run keeps last and best only; kept: {have})"
    )


def _state(parent: Path, tag: str) -> dict[str, Any]:
    state = checkpoint.load_state(parent / "checkpoints" / f"{tag}.state.pt")
    wanted = state.get("weights_id", "")
    if wanted and checkpoint.weights_id(parent / "checkpoints" / f"{tag}.safetensors") != wanted:
        raise UserError(
            f"{parent}: --branch: checkpoints/{tag}.* were cut mid-save; resume the run once (tuitune train "
            f"--resume {parent}) to repair them, then branch"
        )
    return state


def _point(parent: Path, tag: str, state: dict[str, Any]) -> BranchPoint:
    return BranchPoint(parent=parent, tag=tag, epoch=int(state["epoch"]), global_step=int(state["global_step"]))


def default_out(parent: Path) -> Path:
    """`PARENT-branch-N` beside the parent, the first N not taken."""
    n = 1
    while (path := parent.with_name(f"{parent.name}-branch-{n}")).exists():
        n += 1
    return path


def start_branch(point: BranchPoint, run_dir: Path, train: Any, parent_train: dict[str, Any]) -> None:
    """Fill the new run directory `run_dir`: the checkpoints copied, the optimizer's LR and weight decay set to
    `train`'s (the branch's `TrainConfig`) from `parent_train` (the parent's `[train]` table), `branch.json`."""
    src, dst = point.parent / "checkpoints", run_dir / "checkpoints"
    dst.mkdir(parents=True, exist_ok=True)
    for tag, name in ((point.tag, "last"), ("best", "best")):
        if (src / f"{tag}.state.pt").exists():
            shutil.copyfile(src / f"{tag}.safetensors", dst / f"{name}.safetensors")
            if name != "last":
                shutil.copyfile(src / f"{tag}.state.pt", dst / f"{name}.state.pt")
    state = checkpoint.load_state(src / f"{point.tag}.state.pt")
    _retune(state, float(parent_train.get("lr", train.lr)), train.lr, train.weight_decay)
    atomic_write(dst / "last.state.pt", lambda tmp: torch.save(state, tmp))
    record = {
        "parent": str(point.parent.resolve()),
        "checkpoint": point.tag,
        "epoch": point.epoch,
        "global_step": point.global_step,
    }
    write_json_atomic(run_dir / BRANCH_FILE, record)


def _retune(state: dict[str, Any], old_lr: float, new_lr: float, weight_decay: float) -> None:
    """The saved optimizer groups with the branch's LR (every base LR times new/old) and weight decay (on the
    groups that decay: norms and biases keep 0)."""
    factor = new_lr / old_lr if old_lr > 0 else 1.0
    for group in state["optimizer"]["param_groups"]:
        group["base_lr"] = group.get("base_lr", group["lr"]) * factor
        group["lr"] *= factor
        if group.get("weight_decay"):
            group["weight_decay"] = weight_decay
