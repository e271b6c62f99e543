"""LoRA through peft: adapters train, base weights stay bit-identical, the merged export gives the adapted model's
outputs and loads without peft, progressive unfreezing turns on adapters, and resume reproduces an unbroken run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import tiny_profile
from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.cli import main
from tuitune.config import RunProfile, profile_from_dict
from tuitune.engine.commands import Control
from tuitune.engine.events import LayersChanged, MetricsUpdated
from tuitune.engine.model.backbone import build_backbone
from tuitune.engine.model.lora import apply_lora
from tuitune.engine.rebuild import rebuild_model
from tuitune.engine.record import checkpoint
from tuitune.engine.session import run_training
from tuitune.engine.tools.export import export_run
from tuitune.engine.train.parts import model_config, seed_everything
from tuitune.errors import UserError

VIT = {"name": "test_vit", "kwargs": {}, "img_size": 32}
VIT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _initial(profile: RunProfile, task: str = "image") -> dict[str, torch.Tensor]:
    """The weights a run of `profile` starts from (same seed, same build, same injection)."""
    seed_everything(profile.train.seed)
    backbone = build_backbone(model_config(profile), 3, task=task, coarse=profile.strategy.coarse)
    backbone, _ = apply_lora(backbone, profile.strategy)
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def _run(profile: RunProfile, run_dir: Path, emit=None, control: Control | None = None) -> list:
    events: list = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = run_training(profile, run_dir, emit or events.append, control or Control(), interactive=False)
    finally:
        torch.set_num_threads(before)
    assert final.status in ("finished", "interrupted")
    return events


PEFT_BLOCKED = """
    import json, os, sys
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['OMP_NUM_THREADS'] = '1'
    sys.modules['peft'] = None  # any `import peft` now fails
    import torch
    from safetensors.torch import load_file
    sample = load_file("{out}/sample.safetensors")
    {load}
    with torch.inference_mode():
        logits = {call}
    print(json.dumps({{"diff": (logits - sample["logits"]).abs().max().item(),
                      "peft": sys.modules.get("peft") is not None,
                      "tuitune": any(m.startswith("tuitune") for m in sys.modules)}}))
