"""Checkpoints: model weights as safetensors, training state as a weights_only-loadable torch file.

Written atomically (temp file, fsync, rename), so a crash or `kill -9` mid-write never leaves a corrupt checkpoint:
the old one stays until the new one is complete. Optimizer state is keyed by *parameter names*, not by the
optimizer's positional ids, so a resumed run rebuilds exactly the param groups of the phase it left, whatever order
they were added in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model, save_model

from tuitune.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with parameter ids replaced by parameter names."""
    sd = optimizer.state_dict()
    id_to_name: dict[int, str] = {}
    groups = []
    for group, live in zip(sd["param_groups"], optimizer.param_groups):
        names = list(live["param_names"])
        id_to_name.update(zip(group["params"], names))
        groups.append({k: v for k, v in group.items() if k != "params"} | {"param_names": names})
    state = {id_to_name[i]: s for i, s in sd["state"].items()}
    return {"param_groups": groups, "state": state}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Inverse of `optimizer_state_by_name`, for an optimizer built with the same param groups (any order)."""
    live_index = {n: i for i, n in enumerate(
        name for group in optimizer.param_groups for name in group["param_names"])}
    groups = [{**g, "params": [live_index[n] for n in g["param_names"]]} for g in saved["param_groups"]]
    state = {live_index[n]: s for n, s in saved["state"].items() if n in live_index}
    by_first = {tuple(g["param_names"]): i for i, g in enumerate(optimizer.param_groups)}
    if sorted(by_first) != sorted(tuple(g["param_names"]) for g in saved["param_groups"]):
        raise UserError("checkpoint: optimizer param groups do not match the resumed phase")
    ordered = sorted(groups, key=lambda g: by_first[tuple(g["param_names"])])
    optimizer.load_state_dict({"param_groups": ordered, "state": state})


def save_checkpoint(directory: Path, tag: str, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write `<tag>.safetensors` (weights) and `<tag>.state.pt` (everything needed to resume). Returns the
    weights path. The state goes last: a checkpoint is complete when its state file is."""
    weights = directory / f"{tag}.safetensors"
    atomic_write(weights, lambda tmp: save_model(model, str(tmp)))
    atomic_write(directory / f"{tag}.state.pt", lambda tmp: torch.save(state, tmp))
    return weights


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load saved weights; tied tensors that `save_model` wrote once are restored by safetensors' `load_model`."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint weights here") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise UserError(f"{path}: cannot read checkpoint weights: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not fit this model (e.g. {(missing or unexpected)[0]})")


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint state here (was the run saved?)") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UserError(f"{path}: cannot read checkpoint state: {str(e).splitlines()[0]}") from None
