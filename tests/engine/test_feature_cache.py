"""The feature cache: the frozen prefix's output computed once per phase, rebuilt one boundary lower at each
unfreeze, never used when it would change what trains, and the same losses as without it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import of_type, tiny_profile
from tests.engine.hf_fixtures import WORDS, make_tiny_hf_dir
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.events import EpochEnded, FeatureCacheChanged, MetricsUpdated, PhaseChanged, SetupProgressed
from tuitune.engine.train import strategy
from tuitune.engine.train.loop import Trainer

PROGRESSIVE = {"kind": "progressive", "trigger": "epochs", "every_epochs": 1}


def _run(tmp_path, control: Control | None = None, emit=None, trainer_hook=None, **sections):
    events: list = []

    def sink(event) -> None:
        events.append(event)
        if emit:
            emit(event)

    trainer = Trainer(tiny_profile(**sections), tmp_path, sink, control or Control(), interactive=True)
    if trainer_hook:
        trainer_hook(trainer)
    return events, trainer.run()


def _losses(events) -> list[float]:
    return [m.train_loss for m in of_type(events, MetricsUpdated)]


def _assert_same_training(a, b) -> None:
    assert len(_losses(a)) == len(_losses(b)) > 0
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-5)
    assert [e.val_loss for e in of_type(a, EpochEnded)] == pytest.approx(
        [e.val_loss for e in of_type(b, EpochEnded)], abs=1e-5
    )


def test_head_only_with_and_without_cache_agree(tmp_path) -> None:
    cached, _ = _run(tmp_path / "a", strategy={"kind": "head_only"}, train={"epochs": 3, "log_every": 1})
    plain, _ = _run(
        tmp_path / "b", strategy={"kind": "head_only"}, train={"epochs": 3, "log_every": 1, "feature_cache": False}
    )
    changes = of_type(cached, FeatureCacheChanged)
    assert [c.active for c in changes] == [True] and "output of pre_logits" in changes[0].detail
    assert [(c.active, c.detail) for c in of_type(plain, FeatureCacheChanged)] == [
        (False, "not used: train.feature_cache is off")
    ]
    _assert_same_training(cached, plain)
    progress = of_type(cached, SetupProgressed)
    assert progress and all(p.task == "cache" for p in progress) and progress[-1].finished


def test_progressive_rebuilds_one_boundary_lower_with_the_same_losses(tmp_path) -> None:
    """Across two unfreezes: cache at pre_logits, then below layer4, then below layer3; losses as without it."""
    calls = {"stem": 0, "layer1": 0}
    per_epoch: list[dict[str, int]] = []

    def count(trainer: Trainer) -> None:
        model = trainer.parts.model
        model.conv1.register_forward_hook(lambda *_: calls.__setitem__("stem", calls["stem"] + 1))
        model.layer1[0].register_forward_hook(lambda *_: calls.__setitem__("layer1", calls["layer1"] + 1))

    def snap(event) -> None:
        if isinstance(event, (FeatureCacheChanged, EpochEnded)):
            per_epoch.append({"event": type(event).__name__, **calls})

    train = {"epochs": 3, "log_every": 1, "domain_shift": False}  # the shift view reads val batches on purpose
    cached, _ = _run(tmp_path / "a", emit=snap, trainer_hook=count, strategy=PROGRESSIVE, train=train)
    plain, _ = _run(tmp_path / "b", strategy=PROGRESSIVE, train={**train, "feature_cache": False})
    _assert_same_training(cached, plain)
    changes = [(c.active, c.detail) for c in of_type(cached, FeatureCacheChanged)]
    assert [active for active, _ in changes] == [True, True, True]
    assert changes[0][1].startswith("output of pre_logits cached (72 train, 24 val")
    assert "also stored for later phases: layer3.1, layer2.1)" in changes[0][1]  # coarse: layer4, then layer3
    assert changes[1:] == [
        (True, f"output of {b} cached (stored in the first pass): only the layers above it run")
        for b in ("layer3.1", "layer2.1")
    ]
    assert [c.global_step for c in of_type(cached, FeatureCacheChanged)[1:]] == [
        p.global_step for p in of_type(cached, PhaseChanged)
    ]
    # the frozen prefix runs only while the cache is built, once: never on cached steps, nor at the unfreezes
    assert per_epoch[0]["event"] == "FeatureCacheChanged" and per_epoch[-1]["event"] == "EpochEnded"
    assert per_epoch[0]["stem"] > 0 and per_epoch[0]["layer1"] > 0  # the hooks see the build's calls
    assert per_epoch[-1]["stem"] == per_epoch[0]["stem"] and per_epoch[-1]["layer1"] == per_epoch[0]["layer1"]


def test_hf_text_progressive_same_losses_and_skips_frozen_layers(tmp_path) -> None:
    """A tiny BERT on texts of different lengths: activations stored unpadded, losses equal to the uncached run's
    across an unfreeze, and the embeddings not called on cached epochs."""
    folder = make_tiny_hf_dir(tmp_path, "bert")
    rng = random.Random(0)
    rows = ["text,label"] + [
        f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))} {'good' if i % 2 else 'bad'},{i % 2}"
        for i in range(64)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    sections = dict(
        model={
            "source": "hf",
            "name": str(folder),
            "img_size": 0,
            "max_length": 32,
            "kwargs": {"attention_probs_dropout_prob": 0.0},
        },
        regularization={"hidden_dropout": 0.0},
        data={"kind": "text", "path": str(tmp_path / "t.csv"), "batch_size": 16},
        strategy=PROGRESSIVE,
    )
    calls = [0]
    marks: list[tuple[str, int]] = []

    def count(trainer: Trainer) -> None:
        trainer.parts.model.hf.bert.embeddings.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def snap(event) -> None:
        if isinstance(event, (FeatureCacheChanged, EpochEnded)):
            marks.append((type(event).__name__, calls[0]))

    train = {"epochs": 3, "log_every": 1}
    cached, _ = _run(tmp_path / "a", emit=snap, trainer_hook=count, train=train, **sections)
    plain, _ = _run(tmp_path / "b", train={**train, "feature_cache": False}, **sections)
    _assert_same_training(cached, plain)
    details = [c.detail for c in of_type(cached, FeatureCacheChanged) if c.active]
    assert details[0].startswith("output of layer.1 cached") and details[1].startswith("output of layer.0 cached")
    assert marks[0][0] == "FeatureCacheChanged" and marks[1] == ("EpochEnded", marks[0][1])


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {"channels": [8, 16, 32, 64], "stem_width": 8}),
        ("convnext_atto", {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}),
        ("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
        ("efficientnet_lite0", {}),
        ("mobilenetv3_small_050", {}),
    ],
)
def test_timm_splits_reproduce_the_model_at_every_boundary(name: str, kwargs: dict) -> None:
    import timm

    from tuitune.engine.train.segments import split_model, verify

    torch.manual_seed(0)
    extra = {"img_size": 32} if name.startswith("vit") else {}
    split = split_model(timm.create_model(name, num_classes=3, **kwargs, **extra))
    x = torch.randn(2, 3, 32, 32)
    assert [verify(split, x, k) for k in range(len(split.segments) - 1)] == [""] * (len(split.segments) - 1)
    owned = [n for s in split.segments for n in s.params]
    assert sorted(owned) == sorted(n for n, _ in split.model.named_parameters())  # each parameter once


def test_unknown_timm_family_says_why(tmp_path) -> None:
    events, _ = _run(
        tmp_path, model={"name": "test_byobnet", "kwargs": {}}, strategy={"kind": "head_only"}, train={"epochs": 1}
    )
    [change] = of_type(events, FeatureCacheChanged)
    assert not change.active and "timm ByobNet: its forward is not known to be a chain" in change.detail


@pytest.mark.parametrize(
    "sections, reason",
    [
        ({"train": {"epochs": 1, "cache_memory_gb": 1e-9}}, "over the budget of 0.00 GB (train.cache_memory_gb)"),
        ({"strategy": {"kind": "head_only", "freeze_bn": False}}, "(strategy.freeze_bn is off)"),
        ({"strategy": {"kind": "full"}}, "the lowest layers (stem) train: no frozen part to cache"),
    ],
)
def test_an_event_says_why_the_cache_is_not_used(tmp_path, sections: dict, reason: str) -> None:
    sections = {"strategy": {"kind": "head_only"}, "train": {"epochs": 1}, **sections}
    events, _ = _run(tmp_path, **sections)
    [change] = of_type(events, FeatureCacheChanged)
    assert not change.active and change.detail.startswith("not used: ") and reason in change.detail


def test_random_head_dropout_moves_the_boundary_below_it(tmp_path) -> None:
    """timm's head dropout sits inside forward_head: the pooled features are random, layer4's output is not."""
    sections = dict(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1},
        regularization={"drop_rate": 0.2},
        train={"epochs": 2, "log_every": 1},
    )
    events, _ = _run(tmp_path / "a", **sections)
    change = of_type(events, FeatureCacheChanged)[0]
    assert change.active and change.detail.startswith("output of layer4.1 cached")
    plain, _ = _run(tmp_path / "b", **{**sections, "train": {**sections["train"], "feature_cache": False}})
    _assert_same_training(events, plain)  # the same dropout masks: building the cache draws no random number


def test_stochastic_depth_without_freeze_dropout_stops_the_cache_below_it(tmp_path) -> None:
    """timm's drop-path rate grows linearly from 0 over the blocks: layer1.0 is deterministic, layer1.1 is not."""
    events, _ = _run(
        tmp_path,
        strategy={"kind": "head_only", "freeze_dropout": False},
        regularization={"drop_path_rate": 0.2},
        train={"epochs": 1},
    )
    [change] = of_type(events, FeatureCacheChanged)
    assert change.active and change.detail.startswith("output of layer1.0 cached")


