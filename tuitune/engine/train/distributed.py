"""Data-parallel runs: one process per rank (launched by torchrun or `tuitune train --nproc N`), DDP for the
gradients, and the few collectives the loop needs besides DDP's own.

What crosses ranks, and when:
- commands and stop requests: rank 0 collects them; every rank exchanges them at the metric reads (every
  `train.log_every` steps) and at epoch ends, so a command takes effect on every rank at the same optimizer step
  and no step waits for anything but DDP's gradient all-reduce (`exchange`);
- metrics: the sums behind the train window, the epoch and evaluation are summed over ranks when they are read
  (`sum`), so they equal the one-process figures;
- the model: DDP registers its gradient hooks for the parameters that require grad when it is built, so a phase
  change builds a new DDP wrapper on every rank at the same step (`wrap`), never `find_unused_parameters`.

Single-process runs get `LOCAL`, whose methods do nothing, so the loop reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from tuitune.errors import UserError, first_line


class PeerLost(RuntimeError):
    """A collective failed: another rank died or stopped answering. Rank 0 leaves the run's terminal event to
    the launcher, which knows which rank it was."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --------------------------------------------------------------------------------------------- set-up
    def device(self, spec: str) -> torch.device | None:
        """The rank's device: `cuda:LOCAL_RANK` on a GPU node (one GPU per rank), else None (the profile's)."""
        if self.active and self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return None

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """A DDP wrapper registering hooks for the parameters trainable now (see the module docstring)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    # -------------------------------------------------------------------------------------- collectives
    def exchange(self, commands: list[Any], stop: bool) -> tuple[list[Any], bool]:
        """Every rank gets rank 0's commands and whether any rank was asked to stop (Ctrl+C reaches them all)."""
        if not self.active:
            return commands, stop
        gathered: list[Any] = [None] * self.world  # (commands, stop) of each rank; the commands are dataclasses
        self._guard(lambda: torch.distributed.all_gather_object(gathered, (commands if self.is_main else [], stop)))
        return list(gathered[0][0]), any(s for _, s in gathered)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a copy); the tensor itself when alone."""
        return self._reduce(values, "SUM")

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over ranks (a copy); the tensor itself when alone."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        """`values` all-reduced by `op` (a `ReduceOp` name, looked up only when there are ranks to reduce over)."""
        if not self.active:
            return values
        out = values.detach().clone()
        self._guard(lambda: torch.distributed.all_reduce(out, op=getattr(torch.distributed.ReduceOp, op)))
        return out

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (a decision all ranks must take alike is read off the same list)."""
        if not self.active:
            return [obj]
        gathered: list[Any] = [None] * self.world
        self._guard(lambda: torch.distributed.all_gather_object(gathered, obj))
        return gathered

    def gather_rows(self, tensor: torch.Tensor, chunk_bytes: int = 1 << 28) -> torch.Tensor:
        """Every rank's rows (unequal counts allowed) concatenated in rank order, where `tensor` lives. Moved in
        chunks of at most `chunk_bytes` per rank through the collective's device (NCCL: this rank's GPU), so a
        store kept in host memory never has to fit on the GPU whole."""
        if not self.active:
            return tensor
        via = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        if tensor.dtype == torch.bool:  # not every backend reduces bools: moved as bytes
            return self.gather_rows(tensor.to(torch.uint8), chunk_bytes).bool()
        counts = [int(n) for n in self.gather_objects(tensor.shape[0])]
        row_bytes = max(1, tensor[0:1].numel() * tensor.element_size())
        step = max(1, min(chunk_bytes // row_bytes, max(counts)))
        parts: list[list[torch.Tensor]] = [[] for _ in range(self.world)]
        for start in range(0, max(counts), step):
            piece = torch.zeros((step, *tensor.shape[1:]), dtype=tensor.dtype, device=via)
            mine = tensor[start : start + step]
            piece[: mine.shape[0]] = mine.to(via)
            out = [torch.empty_like(piece) for _ in range(self.world)]
            self._guard(torch.distributed.all_gather, out, piece)
            for r, got in enumerate(out):
                parts[r].append(got[: max(0, min(step, counts[r] - start))].to(tensor.device))
        return torch.cat([t for rank in parts for t in rank])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank."""
        if not self.active:
            return obj
        box = [obj]
        self._guard(lambda: torch.distributed.broadcast_object_list(box, src=0))
        return box[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied into `module` on every rank (in place)."""
        if not self.active:
            return
        for tensor in module.state_dict().values():
            self._guard(torch.distributed.broadcast, tensor, src=0)

    def _guard(self, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """`call(*args, **kwargs)`, a lost peer raised as PeerLost. The arguments are passed, not closed over, so a
        loop's current values are the ones used."""
        try:
            call(*args, **kwargs)
        except (RuntimeError, OSError) as e:  # gloo / NCCL: a peer closed the connection or timed out
            raise PeerLost(f"rank {self.rank}: a collective failed: {first_line(e, 200)}") from e

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


LOCAL = DistContext()


def from_env(device_spec: str = "auto", timeout_s: int = 120) -> DistContext:
    """The context torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    NCCL when the ranks run on CUDA, gloo on CPU. One process (no WORLD_SIZE, or 1): `LOCAL`."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return LOCAL
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_spec != "cpu" and torch.cuda.is_available()
    if cuda and device_spec.startswith("cuda:"):
        raise UserError(
            f"train.device: {device_spec!r} names one GPU; with several ranks each takes the GPU of "
            "its LOCAL_RANK (use auto or cuda)"
        )
    if cuda:
        if local >= torch.cuda.device_count():
            raise UserError(f"--nproc: rank {rank} wants GPU {local} but {torch.cuda.device_count()} are visible")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    torch.distributed.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world=world, local_rank=local, backend=backend)


def is_peer_failure(error: BaseException) -> bool:
    """A failure that says another rank is gone (rather than a bug or bad input on this one)."""
    if isinstance(error, PeerLost):
        return True
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(error)
    return isinstance(error, dist_error) or any(
        s in text
        for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "gloo", "Timed out")
    )