"""


def _fresh(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_run(profile: RunProfile, run_dir: Path, task: str, load: str, call: str) -> tuple[float, float]:
    """Base bit-identical, adapters and head trained, export merged and loadable without peft. Returns the max
    abs diffs (adapted model vs merged export in this process; the fresh, peft-less load vs the export)."""
    start = _initial(profile, task)
    last = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    assert set(last) == set(start)  # the names the run built are the names a fresh build gets
    adapters = [k for k in last if "lora_" in k]
    head = [k for k in last if k.startswith(("head.", "hf.classifier."))]
    base = [k for k in last if k not in adapters and k not in head]
    assert adapters and head and base
    assert all(torch.equal(last[k], start[k]) for k in base), "a base weight moved"
    assert any(not torch.equal(last[k], start[k]) for k in adapters if ".lora_B." in k), "no adapter trained"
    assert any(not torch.equal(last[k], start[k]) for k in head)

    manifest = export_run(run_dir, sample=24)
    out = run_dir / "export"
    assert manifest["lora_merged"] and {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in (out / "adapters").iterdir()
    }
    saved = load_file(str(out / "adapters" / "adapter_model.safetensors"))
    best = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    assert set(saved) == set(adapters) and all(torch.equal(saved[k], best[k]) for k in saved)
    exported = load_file(str(out / "model.safetensors")) if (out / "model.safetensors").exists() else {}
    assert not any("lora_" in k or "base_layer" in k for k in exported)

    _, adapted, _ = rebuild_model(run_dir, "best")  # the injected model, adapters not merged
    sample = load_file(str(out / "sample.safetensors"))
    with torch.inference_mode():
        x = sample["inputs"] if "inputs" in sample else {k: sample[k] for k in ("input_ids", "attention_mask")}
        merged_diff = (adapted.model(x) - sample["logits"]).abs().max().item()
    fresh = _fresh(PEFT_BLOCKED.format(out=out, load=load, call=call))
    assert not fresh["peft"] and not fresh["tuitune"]
    print(f"max abs diff: adapted vs merged {merged_diff:.3g}; peft-less load vs export {fresh['diff']:.3g}")
    assert merged_diff < 1e-4 and fresh["diff"] < 1e-5
    return merged_diff, fresh["diff"]


def test_lora_on_a_tiny_vit(tmp_path) -> None:
    profile = tiny_profile(model=VIT, strategy={"kind": "lora", "lora_rank": 4}, train={"epochs": 1})
    events = _run(profile, tmp_path / "run")
    rows = [e for e in events if isinstance(e, LayersChanged)][-1].layers
    by_name = {r.name: r for r in rows}
    # each block's 4 adapted Linears: A (r x in) + B (out x r), rank 4, dim 64 (qkv and fc1 out 192)
    assert by_name["blocks.0"].adapters == 4 * (64 + 192) + 4 * (64 + 64) + 4 * (64 + 192) + 4 * (192 + 64)
    assert by_name["head"].adapters == 0 and by_name["head"].trainable
    assert not by_name["stem"].trainable  # no adapted layer in it: nothing of it trains
    _check_run(
        profile,
        tmp_path / "run",
        "image",
        load='import timm\n    model = timm.create_model("local-dir:{out}", pretrained=True).eval()'.format(
            out=tmp_path / "run" / "export"
        ),
        call='model(sample["inputs"])',
    )


def test_lora_on_a_tiny_bert(tmp_path) -> None:
    folder = make_tiny_hf_dir(tmp_path, "bert")
    profile = profile_from_dict(
        {
            "model": {"source": "hf", "name": str(folder), "max_length": 16},
            "data": {"kind": "synthetic", "num_samples": 64, "num_classes": 3, "batch_size": 16},
            "train": {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "seed": 0},
            "strategy": {"kind": "lora"},
        },
        "bert.toml",
    )
    _run(profile, tmp_path / "run")
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    adapted = {k.split(".lora_")[0] for k in last if "lora_" in k}
    assert adapted and all(k.endswith(("attention.self.query", "attention.self.value")) for k in adapted)
    _check_run(
        profile,
        tmp_path / "run",
        "text",
        load="from transformers import AutoModelForSequenceClassification\n    model = "
        'AutoModelForSequenceClassification.from_pretrained("{out}").eval()'.format(out=tmp_path / "run" / "export"),
        call='model(input_ids=sample["input_ids"], attention_mask=sample["attention_mask"]).logits',
    )


def test_progressive_adapters_unfreeze_adapters_and_resume_matches(tmp_path) -> None:
    """`adapters = "lora"`: phase 2 turns on blocks.5's adapters, not its weights; interrupted mid-epoch 2 and
    resumed, the run ends with the weights of the same run unbroken."""
    profile = tiny_profile(
        model=VIT,
        strategy={"kind": "progressive", "adapters": "lora", "trigger": "epochs", "every_epochs": 1, "coarse": True},
        train={"epochs": 2},
    )
    _run(profile, tmp_path / "a")
    control = Control()
    first: list = []

    def emit(event) -> None:
        first.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 7:
            control.request_stop()

    _run(profile, tmp_path / "b", emit=emit, control=control)
    saved = checkpoint.load_state(tmp_path / "b" / "checkpoints" / "last.state.pt")
    assert (saved["epoch"], saved["phase"]) == (1, 1) and saved["step_in_epoch"] > 0  # mid-epoch 2, phase 2
    assert main(["train", "--resume", str(tmp_path / "b"), "--headless"]) == 0

    start = _initial(profile)
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last.safetensors"))
    assert set(wa) == set(wb) and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    moved = {k for k in wa if not torch.equal(wa[k], start[k])}
    assert any(k.startswith("blocks.5.") and ".lora_B." in k for k in moved)  # unfrozen in phase 2: adapters
    assert all(k.startswith("head.") or (k.startswith("blocks.5.") and "lora_" in k) for k in moved), moved


def test_depthwise_convolutions_are_skipped_and_targets_must_match() -> None:
    profile = tiny_profile(model={"name": "test_convnext", "kwargs": {}, "img_size": 32}, strategy={"kind": "lora"})
    backbone = build_backbone(model_config(profile), 3)
    total = backbone.model.state_dict().keys()
    lora, notes = apply_lora(backbone, profile.strategy)  # default: mlp.fc1 / mlp.fc2 only
    adapted = {n.split(".lora_")[0] for n, _ in lora.model.named_parameters() if "lora_" in n}
    assert adapted and all(n.endswith(("mlp.fc1", "mlp.fc2")) for n in adapted) and not notes
    assert sum(g.params for g in lora.groups) == sum(p.numel() for p in lora.model.parameters())
    assert len(total) < len(lora.model.state_dict())

    explicit = tiny_profile(
        model={"name": "test_convnext", "kwargs": {}, "img_size": 32},
        strategy={"kind": "lora", "lora_targets": ["conv_dw", "mlp.fc1"]},
    )
    _, notes = apply_lora(build_backbone(model_config(explicit), 3), explicit.strategy)
    assert len(notes) == 1 and "depthwise" in notes[0] and "conv_dw" in notes[0]

    effnet = tiny_profile(model={"name": "test_efficientnet", "kwargs": {}, "img_size": 32}, strategy={"kind": "lora"})
    lora, notes = apply_lora(build_backbone(model_config(effnet), 3), effnet.strategy)  # default: the 1x1 convs
    adapted = {n.split(".lora_")[0]: m for n, m in lora.model.named_modules() if n.endswith(("conv_pw", "conv_pwl"))}
    assert adapted and all(hasattr(m, "lora_A") and m.base_layer.groups == 1 for m in adapted.values())
    assert not any("conv_dw.lora_" in n for n, _ in lora.model.named_parameters()) and not notes

    wrong = tiny_profile(
        model={"name": "test_convnext", "kwargs": {}, "img_size": 32},
        strategy={"kind": "lora", "lora_targets": ["conv_dw"]},
    )
    with pytest.raises(UserError, match="strategy.lora_targets: no layer"):
        apply_lora(build_backbone(model_config(wrong), 3), wrong.strategy)