def test_hf_dropout_without_freeze_dropout_says_why(tmp_path) -> None:
    folder = make_tiny_hf_dir(tmp_path, "vit")
    events, _ = _run(
        tmp_path / "run",
        model={"source": "hf", "name": str(folder), "img_size": 0, "kwargs": {}},
        strategy={"kind": "head_only", "freeze_dropout": False},
        regularization={"hidden_dropout": 0.1},
        train={"epochs": 1},
    )
    [change] = of_type(events, FeatureCacheChanged)
    assert not change.active and "strategy.freeze_dropout is off" in change.detail


def test_random_augmentation_is_a_reason() -> None:
    from tuitune.engine.train.feature_cache import why_not

    assert why_not(tiny_profile(augment={"train_transform": "timm"})).startswith("random train-time augmentation")
    assert why_not(tiny_profile(augment={"mixup": 0.2})).startswith("random train-time augmentation")
    assert why_not(tiny_profile()) == ""


def test_freeze_dropout_puts_frozen_modules_in_eval_and_leaves_the_head_training() -> None:
    from torch import nn

    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), nn.Dropout(0.5), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    strategy.set_train_mode(model, freeze_bn=True, freeze_dropout=True)
    assert not model[0].training and not model[0][1].training  # frozen block: its dropout is off
    assert model[1].training and model[2].training  # parameter-free root child and the head: as they were
    strategy.set_train_mode(model, freeze_bn=True, freeze_dropout=False)
    assert model[0][1].training


