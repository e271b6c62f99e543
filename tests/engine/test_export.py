"""Export: the folder loads in a fresh process with only timm (or transformers) imported, and gives the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import tiny_profile
from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.cli import main
from tuitune.config import dump_toml, profile_from_dict, profile_to_dict
from tuitune.engine.commands import Control
from tuitune.engine.session import run_training
from tuitune.engine.tools.export import export_run
from tuitune.errors import UserError


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("timm-run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = run_training(tiny_profile(train={"epochs": 1}), run_dir, lambda e: None, Control(), interactive=False)
    finally:
        torch.set_num_threads(before)
    assert final.status == "finished"
    return run_dir


def _fresh(code: str) -> subprocess.Popen:
    """Start `code` in a new interpreter (offline, one thread) that never imports tuitune; it prints JSON lines."""
    env_code = "import os\nos.environ['HF_HUB_OFFLINE'] = '1'\nos.environ['OMP_NUM_THREADS'] = '1'\n"
    return subprocess.Popen(
        [sys.executable, "-c", env_code + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _results(proc: subprocess.Popen, n: int) -> list[dict]:
    """The last `n` lines the interpreter printed, as JSON."""
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    return [json.loads(line) for line in out.strip().splitlines()[-n:]]


def test_timm_export_writes_timm_hub_format(timm_run, capsys) -> None:
    assert main(["export", str(timm_run), "--out", str(timm_run / "cli-export"), "--sample", "0"]) == 0
    printed = capsys.readouterr().out
    out = timm_run / "cli-export"
    assert f"local-dir:{out.resolve()}" in printed
    assert {"model.safetensors", "classes.json", "profile.toml", "config.json", "export.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "sample.safetensors").exists()
    assert json.loads((out / "classes.json").read_text()) == ["c0", "c1", "c2"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 3
    assert config["label_names"] == ["c0", "c1", "c2"] and config["model_args"]["stem_width"] == 8
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and "mean" in config["pretrained_cfg"]


TIMM_CHECK = """
    import json, sys, torch, timm
    from safetensors.torch import load_file
    sample = load_file("{out}/sample.safetensors")
    by_dir = {load}.eval()
    by_name = {load_by_name}.eval()
    with torch.inference_mode():
        a, b = by_dir(sample["inputs"]), by_name(sample["inputs"])
    print(json.dumps({{"dir": (a - sample["logits"]).abs().max().item(),
                      "name": (b - sample["logits"]).abs().max().item(),
                      "acc": (a.argmax(-1) == sample["labels"]).float().mean().item(),
                      "labels": by_dir.pretrained_cfg.get("label_names"),
                      "tuitune": any(m.startswith("tuitune") for m in sys.modules)}}))
"""

HF_CHECK = """
    import json, sys, torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    sample = load_file("{out}/sample.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained("{out}").eval()
    tok = AutoTokenizer.from_pretrained("{out}")
    with torch.inference_mode():
        logits = model(input_ids=sample["input_ids"], attention_mask=sample["attention_mask"]).logits
    print(json.dumps({{"diff": (logits - sample["logits"]).abs().max().item(),
                      "labels": model.config.id2label, "ids": tok("the cat sat")["input_ids"],
                      "tuitune": any(m.startswith("tuitune") for m in sys.modules)}}))
"""


def test_exports_load_in_fresh_processes_with_the_same_logits(timm_run, tmp_path) -> None:
    """timm: `local-dir:` and by name + pretrained_cfg_overlay; hf: AutoModelForSequenceClassification + its
    tokenizer. Each in an interpreter that never imports tuitune; logits against the in-process model's."""
    timm_manifest = export_run(timm_run)
    hf_dir = _hf_run(tmp_path, "model")
    hf_manifest = export_run(hf_dir, sample=12)
    hf_out = hf_dir / "export"
    assert hf_manifest["pooling"] == "model" and hf_manifest["sample"]["examples"] == 12
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in hf_out.iterdir()}
    timm_code = TIMM_CHECK.format(
        out=timm_run / "export", load=timm_manifest["load"], load_by_name=timm_manifest["load_by_name"]
    )
    # one interpreter for both (each check prints its line; neither imports tuitune): one start of torch, not two
    timm_result, hf_result = _results(_fresh(timm_code + HF_CHECK.format(out=hf_out)), 2)
    assert timm_result["dir"] < 1e-5 and timm_result["name"] < 1e-5 and not timm_result["tuitune"]
    assert timm_result["acc"] == pytest.approx(timm_manifest["sample"]["acc"])
    assert timm_result["labels"] == ["c0", "c1", "c2"]
    assert hf_result["diff"] < 1e-5 and not hf_result["tuitune"]
    assert hf_result["labels"] == {"0": "c0", "1": "c1", "2": "c2"} and 1 not in hf_result["ids"][1:-1]  # no [UNK]


def _hf_run(tmp_path: Path, pooling: str) -> Path:
    """A run directory for a tiny BERT text classifier: resolved profile + a checkpoint (no training needed)."""
    from safetensors.torch import save_model

    from tuitune.engine.model.backbone import build_backbone

    folder = make_tiny_hf_dir(tmp_path, "bert")
    profile = profile_from_dict(
        {
            "model": {"source": "hf", "name": str(folder), "pooling": pooling, "max_length": 16},
            "data": {"kind": "synthetic", "num_samples": 80, "num_classes": 3},
        },
        "hf.toml",
    )
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)))
    torch.manual_seed(1)
    model = build_backbone(profile.model, 3, task="text").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the folder's own weights: the export must carry the checkpoint
    save_model(model, str(run_dir / "checkpoints" / "best.safetensors"))
    return run_dir


def test_hf_mean_pooling_exports_base_model_and_head(tmp_path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    run_dir = _hf_run(tmp_path, "mean")
    manifest = export_run(run_dir, sample=8)
    out = run_dir / "export"
    assert manifest["pooling"] == "mean"
    assert json.loads((out / "tuitune_head.json").read_text())["pooling"] == "mean"
    base = AutoModel.from_pretrained(str(out)).eval()
    head, sample = load_file(str(out / "head.safetensors")), load_file(str(out / "sample.safetensors"))
    with torch.inference_mode():
        hidden = base(input_ids=sample["input_ids"], attention_mask=sample["attention_mask"]).last_hidden_state
        m = sample["attention_mask"].unsqueeze(-1).float()
        logits = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)) @ head["weight"].T + head["bias"]
    assert torch.allclose(logits, sample["logits"], atol=1e-5)


def test_export_refuses_a_missing_checkpoint(tmp_path, timm_run) -> None:
    with pytest.raises(UserError, match="no such checkpoint"):
        export_run(timm_run, tag="manual")
    with pytest.raises(UserError, match="profile.toml"):
        export_run(tmp_path)
