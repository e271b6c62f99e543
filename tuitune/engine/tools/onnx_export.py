"""`tuitune export RUN --onnx`: the run's model as `model.onnx`, kept only if ONNX Runtime agrees with PyTorch.

The model (LoRA already merged by the export) is exported with torch's `torch.export`-based exporter (onnxscript
under it) with a dynamic batch axis, and for text a dynamic sequence axis too: images take `input` (timm) or
`pixel_values` (transformers) `[batch, C, H, W]`; text takes `input_ids` and `attention_mask` `[batch, sequence]`
(int64), and the graph holds the whole classifier, tuitune's mean pooling included. The output is `logits`.

The check is part of the export, not a separate step: onnxruntime runs the written file on two batches of the run's
own validation data, of different sizes (and for text of different lengths), the PyTorch model runs the same
batches, and the largest absolute difference of the logits must be within `PARITY_ATOL`. Everything is written to a
temp folder beside the export and moved in only after the check passes, so a failed check leaves no `model.onnx`
(and an interrupted export no half-written one). A model over 2 GB keeps its weights in `model.onnx.data` (ONNX's
protobuf limit), moved in with it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from tuitune.engine.data.batches import collate_for
from tuitune.engine.model.groups import Backbone
from tuitune.errors import UserError

__all__ = ["PARITY_ATOL", "ParityFailed", "parity_line", "require_onnx", "write_onnx"]

PARITY_ATOL = 1e-4
ONNX_FILE = "model.onnx"
MAX_CHECK_BATCH = 64  # the first check batch: the run's batch size, at most this many examples
PROTOBUF_LIMIT = 2**31 - 1  # bytes: a larger model keeps its weights in an external data file


class ParityFailed(Exception):
    """ONNX Runtime's logits differ from PyTorch's by more than the limit: nothing was written (exit 1)."""


def require_onnx() -> None:
    """Refuse `--onnx` before any work when its libraries are missing (one line saying what to install)."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--onnx needs {', '.join(missing)}: pip install 'tuitune[onnx]'")