@pytest.mark.parametrize(
    "strategy_table, after",
    [
        ({"kind": "progressive", "trigger": "manual"}, (True, "output of layer3.1 cached (stored in the first pass)")),
        # no later phase within the epoch budget: nothing stored below, so the rest of the epoch reads real batches
        (
            {"kind": "progressive", "trigger": "epochs", "every_epochs": 2},
            (False, "dropped: the layers up to pre_logits are no longer all frozen"),
        ),
    ],
)
def test_unfreeze_mid_epoch(tmp_path, strategy_table: dict, after: tuple[bool, str]) -> None:
    control = Control()

    def emit(event) -> None:
        if isinstance(event, MetricsUpdated) and event.global_step == 1:
            control.put(UnfreezeNext())

    events, final = _run(tmp_path / "a", control, emit, strategy=strategy_table, train={"epochs": 1, "log_every": 1})
    changes = of_type(events, FeatureCacheChanged)
    assert [c.active for c in changes] == [True, after[0]] and changes[1].detail.startswith(after[1])
    assert changes[1].global_step == of_type(events, PhaseChanged)[0].global_step
    assert final.status == "finished" and len(of_type(events, MetricsUpdated)) == final.global_step
    layers = [m.lrs for m in of_type(events, MetricsUpdated)]
    assert len(layers[0]) == 1 and len(layers[-1]) == 2  # head, then head + layer4
    control = Control()
    plain, _ = _run(
        tmp_path / "b",
        control,
        emit,
        strategy=strategy_table,
        train={"epochs": 1, "log_every": 1, "feature_cache": False},
    )
    _assert_same_training(events, plain)


def test_text_store_pads_per_batch(tmp_path: Path) -> None:
    from tuitune.engine.train.feature_store import Store

    feats = torch.arange(10, dtype=torch.float32).reshape(5, 2)  # sample 0: rows 0-1, sample 1: rows 2-4
    store = Store(torch.tensor([0, 1]), feats, [0, 2, 5], torch.ones(5, dtype=torch.long))
    batch = store.get([1, 0], torch.device("cpu"))
    assert batch["inputs_embeds"].shape == (2, 3, 2) and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["inputs_embeds"][1, 2].tolist() == [0.0, 0.0]


def test_store_batch_indexes_rows_and_labels_with_one_tensor() -> None:
    from tuitune.engine.train.feature_store import Store

    feats = torch.arange(8, dtype=torch.float32).reshape(4, 2)  # gathered from 2 ranks: rows of samples 0, 2, 1, 3
    store = Store(torch.tensor([10, 11, 12, 13]), feats, rows=[0, 2, 1, 3])
    x, y = store.batch([3, 0, 1], torch.device("cpu"))
    assert x.tolist() == [[6.0, 7.0], [0.0, 1.0], [4.0, 5.0]] and y.tolist() == [13, 10, 11]
    assert torch.equal(store.get([3, 0, 1], torch.device("cpu")), x)


def test_headless_console_says_what_the_cache_does() -> None:
    import io

    from tuitune.console import ConsolePrinter

    out = io.StringIO()
    ConsolePrinter(out=out)(
        FeatureCacheChanged(active=False, detail="not used: train.feature_cache is off", epoch=0, global_step=0)
    )
    assert out.getvalue() == "feature cache off: not used: train.feature_cache is off\n"
