"""Tasks as one table: for each `model.task`, how its model is built (with its layer groups and, under LoRA, its
adapters), what a step minimises and how a run is scored (its objective and metrics), and how the model is exported.
The engine asks nothing else about `model.task`; which profiles a task accepts is the profile side's table
(`tuitune.config.tasks`), checked when the profile is read.

Adding a task is one `TASKS` entry and its functions: a builder with `rebuild.profile_backbone`'s signature (the
model, its groups from input to "head", LoRA applied when the strategy asks), an objective with the methods of
`TaskObjective`, and an export writer (`Writer`).

Why here, in the training layer: the objectives are training code, the builders are below it (model, rebuild), and
the tools above (export, layers, lr-find) read this table. The classifier's writers are older tools code
(`tuitune.engine.tools.export`: a timm folder, or `save_pretrained` of an AutoModelFor*Classification); its entry
names none (`export=None`), and the tools layer falls back to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tuitune.engine.model.causal_lm import causal_backbone
from tuitune.engine.rebuild import Builder, profile_backbone, rebuild_model
from tuitune.engine.train.causal_lm import CausalObjective, write_causal_export
from tuitune.engine.train.objective import Objective

if TYPE_CHECKING:
    import torch

    from tuitune.config import RunProfile
    from tuitune.engine.events import Event
    from tuitune.engine.model.groups import Backbone
    from tuitune.engine.train.parts import RunParts
    from tuitune.engine.train.scoring import Scorer

Emit = Callable[["Event"], None]
# (backbone with its best weights, profile, outputs, folder, examples to sample) -> the export's manifest entries
Writer = Callable[["Backbone", "RunProfile", tuple[str, ...], Path, int], dict[str, Any]]

__all__ = ["TASKS", "Task", "TaskObjective", "rebuild_run", "task_of"]


class TaskObjective(Protocol):
    """What the loop, the controller, the checkpoints and the LR finder ask of a task's objective."""

    scorer: Scorer
    train_loss: torch.nn.Module  # criterion(out, y): the LR finder's loss
    ema: Any  # timm's ModelEmaV3 of the weights, or None

    def targets(self, x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

    def forward(self, model: torch.nn.Module, x: Any) -> tuple[torch.Tensor, Any]: ...

    def loss(self, out: torch.Tensor, y: torch.Tensor, x: Any, aux: Any) -> torch.Tensor: ...

    def after_step(self, model: torch.nn.Module, global_step: int) -> None: ...

    def window_tensors(self) -> list[torch.Tensor]: ...

    def window_extra(self, values: list[float]) -> dict[str, float]: ...

    def evaluate(
        self, model: torch.nn.Module, loader: Any, parts: RunParts, *, thumbs: bool = True, sharded: bool = False
    ) -> dict[str, Any]: ...

    def epoch_extras(self, val: dict[str, Any], parts: RunParts) -> dict[str, float]: ...

    def epoch_events(self, epoch: int, global_step: int) -> list[Event]:
        """Events about the last validation beyond `EpochEnded` (a language model's samples), in order."""

    def generate_now(self, parts: RunParts, epoch: int, global_step: int) -> tuple[str, Event | None]:
        """`GenerateSamples`: the samples now, as an event, and a line for the command's log entry."""

    def last_samples(self) -> tuple[dict[str, Any], ...]:
        """The latest samples, for the run's summary (none for tasks that do not generate)."""


@dataclass(frozen=True)
class Task:
    build: Builder  # (profile, model_cfg=None, emit=None, classes=None) -> (backbone, outputs, notes)
    objective: Callable[[RunProfile, RunParts, Emit | None], TaskObjective]
    export: Writer | None  # None: the classifier writers of `tuitune.engine.tools.export`


def _classifier_objective(profile: RunProfile, parts: RunParts, emit: Emit | None) -> TaskObjective:
    return Objective(profile, parts)


TASKS: dict[str, Task] = {
    "classify": Task(build=profile_backbone, objective=_classifier_objective, export=None),
    "causal_lm": Task(build=causal_backbone, objective=CausalObjective, export=write_causal_export),
}


def task_of(profile: RunProfile) -> Task:
    """The profile's task entry (its name was checked when the profile was read)."""
    return TASKS[profile.model.task]


def rebuild_run(run_dir: Path, tag: str = "best") -> tuple[RunProfile, Backbone, tuple[str, ...]]:
    """A finished run's model with `checkpoints/<tag>.safetensors` loaded, built by its task's builder."""
    return rebuild_model(Path(run_dir), tag, builder=lambda profile: task_of(profile).build)
