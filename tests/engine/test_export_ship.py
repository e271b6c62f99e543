"""Exports that ship: `tuitune export RUN --onnx` (checked against PyTorch with onnxruntime on the run's own val data,
dynamic batch, and for text dynamic sequence; LoRA merged first) and `--push-to-hub` (huggingface_hub's upload with a
model card) against the stand-in hub on 127.0.0.1, read back with huggingface_hub's own `list_repo_files` and
`hf_hub_download`. Everything in-process: one tiny steered run, one tiny BERT run folder, three ONNX exports. The ONNX
tests need the `onnx` extra (not in `test`: ~15 s of CPU, the exporter's tracing) and are skipped without it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import tiny_profile
from tests.engine.hf_fixtures import make_tiny_hf_dir
from tests.engine.hub_server import StandInHub
from tuitune.cli import main
from tuitune.config import dump_toml, profile_from_dict, profile_to_dict
from tuitune.engine.commands import Control, ScaleGroupLR, UnfreezeNext
from tuitune.engine.session import run_training
from tuitune.engine.tools import onnx_export
from tuitune.engine.tools.export import export_run

TOKEN = "hf_test_token"
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="pip install 'tuitune[onnx]'",
)
REPO = "tuitune-tests/steered"


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny progressive run that a person steered: unfreeze from the dashboard, an LR change from a socket client."""
    run_dir = tmp_path_factory.mktemp("steered")
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 5}, train={"epochs": 1}
    )
    control = Control()
    control.put(UnfreezeNext(), sender="dashboard")
    control.put(ScaleGroupLR(None, 0.5), sender="socket client 3")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = run_training(profile, run_dir, lambda e: None, control, interactive=False)
    finally:
        torch.set_num_threads(before)
    assert final.status == "finished"
    return run_dir


# ------------------------------------------------------------------------------------------------------- ONNX


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@needs_onnx
def test_onnx_export_of_an_image_run_prints_parity_and_takes_any_batch(steered_run, capsys) -> None:
    out = steered_run / "onnx-export"
    assert main(["export", str(steered_run), "--out", str(out), "--onnx", "--sample", "0"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("onnx: "))
    manifest = json.loads((out / "export.json").read_text())["onnx"]
    assert f"largest |diff| {manifest['max_abs_diff']:.2e} (limit 0.0001)" in line, line
    assert manifest["max_abs_diff"] <= 1e-4 and manifest["inputs"] == ["input"]
    (first,), (second,) = manifest["checked_shapes"]
    assert first[0] == 16 and second[0] == 9 and first[1:] == second[1:] == [3, 32, 32]  # two batch sizes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left
    session = _session(out / "model.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"
    from tuitune.engine.rebuild import rebuild_model

    model = rebuild_model(steered_run)[1].model
    x = torch.randn(5, 3, 32, 32)  # a batch size the check never used
    with torch.inference_mode():
        expected = model(x)
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4)


def _lora_text_run(tmp_path: Path) -> Path:
    """A run folder for a tiny BERT under LoRA with tuitune's mean pooling: profile + a checkpoint whose adapters
    are not zero (a fresh LoRA B is zero: merged or not would be the same model)."""
    from safetensors.torch import save_model

    from tuitune.engine.rebuild import profile_backbone

    profile = profile_from_dict(
        {
            "model": {"source": "hf", "name": str(make_tiny_hf_dir(tmp_path, "bert")), "pooling": "mean"},
            "data": {"kind": "synthetic", "num_samples": 40, "num_classes": 3, "batch_size": 6},
            "strategy": {"kind": "lora", "lora_rank": 4},
        },
        "lora-text.toml",
    )
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)))
    torch.manual_seed(1)
    backbone, _, _ = profile_backbone(profile)
    assert backbone.lora is not None and backbone.task == "text"
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            p.add_((0.2 if "lora_" in name else 0.01) * torch.randn_like(p))
    save_model(backbone.model, str(run_dir / "checkpoints" / "best.safetensors"))
    return run_dir


