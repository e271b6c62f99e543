"""Backbones and layer groups: timm and transformers models built offline from tiny configs."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.config import ModelConfig
from tuitune.engine.model.backbone import (
    Backbone,
    HFClassifier,
    LayerGroup,
    ModelError,
    build_backbone,
    layer_groups,
    layer_table,
)
from tuitune.errors import UserError

TINY_RESNET18 = {"channels": (8, 16, 32, 64), "stem_width": 8}


def assert_partition(model: torch.nn.Module, groups: tuple[LayerGroup, ...]) -> None:
    """Every parameter exactly once, counts add up, names unique, head last."""
    names = [n for n, _ in model.named_parameters()]
    assigned = Counter(n for g in groups for n in g.param_names)
    assert sorted(assigned) == sorted(names)
    assert max(assigned.values()) == 1
    assert sum(g.params for g in groups) == sum(p.numel() for p in model.parameters())
    assert len({g.name for g in groups}) == len(groups)
    assert groups[-1].name == "head"


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: make_tiny_hf_dir(root, arch) for arch in ("bert", "distilbert", "roberta", "vit")}


def timm_cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(source="timm", name=name, **{"pretrained": False, **kw})


def hf_cfg(path: Path, **kw) -> ModelConfig:
    return ModelConfig(source="hf", name=str(path), **{"pretrained": False, **kw})


# ---------------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    "name, kwargs, coarse, expected",
    [
        ("test_resnet", {}, True, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
        ("resnet18", TINY_RESNET18, True, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
        (
            "resnet18",
            TINY_RESNET18,
            False,
            [
                "stem",
                "layer1.0",
                "layer1.1",
                "layer2.0",
                "layer2.1",
                "layer3.0",
                "layer3.1",
                "layer4.0",
                "layer4.1",
                "head",
            ],
        ),
        ("test_convnext", {}, True, ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]),
        ("test_vit", {}, True, ["stem"] + [f"blocks.{i}" for i in range(6)] + ["head"]),
        ("test_efficientnet", {}, True, ["stem"] + [f"blocks.{i}" for i in range(5)] + ["head"]),
    ],
)
def test_timm_groups(name: str, kwargs: dict, coarse: bool, expected: list[str]) -> None:
    bb = build_backbone(timm_cfg(name, kwargs=kwargs), num_classes=5, coarse=coarse)
    assert [g.name for g in bb.groups] == expected
    assert_partition(bb.model, bb.groups)
    classifier = bb.model.pretrained_cfg["classifier"]
    assert f"{classifier}.weight" in bb.groups[-1].param_names
    assert bb.task == "image" and bb.tokenizer is None
    assert bb.description.startswith(f"timm {name} (")


def test_convnext_head_keeps_its_norm() -> None:
    groups = build_backbone(timm_cfg("test_convnext"), num_classes=3).groups
    assert set(groups[-1].param_names) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}


def test_vit_final_norm_joins_last_block() -> None:
    groups = build_backbone(timm_cfg("test_vit"), num_classes=3).groups
    assert "norm.weight" in groups[-2].param_names and groups[-2].name == "blocks.5"
    assert groups[-1].param_names == ("head.weight", "head.bias")


@pytest.mark.parametrize(
    "name, kwargs", [("test_resnet", {}), ("test_convnext", {}), ("test_vit", {}), ("resnet18", TINY_RESNET18)]
)
def test_timm_forward_at_img_size(name: str, kwargs: dict) -> None:
    bb = build_backbone(timm_cfg(name, kwargs=kwargs, img_size=32), num_classes=4)
    assert bb.data_config["input_size"] == (3, 32, 32)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(bb.data_config)
    bb.model.eval()
    with torch.no_grad():
        assert bb.model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_timm_default_data_config() -> None:
    bb = build_backbone(timm_cfg("test_resnet"), num_classes=2)
    assert bb.data_config["input_size"] == (3, 160, 160)


def test_fallback_groups_for_plain_module() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3))
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["0", "2", "head"]
    assert_partition(model, groups)


# ------------------------------------------------------------------------------------------------- weights


def _source_model(num_classes: int = 7) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pth_model_dict"])
def test_weights_file_loads_backbone_and_recreates_head(tmp_path: Path, fmt: str) -> None:
    src = _source_model(num_classes=7)
    sd = src.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    elif fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": sd}, path)
    bb = build_backbone(timm_cfg("test_resnet", weights=str(path)), num_classes=3)
    assert bb.model.fc.weight.shape[0] == 3
    assert torch.equal(bb.model.conv1[0].weight, src.conv1[0].weight)
    assert torch.equal(bb.model.layer4[0].bn1.running_mean, src.layer4[0].bn1.running_mean)
    assert "weights w." in bb.description


def test_weights_with_same_head_shape_load_the_head_only_with_keep_head(tmp_path: Path) -> None:
    src = _source_model(num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    kept = build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "w.pt"), keep_head=True), num_classes=3)
    assert torch.equal(kept.model.fc.weight, src.fc.weight)
    fresh = build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "w.pt")), num_classes=3)
    assert not torch.equal(fresh.model.fc.weight, src.fc.weight)  # re-created for this run's classes
    assert torch.equal(fresh.source_head["fc.weight"], src.fc.weight)  # and the old one kept aside


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_vit", num_classes=3).state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(ModelError, match=r"weights do not fit timm model test_resnet: \d+ of \d+ tensors"):
        build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "vit.safetensors")), num_classes=3)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "nope.pt")), num_classes=3)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_timm_name_suggests() -> None:
    with pytest.raises(ModelError, match=r"unknown timm model 'resnt18' \(did you mean resnet18\?\)") as e:
        build_backbone(timm_cfg("resnt18"), num_classes=3)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_pretrained_not_cached_says_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    with pytest.raises(ModelError) as e:
        build_backbone(timm_cfg("test_resnet", pretrained=True), num_classes=3)
    msg = str(e.value)
    assert msg.startswith("model.pretrained: no cached pretrained weights for timm model 'test_resnet'")
    assert "timm.create_model('test_resnet', pretrained=True)" in msg and "model.weights" in msg
    assert "\n" not in msg


def test_bad_kwargs_are_a_user_error() -> None:
    with pytest.raises(ModelError, match="model.kwargs"):
        build_backbone(timm_cfg("test_resnet", kwargs={"no_such_arg": 1}), num_classes=3)


def test_timm_text_task_rejected() -> None:
    with pytest.raises(ModelError, match="model.source"):
        build_backbone(timm_cfg("test_resnet"), num_classes=3, task="text")


def test_hf_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json"):
        build_backbone(hf_cfg(tmp_path), num_classes=3, task="text")


def test_hf_hub_id_not_cached() -> None:
    with pytest.raises(ModelError, match="not in the local cache.*hf download tuitune-tests/no-such-model"):
        build_backbone(ModelConfig(source="hf", name="tuitune-tests/no-such-model"), num_classes=3, task="text")


# ------------------------------------------------------------------------------------------------------ hf


@pytest.mark.parametrize(
    "arch, task, pooling, expected",
    [
        ("bert", "text", "model", ["embeddings", "layer.0", "layer.1", "pooler", "head"]),
        ("bert", "text", "mean", ["embeddings", "layer.0", "layer.1", "pooler", "head"]),
        ("distilbert", "text", "model", ["embeddings", "layer.0", "layer.1", "head"]),
        ("roberta", "text", "model", ["embeddings", "layer.0", "layer.1", "head"]),
        ("roberta", "text", "mean", ["embeddings", "layer.0", "layer.1", "pooler", "head"]),
        ("vit", "image", "model", ["embeddings", "layer.0", "layer.1", "layernorm", "head"]),
    ],
)
def test_hf_groups(hf_dirs: dict[str, Path], arch: str, task: str, pooling: str, expected: list[str]) -> None:
    bb = build_backbone(hf_cfg(hf_dirs[arch], pooling=pooling), num_classes=3, task=task)
    assert isinstance(bb, Backbone) and isinstance(bb.model, HFClassifier)
    assert [g.name for g in bb.groups] == expected
    assert_partition(bb.model, bb.groups)
    head = bb.groups[-1].param_names
    assert head and all(not n.startswith("hf.") for n in head) == (pooling == "mean")
    assert all(re.search(r"\.layers?\.0\.", n) for n in bb.groups[1].param_names)  # ViT: `vit.layers.0`


def test_hf_groups_on_bare_model(hf_dirs: dict[str, Path]) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(hf_dirs["distilbert"]))
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "layer.0", "layer.1", "head"]
    assert set(groups[-1].param_names) == {
        "pre_classifier.weight",
        "pre_classifier.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert_partition(model, groups)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_hf_text_forward(hf_dirs: dict[str, Path], arch: str) -> None:
    bb = build_backbone(hf_cfg(hf_dirs[arch], pretrained=True), num_classes=4, task="text")
    assert bb.data_config == {} and bb.tokenizer is not None
    batch = bb.tokenizer(["the cat sat on the mat", "a good movie"], padding=True, return_tensors="pt")
    assert "[UNK]" not in bb.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    bb.model.eval()
    with torch.no_grad():
        assert bb.model(dict(batch)).shape == (2, 4)


def test_mean_pooling_is_masked_mean_and_differs_from_model_pooling(hf_dirs: dict[str, Path]) -> None:
    torch.manual_seed(0)
    mean = build_backbone(hf_cfg(hf_dirs["bert"], pretrained=True, pooling="mean"), num_classes=3, task="text")
    own = build_backbone(hf_cfg(hf_dirs["bert"], pretrained=True, pooling="model"), num_classes=3, task="text")
    tok = mean.tokenizer
    short = dict(tok(["a good movie"], return_tensors="pt"))
    padded = dict(tok(["a good movie"], padding="max_length", max_length=12, return_tensors="pt"))
    mean.model.eval(), own.model.eval()
    with torch.no_grad():
        a, b = mean.model(short), mean.model(padded)
        hidden = mean.model.hf(**short).last_hidden_state
        assert torch.allclose(a, mean.model.head(hidden.mean(dim=1)), atol=1e-5)
        assert torch.allclose(a, b, atol=1e-5)  # padding is masked out of the mean
        assert not torch.allclose(a, own.model(short), atol=1e-3)


def test_hf_image_forward_and_data_config(hf_dirs: dict[str, Path]) -> None:
    bb = build_backbone(hf_cfg(hf_dirs["vit"], pretrained=True), num_classes=5, task="image")
    assert bb.tokenizer is None
    assert bb.data_config["input_size"] == (3, 32, 32)
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5) and bb.data_config["std"] == (0.25, 0.25, 0.25)
    bb.model.eval()
    with torch.no_grad():
        assert bb.model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("pretrained", [False, True])
def test_hf_image_other_size(hf_dirs: dict[str, Path], pretrained: bool) -> None:
    bb = build_backbone(hf_cfg(hf_dirs["vit"], pretrained=pretrained, img_size=48), num_classes=2, task="image")
    assert bb.data_config["input_size"] == (3, 48, 48)
    bb.model.eval()
    with torch.no_grad():
        assert bb.model(torch.randn(1, 3, 48, 48)).shape == (1, 2)


def test_hf_pretrained_loads_folder_weights(hf_dirs: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(hf_dirs["bert"] / "model.safetensors"))
    key = next(k for k in saved if k.endswith("layer.1.output.dense.weight"))
    bb = build_backbone(hf_cfg(hf_dirs["bert"], pretrained=True), num_classes=3, task="text")
    assert torch.equal(bb.model.hf.bert.encoder.layer[1].output.dense.weight, saved[key])


def test_hf_weights_key_rejected(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="model.weights"):
        build_backbone(hf_cfg(hf_dirs["bert"], weights="x.pt"), num_classes=3, task="text")


# ---------------------------------------------------------------------------------------------------- table


def test_layer_table() -> None:
    groups = (LayerGroup("stem", ("a",), 10), LayerGroup("head", ("b",), 3))
    assert layer_table(groups) == [
        {"name": "stem", "params": 10, "trainable": True},
        {"name": "head", "params": 3, "trainable": True},
    ]
    assert [r["trainable"] for r in layer_table(groups, {"head"})] == [False, True]


def test_weights_without_num_batches_tracked_report_nothing_missing(tmp_path: Path) -> None:
    """A checkpoint saved without BatchNorm's `num_batches_tracked` counters (as many published ones are) is
    complete: only parameters and running statistics count as tensors "not in the file"."""
    from safetensors.torch import save_file

    sd = {k: v for k, v in _source_model(num_classes=7).state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, str(tmp_path / "w.safetensors"))
    bb = build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "w.safetensors")), num_classes=3)
    assert "not in the file" not in bb.description
    del sd["layer4.0.bn1.running_var"]  # a running statistic is still counted
    save_file(sd, str(tmp_path / "w2.safetensors"))
    bb = build_backbone(timm_cfg("test_resnet", weights=str(tmp_path / "w2.safetensors")), num_classes=3)
    assert "weights w2.safetensors, 1 tensors not in the file" in bb.description
