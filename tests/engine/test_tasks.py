"""The task table: `model.task` picks one entry (its builder, objective and export), the profile side's rules
(`tuitune.config.tasks`) name the same tasks, and the engine asks the entry, not the task's name."""

from __future__ import annotations

import dataclasses

import pytest

from tests.engine.conftest import tiny_profile
from tuitune.config.tasks import TASK_RULES
from tuitune.engine.commands import Control
from tuitune.engine.train import tasks
from tuitune.engine.train.loop import Trainer


def test_the_profile_and_the_engine_name_the_same_tasks() -> None:
    assert set(TASK_RULES) == set(tasks.TASKS)


def test_the_loop_builds_and_scores_through_the_task_entry(tmp_path, monkeypatch) -> None:
    """A run asks its task's entry for the model and the objective: an entry that wraps the classifier's is used."""
    used: list[str] = []
    real = tasks.TASKS["classify"]

    def build(*args, **kwargs):
        used.append("build")
        return real.build(*args, **kwargs)

    def objective(profile, parts, emit):
        used.append("objective")
        return real.objective(profile, parts, emit)

    monkeypatch.setitem(tasks.TASKS, "classify", dataclasses.replace(real, build=build, objective=objective))
    profile = tiny_profile(train={"epochs": 1, "max_steps_per_epoch": 1})
    Trainer(profile, tmp_path, lambda e: None, Control()).run()
    assert used == ["build", "objective"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"checkpoint_metric": "val_exact_match"}}, "train.checkpoint_metric"),
        ({"data": {"kind": "chat", "path": "x.jsonl"}}, "data.kind: 'chat' data does not fit model.task = 'classify'"),
    ],
)
def test_a_profile_the_task_cannot_run_is_one_line(override, message) -> None:
    from tuitune.config import ProfileError

    with pytest.raises(ProfileError, match=message) as e:
        tiny_profile(**override)
    assert "\n" not in str(e.value)