@dataclass(frozen=True)
class Signature:
    """What the ONNX graph takes: a module called with the inputs positionally, their names, and each one's
    dynamic axes (axis -> name)."""

    module: nn.Module
    names: tuple[str, ...]
    axes: tuple[dict[int, str], ...]

    def feeds(self, x: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(x[n] for n in self.names) if isinstance(x, dict) else (x,)


class _TextInputs(nn.Module):
    """`model({"input_ids", "attention_mask"})` as a module of two positional tensors, what the exporter traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})


def _image_signature(backbone: Backbone) -> Signature:
    name = "pixel_values" if hasattr(backbone.model, "hf") else "input"  # transformers' name, else timm's
    return Signature(backbone.model, (name,), ({0: "batch"},))


def _text_signature(backbone: Backbone) -> Signature:
    axes = {0: "batch", 1: "sequence"}
    return Signature(_TextInputs(backbone.model), ("input_ids", "attention_mask"), (axes, axes))


SIGNATURES: dict[str, Callable[[Backbone], Signature]] = {"image": _image_signature, "text": _text_signature}


def check_batches(val: Dataset, batch_size: int) -> tuple[Any, Any]:
    """Two validation batches of different sizes (the run's batch size, capped, then about half of it, from the
    next examples; wrapping around a small split), batched by the data's own collate. For text the second is also
    shorter: when both came out the same length, its last column is cut (a valid input either way: the mask is
    cut with the ids), so the sequence axis is proven dynamic too."""
    n = len(val)
    if n == 0:
        raise UserError("--onnx: the run's validation split is empty: nothing to check the export on")
    first = max(2, min(batch_size, MAX_CHECK_BATCH))  # 2 at least: a batch of 1 would fix the axis at 1
    second = first // 2 + 1 if first >= 4 else first + 1
    collate = collate_for(val) or default_collate
    a, _ = collate([val[i % n] for i in range(first)])
    b, _ = collate([val[i % n] for i in range(first, first + second)])
    if isinstance(a, dict) and isinstance(b, dict):
        length = a["input_ids"].shape[1]
        if b["input_ids"].shape[1] == length and length > 1:
            b = {k: v[:, : length - 1] for k, v in b.items()}
    return a, b


def write_onnx(backbone: Backbone, val: Dataset, batch_size: int, out_dir: Path) -> dict[str, Any]:
    """Export, check, and keep `out_dir/model.onnx` (see the module doc); returns what the manifest records.
    ParityFailed when the check fails (no file left), UserError when the exporter cannot trace the model."""
    require_onnx()
    signature = SIGNATURES[backbone.task](backbone)
    batches = check_batches(val, batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out_dir))
    try:
        path = work / ONNX_FILE
        _export(signature, batches[0], path, backbone.model)
        diffs = _parity(signature, backbone.model, batches, path)
        shapes = [[list(t.shape) for t in signature.feeds(x)] for x in batches]
        worst = max(diffs)
        if not worst <= PARITY_ATOL:  # NaN fails too
            raise ParityFailed(
                f"onnx: onnxruntime's logits differ from PyTorch's by {worst:.3g} on the run's val batches "
                f"(limit {PARITY_ATOL:g}); {ONNX_FILE} not written"
            )
        files = sorted(p.name for p in work.iterdir())
        for name in sorted(files, key=lambda f: f == ONNX_FILE):  # the weights first, the graph naming them last
            os.replace(work / name, out_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "written": True,
        "path": str((out_dir / ONNX_FILE).resolve()),
        "files": files,
        "inputs": list(signature.names),
        "dynamic_axes": {n: {str(k): v for k, v in a.items()} for n, a in zip(signature.names, signature.axes)},
        "checked_shapes": shapes,
        "max_abs_diff": worst,
        "atol": PARITY_ATOL,
    }


def _export(signature: Signature, example: Any, path: Path, model: nn.Module) -> None:
    """torch.onnx's exporter, dynamic axes named; weights inside the file unless they pass protobuf's limit."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(name, Dim(name)) for axis, name in axes.items()} for axes in signature.axes)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    signature.module.eval()
    try:
        with warnings.catch_warnings():
            # inputs sharing the batch (and sequence) axis: torch says each shared name is used once. Noise.
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints", category=UserWarning)
            program = torch.onnx.export(
                signature.module,
                signature.feeds(example),
                dynamic_shapes=shapes,
                input_names=list(signature.names),
                output_names=["logits"],
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter's errors are long; the first line names the operator or the guard
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--onnx: torch.onnx.export cannot export this model: {first[:300]}") from e
    program.save(str(path), external_data=size >= PROTOBUF_LIMIT)


def _parity(signature: Signature, model: nn.Module, batches: tuple[Any, ...], path: Path) -> list[float]:
    """The largest |PyTorch - onnxruntime| of the logits on each batch (inf when the shapes differ)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs = []
    with torch.inference_mode():
        for x in batches:
            expected = model(x).float()
            feed = {n: t.detach().cpu().numpy() for n, t in zip(signature.names, signature.feeds(x))}
            got = torch.from_numpy(session.run(["logits"], feed)[0]).float()
            diffs.append(float((got - expected).abs().max()) if got.shape == expected.shape else float("inf"))
    return diffs


def parity_line(result: dict[str, Any]) -> str:
    """The line `tuitune export --onnx` prints: where, what was compared, the largest difference."""
    shapes = "; ".join(", ".join("x".join(map(str, s)) for s in batch) for batch in result["checked_shapes"])
    return (
        f"onnx: {result['path']} (inputs {', '.join(result['inputs'])}; dynamic "
        f"{', '.join(sorted({a for axes in result['dynamic_axes'].values() for a in axes.values()}))}): "
        f"onnxruntime vs PyTorch on val batches {shapes}: largest |diff| {result['max_abs_diff']:.2e} "
        f"(limit {result['atol']:g})"
    )
