"""Learning-rate schedules that survive progressive unfreezing.

The decay shapes are timm's (`CosineLRScheduler`, `StepLRScheduler`) and torch's (`OneCycleLR`,
`ReduceLROnPlateau`), but they drive a one-parameter *proxy* optimizer at LR 1.0 instead of the real one: those
schedulers capture the optimizer's param groups when they are built, and unfreezing adds groups later. The proxy's
LR is then a multiplier, applied to every real group's own base LR (which carries the discriminative factor), times
a linear warm-up for the run and, optionally, for each newly unfrozen group on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tuitune.config import TrainConfig

SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")


class LRSchedule:
    """The schedule's shape over a cycle: the whole run, or (`train.restart = "phase"`) each phase, started again
    by `restart` at a phase change; `offset` is the cycle's first step, `total` its length."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = cfg.epochs * self.steps_per_epoch
        self.offset = 0
        self._param = torch.zeros(1, requires_grad=True)
        self.proxy = torch.optim.SGD([self._param], lr=1.0)
        self.scheduler = self._build()

    def restart(self, global_step: int, steps: int) -> None:
        """A warm restart: the shape starts again at `global_step`, over `steps` steps (the run's warm-up is the
        first cycle's only)."""
        self.offset, self.total = global_step, max(1, steps)
        self.proxy.param_groups[0]["lr"] = 1.0
        self.scheduler = self._build()

    def _build(self) -> Any:
        warmup = self.cfg.warmup_steps if self.offset == 0 else 0
        cfg, decay_total = self.cfg, max(1, self.total - warmup)
        if cfg.schedule == "cosine":
            from timm.scheduler import CosineLRScheduler

            return CosineLRScheduler(self.proxy, t_initial=decay_total, lr_min=cfg.min_lr_ratio, t_in_epochs=False)
        if cfg.schedule == "step":
            from timm.scheduler import StepLRScheduler

            return StepLRScheduler(
                self.proxy,
                decay_t=cfg.decay_epochs * self.steps_per_epoch,
                decay_rate=cfg.decay_rate,
                t_in_epochs=False,
            )
        if cfg.schedule == "onecycle":
            pct = warmup / self.total if warmup else 0.3
            return torch.optim.lr_scheduler.OneCycleLR(
                self.proxy, max_lr=1.0, total_steps=self.total + 1, pct_start=min(max(pct, 0.01), 0.9)
            )
        if cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.proxy, mode="min", factor=cfg.decay_rate, patience=cfg.lr_patience, min_lr=cfg.min_lr_ratio
            )
        return None

    def factor(self, global_step: int) -> float:
        """The multiplier on every group's base LR at this step (before per-group warm-up)."""
        cfg = self.cfg
        if self.scheduler is None or cfg.schedule == "plateau":
            shape = self.proxy.param_groups[0]["lr"]
        elif cfg.schedule == "onecycle":
            shape = self._onecycle_at(global_step - self.offset)
        else:
            start = self.offset if self.offset else cfg.warmup_steps
            self.scheduler.step_update(max(0, global_step - start))
            shape = self.proxy.param_groups[0]["lr"]
        if cfg.schedule != "onecycle" and cfg.warmup_steps and global_step < cfg.warmup_steps:
            shape *= (global_step + 1) / cfg.warmup_steps
        return shape

    def _onecycle_at(self, step: int) -> float:
        """OneCycleLR is a stepped object; advance it to `step` of its cycle (it only moves forward)."""
        import warnings

        target = min(max(0, step), self.total)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": the proxy never steps
            warnings.simplefilter("ignore")
            while self.scheduler.last_epoch < target:
                self.scheduler.step()
        return self.proxy.param_groups[0]["lr"]

    def epoch_end(self, val_loss: float) -> None:
        """Reduce-on-plateau watches the validation loss once per epoch."""
        if self.cfg.schedule == "plateau":
            self.scheduler.step(val_loss)

    def group_factor(self, group: dict[str, Any], global_step: int) -> float:
        """A newly unfrozen group's own warm-up, from the step it joined the optimizer."""
        warmup = self.cfg.unfreeze_warmup_steps
        start = group.get("joined_step", 0)
        if not warmup or start == 0 or global_step - start >= warmup:
            return 1.0
        return (global_step - start + 1) / warmup

    def apply(self, optimizer: torch.optim.Optimizer, global_step: int) -> None:
        shape = self.factor(global_step)
        for group in optimizer.param_groups:
            # "rgn": `strategy.kind = "auto_rgn"`'s factor for the group this epoch (`TrainerState.rescale_by_rgn`)
            group["lr"] = group["base_lr"] * shape * self.group_factor(group, global_step) * group.get("rgn", 1.0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"proxy_lr": self.proxy.param_groups[0]["lr"], "cycle": [self.offset, self.total]}
        if self.cfg.schedule == "plateau":
            state["plateau"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        offset, total = state.get("cycle", (0, self.total))  # absent before warm restarts: one run-long cycle
        if (offset, total) != (self.offset, self.total):
            self.restart(int(offset), int(total))
        self.proxy.param_groups[0]["lr"] = state["proxy_lr"]
        if self.cfg.schedule == "plateau" and "plateau" in state:
            self.scheduler.load_state_dict(state["plateau"])