@needs_onnx
def test_onnx_export_of_a_lora_text_run_is_merged_with_dynamic_batch_and_sequence(tmp_path) -> None:
    import onnx

    run_dir = _lora_text_run(tmp_path)
    manifest = export_run(run_dir, sample=0, onnx=True)
    result = manifest["onnx"]
    assert manifest["lora_merged"] and result["max_abs_diff"] <= 1e-4
    assert result["inputs"] == ["input_ids", "attention_mask"]
    (ids1, mask1), (ids2, mask2) = result["checked_shapes"]
    assert ids1 == mask1 and ids2 == mask2 and ids1[0] != ids2[0] and ids1[1] != ids2[1]  # batch and length
    graph = onnx.load(result["path"]).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]

    from tuitune.engine.rebuild import rebuild_model

    adapters = rebuild_model(run_dir)[1].model  # the model as trained: adapters beside the base weights
    # merged: no node traced through an adapter (the exporter records each node's module path), and no more weights
    # than the base model has (the exporter renames the transposed ones it folds, so names alone would not show it)
    assert not [p.value for n in graph.node for p in n.metadata_props if "lora" in p.value.lower()]
    base = sum(p.numel() for name, p in adapters.named_parameters() if "lora_" not in name)
    assert sum(int(torch.tensor(list(i.dims)).prod()) for i in graph.initializer) <= base
    ids = torch.randint(5, 30, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        expected = adapters({"input_ids": ids, "attention_mask": mask})
    got = _session(Path(result["path"])).run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert torch.allclose(torch.from_numpy(got[0]), expected, atol=1e-4)


@needs_onnx
def test_onnx_export_over_the_limit_exits_1_and_writes_no_file(steered_run, monkeypatch, capsys) -> None:
    """Any real difference is over a negative limit: the real export and check, then the failure path."""
    monkeypatch.setattr(onnx_export, "PARITY_ATOL", -1.0)
    out = steered_run / "failed-onnx"
    assert main(["export", str(steered_run), "--out", str(out), "--onnx", "--sample", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx not written" in err[0] and "limit -1" in err[0], err
    assert not (out / "model.onnx").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "export.json").read_text())["onnx"]["written"] is False
    assert (out / "model.safetensors").is_file()  # the rest of the export stands


def test_onnx_without_its_libraries_is_one_line_before_anything_is_written(steered_run, monkeypatch, capsys) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name)
    )
    out = steered_run / "no-onnx"
    assert main(["export", str(steered_run), "--out", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tuitune: error: --onnx needs onnxruntime: pip install 'tuitune[onnx]'"], err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ push to hub


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """HF_ENDPOINT (read at push time), a token, online (huggingface_hub read the tests' HF_HUB_OFFLINE=1 when it
    was imported)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with StandInHub({}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        # online, huggingface_hub would fetch its registry of AI agents (for its user-agent header) from its default
        # hub, the internet, once per process: it has one already, empty
        monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
        yield hub


def test_push_to_hub_uploads_the_export_and_a_card_privately(steered_run, hub_env, capsys) -> None:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    hub = hub_env
    out = steered_run / "push-export"
    assert main(["export", str(steered_run), "--out", str(out), "--sample", "8", "--push-to-hub", REPO]) == 0
    printed = capsys.readouterr().out
    assert f"to {hub.url}/{REPO} (private" in printed
    assert hub.created[REPO]["private"] is True
    files = HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(REPO)
    assert sorted(files) == ["README.md", "classes.json", "config.json", "model.safetensors", "profile.toml"]
    assert (out / "sample.safetensors").is_file()  # kept local: the user's val inputs
    got = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=TOKEN, cache_dir=str(out.parent / "dl"))
    assert Path(got).read_bytes() == (out / "model.safetensors").read_bytes()

    card_path = hf_hub_download(REPO, "README.md", endpoint=hub.url, token=TOKEN, cache_dir=str(out.parent / "dl"))
    card = ModelCard.load(card_path)
    assert card.data.library_name == "timm" and "tuitune" in card.data.tags
    assert card.data.pipeline_tag == "image-classification"
    text = card.text
    assert "| 1 | 0 | UnfreezeNext | - | dashboard |" in text, text
    assert "| ScaleGroupLR | all groups x0.5 | socket client 3 |" in text, text
    summary = json.loads((steered_run / "summary.json").read_text())
    assert f"(`{summary['best']['value']}`) at epoch {summary['best']['epoch']}" in text
    assert f"| final | val loss | {summary['final']['val_loss']:.4f} |" in text
    assert "| 2 | " in text and "(manual)" in text  # the phase the unfreeze began


def test_push_refusals_are_one_line_and_leave_the_run_alone(steered_run, hub_env, monkeypatch, capsys) -> None:
    hub = hub_env
    listing = sorted(p.relative_to(steered_run) for p in steered_run.rglob("*"))
    out = steered_run / "refused"

    def push(*extra: str) -> tuple[int, list[str]]:
        code = main(["export", str(steered_run), "--out", str(out), "--sample", "0", *extra])
        return code, capsys.readouterr().err.strip().splitlines()

    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(out.parent / "no-login" / "token"))  # no saved login either
    code, err = push("--push-to-hub", REPO)
    assert code == 2 and len(err) == 1 and "no Hugging Face token" in err[0], err
    assert not out.exists() and not hub.requests  # refused before the export and before any request
    code, err = push("--push-to-hub", "not a repo")
    assert code == 2 and len(err) == 1 and "org/name" in err[0], err
    assert sorted(p.relative_to(steered_run) for p in steered_run.rglob("*")) == listing

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, err = push("--push-to-hub", REPO)
    assert code == 2 and len(err) == 1 and "answered 401" in err[0], err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.fail["create"] = "500"
    code, err = push("--push-to-hub", REPO)
    assert code == 1 and len(err) == 1 and "answered 500" in err[0], err
    assert REPO not in hub.repos
    del hub.fail["create"]

    assert push("--push-to-hub", "tuitune-tests/open", "--public")[0] == 0
    assert hub.created["tuitune-tests/open"]["private"] is False
    code, err = push("--push-to-hub", "tuitune-tests/open")  # private by default: not into a public repo
    assert code == 2 and len(err) == 1 and "exists and is public" in err[0], err
    assert len(hub.commits) == 1


def test_the_card_names_the_base_model_by_its_hub_id_only_when_it_has_one() -> None:
    from tuitune.engine.tools.model_card import base_model_id

    def base(**model: object) -> str | None:
        return base_model_id(profile_from_dict({"model": model, "data": {"kind": "synthetic"}}, "card.toml"))

    assert base(source="hf", name="org/bert-small", pretrained=True) == "org/bert-small"
    assert base(source="timm", name="resnet18", pretrained=True) == "timm/resnet18.a1_in1k"  # timm's own registry
    assert base(source="timm", name="hf-hub:org/my-vit", pretrained=True) == "org/my-vit"
    assert base(source="timm", name="resnet18", pretrained=False) is None  # random init: no base
    assert base(source="timm", name="resnet18", weights="/tmp/w.safetensors") is None  # a local file: no hub id


def test_the_cards_metrics_give_each_class_a_row_and_the_best_by_its_own_metric() -> None:
    """The test split's per-class scores were one row holding a dict; a language model's best (exact match) was
    formatted as the plotted score."""
    from tuitune.engine.events import RunFinished
    from tuitune.engine.tools.model_card import RunStory, _metrics

    finished = RunFinished(
        status="finished",
        reason="",
        best={"metric": "val_exact_match", "value": 0.5, "epoch": 2},
        final={"epoch": 3, "val_loss": 0.25, "val_score": 0.9},
        test={"loss": 0.3, "score": 0.8, "per_class": {"ham": 0.95, "spam": 0.65}},
        **dict(epochs=3, global_step=30, phases=(), per_class_acc={}, samples_per_s=1.0, wall_s=1.0, checkpoints={}),
    )
    profile = profile_from_dict({"model": {"name": "resnet18"}, "data": {"kind": "synthetic"}}, "card.toml")
    story = RunStory(profile, finished=finished)
    text = _metrics(story)
    assert "Best `val_exact_match` 50.00% (`0.5`) at epoch 2." in text
    assert "| test | acc: spam | 65.00% | 0.65 |" in text and "{" not in text and "| final | epoch" not in text
