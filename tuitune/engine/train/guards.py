"""Guards against what the numbers and the hardware can do to a run: non-finite losses and running out of memory.

Kept out of the loop so that the loop still reads as a loop. Both guards follow one rule: a run that cannot go on
stops with one line of advice (`RunAborted`, which the session turns into `RunFailed`), and nothing it cannot trust
is ever written over a good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tuitune.config import RunProfile


class RunAborted(Exception):
    """The run cannot go on, for a reason that is neither bad input nor a bug (a non-finite loss, out of memory).
    The message is one line with advice; the session reports it as `RunFailed` (exit 1) without a traceback."""

    def __init__(self, message: str, *, kind: str, epoch: int = 0, global_step: int = 0) -> None:
        super().__init__(message)
        self.message, self.kind, self.epoch, self.global_step = message, kind, epoch, global_step


class NonFiniteGuard:
    """Catches non-finite losses without a per-step host sync.

    Each step, `check` builds a 0-dim bool on the device (is this step finite?) and adds a non-finite step to a
    device counter. In `skip` mode `drop_if_bad` then zeroes that step's gradients on the device with
    `masked_fill_` (a multiply would not do: NaN * 0 is NaN), so nothing non-finite reaches the weights or the
    optimizer state, and an optimizer that speaks GradScaler's `found_inf` protocol (the fused ones) skips its update
    outright. The counter is read by `settle`, together with the metrics: the host sync the loop already makes.
    """

    def __init__(self, mode: str, max_skipped: int, device: torch.device) -> None:
        self.mode, self.max_skipped = mode, max_skipped
        self.bad = torch.zeros((), dtype=torch.long, device=device)  # non-finite steps since the last read
        self.skipped = 0  # steps skipped over the whole run, as of the last read (saved in checkpoints)

    @property
    def skips(self) -> bool:
        return self.mode == "skip"

    @staticmethod
    def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
        """The total gradient norm, on the device (for `skip` without clipping: a non-finite gradient counts too)."""
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> torch.Tensor:
        """A 0-dim bool on the device: True when this step's loss (and gradient norm, when given) is finite."""
        finite = torch.isfinite(loss.detach())
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        self.bad += (~finite).long()
        return finite

    def drop_if_bad(self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], finite: torch.Tensor) -> None:
        """`skip` mode, before `optimizer.step()`: zero a non-finite step's gradients (no host sync)."""
        if not self.skips:
            return
        bad = ~finite
        for g in grads:
            g.masked_fill_(bad, 0.0)
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = bad.float()

    @staticmethod
    def after_step(optimizer: torch.optim.Optimizer) -> None:
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf

    def settle(self, bad_steps: int, *, epoch: int, global_step: int, checkpoint_note: str) -> str:
        """Act on the non-finite steps counted since the last read (`bad_steps`, read with the metrics). Returns a
        warning for the event log ("" when all was well); raises `RunAborted` when the run must stop."""
        if bad_steps <= 0:
            return ""
        self.bad.zero_()
        where = f"by step {global_step} (epoch {epoch})"
        if not self.skips:
            raise RunAborted(
                f"non-finite loss in {bad_steps} step(s) {where}: the run stopped and saved nothing since; "
                f'{checkpoint_note}; try a lower train.lr, train.grad_clip = 1.0, or train.on_nonfinite = "skip"',
                kind="nonfinite",
                epoch=epoch,
                global_step=global_step,
            )
        self.skipped += bad_steps
        if self.skipped > self.max_skipped:
            raise RunAborted(
                f"non-finite loss or gradients in {self.skipped} steps {where}, more than train.max_skipped = "
                f"{self.max_skipped}: the run stopped; {checkpoint_note}; try a lower train.lr or "
                f"train.grad_clip = 1.0",
                kind="nonfinite",
                epoch=epoch,
                global_step=global_step,
            )
        return (
            f"skipped {bad_steps} step(s) with a non-finite loss or gradients {where}; {self.skipped} of at "
            f"most train.max_skipped = {self.max_skipped} so far"
        )


def all_finite(model: torch.nn.Module) -> bool:
    """Every floating tensor of the model (weights and buffers such as BatchNorm statistics) is finite. One host
    sync: called only when a checkpoint is about to be written, never per step."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ----------------------------------------------------------------------------------------------------- memory


def is_oom(error: BaseException) -> bool:
    """CUDA (or any allocator) out of memory: torch's own error type, or the older RuntimeError wording."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory() -> None:
    """Give cached blocks back after an OOM, so an app that stays alive (the dashboard) can start another run."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_message(profile: RunProfile, run_dir: Path, position: str, checkpoint_note: str, resumable: bool) -> str:
    """One line: where it ran out, what to change, and how to continue (only from an epoch-boundary `last`: a
    mid-epoch one replays its epoch by step count, which a new batch size would not match)."""
    batch = profile.data.batch_size
    half = max(1, batch // 2) if isinstance(batch, int) else 1  # "auto" failed before it chose: the smallest
    from tuitune.engine.data.kinds import input_task

    size_key = "model.max_length" if input_task(profile.data, profile.model) == "text" else "model.img_size"
    advice = (
        f"lower data.batch_size (now {batch}; e.g. --set data.batch_size={half}), {size_key}, or the "
        f"trainable layers (a progressive or head_only strategy)"
    )
    resume = f"; continue with: tuitune train --resume {run_dir} --set data.batch_size={half}" if resumable else ""
    return f"out of memory {position}: {advice}; {checkpoint_note}{resume}"
