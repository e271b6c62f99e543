"""How several ranks share the data: each rank reads its part of every global batch (training) and a disjoint
part of an evaluation set.

Why not torch's `DistributedSampler` for training: it permutes with `seed + epoch` and deals the permutation out
rank by rank (`perm[rank::world]`), so a run on W ranks with batch B sees other batches than one process with
batch W*B, and its order has nothing to do with the one-process loader's generator (which the resume and the
feature cache follow). `GlobalBatchSampler` draws the one-process permutation from the loader's own generator (the
same draws `RandomSampler` makes, the generator's state is the epoch's shuffle, as `set_epoch` would set it) and
gives rank r the r-th slice of each global batch: W ranks x B reproduce one process x W*B batch for batch, which is
what makes multi-rank runs comparable and resumable with another world size. With `data.group_by_length` (text)
the global order is transformers' length-grouped one for the global batch size, drawn from the same generator, so
every rank derives the same order and W ranks x B still read what one process x W*B reads.

Why not `DistributedSampler` for evaluation: it pads the last shard by repeating examples, so reduced sums would
count those twice. `EvalShard` gives rank r the examples r, r+W, r+2W, ... without padding: the shards are
disjoint and cover the set, so summed metrics equal the one-process ones exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank: slice `rank` of each global batch of `batch_size * world` examples drawn
    in the one-process shuffled order. A short last global batch is split as evenly as the ranks allow (slices
    differ by at most one example; `share(i)` says how this rank's slice weighs in the global mean); one with
    fewer examples than ranks is dropped, since a rank with no examples cannot join the gradient all-reduce.
    `lengths` (text, `data.group_by_length`): global batches of similar lengths (see the module)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        rank: int,
        world: int,
        generator: torch.Generator,
        lengths: list[int] | None = None,
    ) -> None:
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.generator, self.lengths = generator, lengths
        self.global_batch = batch_size * world
        full, rest = divmod(size, self.global_batch)  # examples of each global batch: fixed for the run
        self.sizes = [self.global_batch] * full + ([rest] if rest >= world else [])

    def __len__(self) -> int:
        return len(self.sizes)

    def share(self, index: int) -> float:
        """Rank's examples x world / global examples in batch `index` (0-based): 1.0 but for an uneven last batch.
        Scaling this rank's mean loss by it makes DDP's average of rank gradients the global batch's mean."""
        if index >= len(self.sizes) or self.sizes[index] == self.global_batch:
            return 1.0
        lo, hi = self._bounds(self.sizes[index])
        return (hi - lo) * self.world / self.sizes[index]

    def _bounds(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def __iter__(self) -> Iterator[list[int]]:
        if self.lengths is not None:  # what transformers' LengthGroupedSampler draws for the global batch
            from transformers.trainer_pt_utils import get_length_grouped_indices

            order = get_length_grouped_indices(self.lengths, self.global_batch, generator=self.generator)
        else:
            order = torch.randperm(self.size, generator=self.generator).tolist()  # what RandomSampler draws
        for start, n in zip(range(0, self.size, self.global_batch), self.sizes):
            chunk = order[start : start + n]
            lo, hi = self._bounds(n)
            yield chunk[lo:hi]
        # RandomSampler draws a second permutation (of which it yields nothing) when its epoch ends: the same
        # draw keeps the generator, and so every later epoch's order, as one process has it (LengthGroupedSampler
        # draws only the one)
        if self.lengths is None:
            torch.randperm(self.size, generator=self.generator)


class EvalShard(Sampler[int]):
    """Examples rank, rank + world, ... of an evaluation set: disjoint shards, no padding (see the module)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, size, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
