"""Checkpoints: model weights as safetensors, training state as a weights_only-loadable torch file.

Written atomically (temp file, fsync, rename), so a crash or `kill -9` mid-write never leaves a corrupt checkpoint:
the old one stays until the new one is complete. A checkpoint is two files, and two renames cannot be one atomic
step, so the pair shares an id (see `save_checkpoint`) and `open_checkpoint` always finds weights that match the
state, whenever the writer was killed. Optimizer state is keyed by *parameter names*, not by the
optimizer's positional ids, so a resumed run rebuilds exactly the param groups of the phase it left, whatever order
they were added in.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from tuitune.engine.record.files import (
    WriteFailed,
    _fsync_dir,
    atomic_write,
)  # atomic_write re-exported (compress, tests)
from tuitune.errors import UserError

ID_KEY = "tuitune_id"  # in the safetensors metadata, and as "weights_id" in the state


def _link_over(source: Path, target: Path) -> None:
    """Make `target` the same file as `source`, atomically (a hard link costs no copy; a copy where links fail)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        raise WriteFailed(target, e) from e
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
    live_index = {n: i for i, n in enumerate(name for group in optimizer.param_groups for name in group["param_names"])}
    groups = [{**g, "params": [live_index[n] for n in g["param_names"]]} for g in saved["param_groups"]]
    state = {live_index[n]: s for n, s in saved["state"].items() if n in live_index}
    by_first = {tuple(g["param_names"]): i for i, g in enumerate(optimizer.param_groups)}
    if sorted(by_first) != sorted(tuple(g["param_names"]) for g in saved["param_groups"]):
        raise UserError("checkpoint: optimizer param groups do not match the resumed phase")
    ordered = sorted(groups, key=lambda g: by_first[tuple(g["param_names"])])
    optimizer.load_state_dict({"param_groups": ordered, "state": state})


def rng_state() -> dict[str, Any]:
    """Every global random generator a run draws from (torch, CUDA, Python, numpy), under a state file's keys:
    restored by `set_rng_state`, the continued run draws what the uninterrupted one would have."""
    return {
        "rng_torch": torch.get_rng_state(),
        "rng_python": random.getstate(),
        "rng_numpy": numpy_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state` (a state file without `rng_numpy`, written before it was kept, leaves numpy's)."""
    torch.set_rng_state(state["rng_torch"])
    random.setstate(state["rng_python"])
    if state.get("rng_numpy") is not None:  # mixup / CutMix draws
        set_numpy_rng_state(state["rng_numpy"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state (timm's `Mixup` draws from it) as plain values and a tensor, so that the state file
    still loads with `weights_only=True` (a numpy array would not)."""
    import numpy as np

    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global RandomState is an MT19937: legacy=True gives its 5-tuple
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `numpy_rng_state`."""
    import numpy as np

    np.random.set_state(
        (
            state["kind"],
            state["keys"].numpy().astype(np.uint32),
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    )


def save_checkpoint(directory: Path, tag: str, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write `<tag>.safetensors` (weights) and `<tag>.state.pt` (everything needed to resume). Returns the
    weights path.

    Why the id: the weights are renamed into place before the state, so a kill between the two renames leaves new
    weights beside the old state. Both files carry the same fresh id, and before the weights are replaced the old
    ones stay reachable as `.<tag>.<their id>.safetensors` (a hard link, no copy) until the new state is in place.
    The state therefore always has its own weights, under the fixed name or the id name: `open_checkpoint` picks.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights, state_path = directory / f"{tag}.safetensors", directory / f"{tag}.state.pt"
    current = weights_id(weights)
    kept = directory / f".{tag}.{current}.safetensors"
    if current and not kept.exists():
        _link_over(weights, kept)
    new_id = uuid.uuid4().hex
    atomic_write(weights, lambda tmp: save_model(model, str(tmp), metadata={ID_KEY: new_id}))
    atomic_write(state_path, lambda tmp: _save_state({**state, "weights_id": new_id}, tmp))
    remove_leftovers(directory, tag)
    return weights


def _save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through a Python file: a failed write then carries its OSError (ENOSPC, EFBIG), where torch's
    own file writer only says "unexpected pos"."""
    with open(path, "wb") as f:
        torch.save(state, f)


def weights_id(path: Path) -> str:
    """The id in a weights file's safetensors header ("" when there is no file, no id, or no valid header)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(ID_KEY, "")
    except Exception:
        return ""


def open_checkpoint(directory: Path, tag: str) -> tuple[Path, dict[str, Any]]:
    """The state of checkpoint `tag` and the weights file that belongs with it. When a writer was killed between
    its two renames, the state's own weights are put back under the fixed name first (see `save_checkpoint`)."""
    state = load_state(directory / f"{tag}.state.pt")
    weights = directory / f"{tag}.safetensors"
    wanted = state.get("weights_id", "") if isinstance(state, dict) else ""
    if wanted and weights_id(weights) != wanted:
        kept = directory / f".{tag}.{wanted}.safetensors"
        if not kept.exists():
            raise UserError(
                f"{weights}: these weights do not belong with {tag}.state.pt and the matching ones are "
                "gone (was the run directory edited?)"
            )
        _link_over(kept, weights)
    remove_leftovers(directory, tag)
    return weights, state


def remove_leftovers(directory: Path, tag: str) -> None:
    """Delete what interrupted saves of `tag` left behind: temp files and weights kept for a pair now complete."""
    for pattern in (f".{tag}.*.safetensors", f".{tag}.safetensors.*.tmp", f".{tag}.state.pt.*.tmp", f"..{tag}.*.tmp"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load saved weights; tied tensors that `save_model` wrote once are restored by safetensors' `load_model`.
    Shapes are compared first, from the file's header, so a checkpoint of another model gets one clear line
    rather than torch's multi-line size-mismatch report."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  safe_open is not a dict: keys() is its API
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint weights here") from None
    except Exception as e:
        raise UserError(f"{path}: cannot read checkpoint weights: {str(e).splitlines()[0]}") from None
    own = model.state_dict()
    wrong = [k for k, shape in shapes.items() if k in own and list(own[k].shape) != shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{path}: checkpoint does not fit this model: {len(wrong)} tensors differ in shape (e.g. "
            f"{k}: {shapes[k]} in the file, {list(own[k].shape)} here)"
        )
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not fit this model (e.g. {(missing or unexpected)[0]})")


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint state here (was the run saved?)") from None
    except Exception as e:
        raise UserError(f"{path}: cannot read checkpoint state: {str(e).splitlines()[0]}") from None
