"""What one forward pass keeps for the backward, seen from inside: `Recorder` is installed as the pack hook of
`torch.autograd.graph.saved_tensors_hooks` (every tensor autograd saves, on any device) and as forward hooks on
every module (what is alive while each module runs). It counts storages, each once, never the parameters' or the
batch's own, and holds the saved ones while it counts, so an address it has seen is never reused meanwhile.

Gradient checkpointing saves a checkpointed block's inputs as it enters it (torch's non-reentrant checkpoint saves
them with a node of its own, which the hook sees) and hides the block's insides from the hook (the checkpoint packs
them itself), to recompute them in the backward. `checkpoint_units` names those blocks by comparing two forwards,
with checkpointing and without: the outermost modules that saved nothing with it and something without. What such
a block saves without checkpointing is what it holds while the backward recomputes it (`by_module`). Outputs still
alive at the end that nobody saved (`held`: a checkpoint that keeps its inputs in a closure) count as kept too.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from tuitune.engine.model.groups import LayerGroup


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def tensors(x: Any) -> list[torch.Tensor]:
    """The tensors in a tensor, a dict, a list or a tuple of them (nested)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors(v)]
    return []


def storages(x: Any) -> dict[int, int]:
    """The storages of the tensors in `x`: address -> bytes."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors(x)}


class Recorder:
    """One forward's saved tensors by layer group (the group whose module ran last), its high point, each group's
    largest leaf op, the saved bytes under every module. Use: `saved_tensors_hooks(rec.pack, ...)` around the
    forward, then `by_group`, then `release`; `begin` before the next forward (the hooks stay), `close` at the end."""

    def __init__(self, model: nn.Module, groups: Sequence[LayerGroup], batch: Any) -> None:
        owner = {n: g.name for g in groups for n in g.param_names}
        self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.first_group = groups[0].name
        self.begin(batch)
        self.handles = []
        for name, module in model.named_modules():
            own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
            group = next((owner[n] for n in own if n in owner), None)
            leaf = not any(True for _ in module.children())
            self.handles.append(module.register_forward_pre_hook(self._enter(name, group), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._exit(leaf), with_kwargs=True))

    def begin(self, batch: Any) -> None:
        """Counts from zero for the next forward, of `batch` (its storages are not activations)."""
        self.batch = set(storages(batch))
        self.saved: dict[int, tuple[str, torch.UntypedStorage]] = {}
        self.order: list[str] = []  # the groups in the order the forward reached them
        self.group = self.first_group
        self.workspace: dict[str, int] = {}  # per group: its largest leaf op's inputs + outputs not saved already
        self.forward = 0  # the most the forward held at once (see `_exit`)
        self.kept = 0  # saved so far
        self.by_module: dict[str, int] = {}  # saved bytes while each module ran (its whole call, children included)
        self.stack: list[tuple[str, dict[int, int]]] = []  # the modules running now and their inputs, outermost first
        self.outputs: list[tuple[str, weakref.ref[torch.UntypedStorage]]] = []  # what the modules returned
        self.called: dict[str, str] = {}  # every module that ran -> the group running when it returned

    def _enter(self, name: str, group: str | None) -> Any:
        def hook(_module: nn.Module, args: Any, kwargs: Any) -> None:
            if group is not None:
                self.group = group
                if group not in self.order:
                    self.order.append(group)
            self.stack.append((name, storages((args, kwargs))))

        return hook

    def _exit(self, leaf: bool) -> Any:
        """A module returned: what is alive now is what was saved so far, the inputs of every module still running
        (a residual block's input waits for its sum), this module's inputs and its output."""

        def hook(_module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            name, inputs = self.stack.pop() if self.stack else ("", {})
            made = storages(out)
            live = {k: v for _, frame in self.stack for k, v in frame.items()} | inputs | made
            self.forward = max(self.forward, self.kept + self._unsaved(live))
            if leaf:
                self.workspace[self.group] = max(self.workspace.get(self.group, 0), self._unsaved(inputs | made))
            self.outputs += [(self.group, weakref.ref(t.untyped_storage())) for t in tensors(out)]
            self.called[name] = self.group

        return hook

    def _unsaved(self, found: dict[int, int]) -> int:
        return sum(n for ptr, n in found.items() if ptr not in self.saved and ptr not in self.skip | self.batch)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip and ptr not in self.batch and ptr not in self.saved and storage.nbytes():
            self.saved[ptr] = (self.group, storage)
            self.kept += storage.nbytes()
            for name, _ in self.stack:
                self.by_module[name] = self.by_module.get(name, 0) + storage.nbytes()
        return t

    def held(self, result: Any) -> dict[int, tuple[str, int]]:
        """The modules' outputs still alive at the end of the forward that nobody saved, besides the result
        (gradient checkpointing keeps each block's input so): address -> (group, bytes)."""
        seen = self.skip | self.batch | set(self.saved) | set(storages(result))
        out: dict[int, tuple[str, int]] = {}
        for group, ref in self.outputs:
            storage = ref()
            if storage is not None and storage.data_ptr() not in seen and storage.data_ptr() not in out:
                out[storage.data_ptr()] = (group, storage.nbytes())
        return out

    def by_group(self, names: Sequence[str], result: Any) -> dict[str, int]:
        """Bytes each group keeps for the backward: its saved tensors and what it holds (`held`)."""
        out = dict.fromkeys(names, 0)
        for group, storage in self.saved.values():
            out[group] += storage.nbytes()
        for group, n in self.held(result).values():
            out[group] += n
        return out

    def release(self) -> None:
        """The saved tensors let go (the counts stay)."""
        self.saved.clear()

    def close(self) -> None:
        """Hooks off, and the saved tensors let go."""
        for h in self.handles:
            h.remove()
        self.release()


def checkpoint_units(called: dict[str, str], saved: dict[str, int], plain: dict[str, int]) -> dict[str, str]:
    """The checkpointed blocks of a forward (the modules that ran, `called`, and what each saved, `saved`: the
    recorder's `called` and `by_module`), module name -> group: the outermost modules that ran, saved nothing the
    hook saw, and saved something in the same forward without checkpointing (`plain`: its `by_module`). A frozen
    module saves nothing either way, so it is never one."""
    hidden = {name: group for name, group in called.items() if name and not saved.get(name) and plain.get(name)}
    return {n: g for n, g in hidden.items() if not any(n.startswith(o + ".") for o in hidden)}
