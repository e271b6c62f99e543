"""Compression: global pruning to the target sparsity, sparsity kept through a fine-tune, int8 Linear layers, and the
report in summary.json and the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine.conftest import tiny_profile
from tuitune.cli import main
from tuitune.engine.commands import Control
from tuitune.engine.session import run_training
from tuitune.engine.tools.compress import (
    compress_model,
    global_magnitude_prune,
    masks_kept,
    measure_model,
    quantize_linear,
)
from tuitune.errors import UserError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def _zeros(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_global_pruning_hits_the_target_and_keeps_parameter_names() -> None:
    model = _net()
    names = [n for n, _ in model.named_parameters()]
    params = [id(p) for p in model.parameters()]
    masks = global_magnitude_prune(model, 0.6)
    assert _zeros(model) == pytest.approx(0.6, abs=0.01)
    assert [n for n, _ in model.named_parameters()] == names and [id(p) for p in model.parameters()] == params
    assert set(masks) == {"0", "5", "7"}
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    with pytest.raises(UserError):
        global_magnitude_prune(model, 1.0)


def test_masks_kept_through_training_steps() -> None:
    model = _net()
    masks = global_magnitude_prune(model, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    before = [p.clone() for p in model.parameters()]
    with masks_kept(model, masks):
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert _zeros(model) == pytest.approx(0.5, abs=0.01)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it did train
    model(x).sum().backward()  # hooks are gone: plain gradients again
    assert all(m.weight.grad is not None for m in model.modules() if isinstance(m, nn.Linear))


def test_quantization_touches_linear_layers_only_and_stays_close() -> None:
    model = _net().eval()
    q = quantize_linear(model)
    kinds = [type(m).__name__ for m in q.modules()]
    assert (
        kinds.count("Linear") == 2
        and "Conv2d" in kinds
        and all("quantized" in type(m).__module__ for m in q.modules() if type(m).__name__ == "Linear")
    )
    x = torch.randn(4, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(model(x), q(x), atol=0.05)
    assert isinstance(model[5], nn.Linear)  # the original is untouched


def test_compress_model_reports_every_step() -> None:
    model = _net()
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    tuned: list[float] = []
    _, report = compress_model(
        model,
        sparsity=0.5,
        quantize=True,
        measure=lambda m: measure_model(m, loader=data, repeats=2),
        fine_tune=lambda m: tuned.append(_zeros(m)),
    )
    steps = report["steps"]
    assert [r["step"] for r in steps] == ["original", "pruned 50%", "pruned + fine-tuned", "int8 (Linear)"]
    assert steps[0]["nonzero_prunable"] == 1.0 and steps[1]["nonzero_prunable"] == pytest.approx(0.5, abs=0.01)
    assert steps[3]["nonzero_prunable"] <= 0.51  # quantized zeros stay zero
    assert steps[1]["zlib_bytes"] < steps[0]["zlib_bytes"] and steps[1]["file_bytes"] == steps[0]["file_bytes"]
    assert tuned == [pytest.approx(0.5, abs=0.01)]
    assert all(r["latency_ms"] > 0 and 0 <= r["val_acc"] <= 1 and r["params"] == steps[0]["params"] for r in steps)
    assert "2 Linear layer(s)" in report["notes"][0]


def test_cli_compress_writes_the_report_and_the_models(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    final = run_training(tiny_profile(train={"epochs": 1}), run_dir, lambda e: None, Control(), interactive=False)
    assert final.status == "finished"
    assert main(["compress", str(run_dir), "--sparsity", "0.5", "--quantize", "--fine-tune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "pruned + fine-tuned" in out and "int8 (Linear)" in out and "val acc" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"  # the run's own summary is kept
    report = summary["compression"]
    assert report["sparsity"] == 0.5 and len(report["steps"]) == 4
    assert report["steps"][2]["nonzero_prunable"] == pytest.approx(0.5, abs=0.01)
    assert json.loads((run_dir / "compressed" / "report.json").read_text()) == report
    _reload_int8(run_dir, report)


def _reload_int8(run_dir: Path, report: dict) -> None:
    """The saved int8 model loads with weights_only into a rebuilt, quantized model, and matches its accuracy."""
    from safetensors.torch import load_model

    from tuitune.engine.rebuild import rebuild_model

    _, backbone, _ = rebuild_model(run_dir)
    load_model(backbone.model, str(run_dir / "compressed" / "model_pruned.safetensors"))
    q = quantize_linear(backbone.model)
    q.load_state_dict(torch.load(run_dir / "compressed" / "model_int8.pt", weights_only=True))
    assert measure_model(q, loader=[(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))], repeats=1)[
        "nonzero_prunable"
    ] == pytest.approx(report["steps"][-1]["nonzero_prunable"])
