"""Compression after training: global magnitude pruning, an optional short fine-tune, dynamic int8 quantization,
and a before/after report (parameters, file size, nonzero fraction, val accuracy, CPU latency per batch).

Why these shapes:
- Pruning is global (one L1 threshold over every conv / linear weight, `prune.global_unstructured`), so layers with
  many small weights give up more than layers whose weights all matter. It is made permanent at once
  (`prune.remove`): parameter names stay `*.weight`, so the engine's optimizer, checkpoints and layer groups (all
  keyed by parameter names) keep working on the pruned model.
- The fine-tune keeps the sparsity with `masks_kept`: gradients of pruned weights are zeroed and the masks are
  re-applied before every forward and at the end, so any loop — the engine's or `simple_fine_tune` — can be used.
- Dynamic int8 quantization (`torch.ao.quantization.quantize_dynamic`) converts `nn.Linear` only: weights stored
  as int8, activations quantized on the fly, CPU only. A conv net has few Linear layers (resnet: the classifier),
  so there it changes little; the report says how many weights it actually touched.
- Unstructured zeros do not shrink a dense file: the report gives the file size and its zlib-compressed size, which
  is where pruning shows.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import statistics
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from tuitune.engine.data.batches import to_device
from tuitune.engine.record.checkpoint import atomic_write
from tuitune.errors import UserError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Measure = Callable[[nn.Module], dict[str, Any]]

__all__ = [
    "compress_model",
    "compress_run",
    "global_magnitude_prune",
    "masks_kept",
    "measure_model",
    "quantize_linear",
    "simple_fine_tune",
]


# --------------------------------------------------------------------------------------------------- pruning


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]


def global_magnitude_prune(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the `sparsity` fraction of smallest-magnitude conv/linear weights, over all of them at once; permanent.
    Returns the masks (1 = kept) by module name, for `masks_kept`."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity: expected a fraction in [0, 1), got {sparsity}")
    targets = prunable_modules(model)
    if not targets:
        raise UserError("compress: the model has no conv or linear weights to prune")
    orders = {name: list(module._parameters) for name, module in targets}
    prune.global_unstructured(
        [(m, "weight") for _, m in targets], pruning_method=prune.L1Unstructured, amount=float(sparsity)
    )
    masks = {}
    for name, module in targets:
        masks[name] = module.weight_mask.detach().clone()
        prune.remove(module, "weight")  # weight = weight_orig * mask, the same Parameter object as before
        for key in orders[name]:  # and in its old place: state dicts and parameter lists keep their order
            module._parameters[key] = module._parameters.pop(key)
    return masks


@contextlib.contextmanager
def masks_kept(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Keep pruned weights at zero while training: gradients masked, masks re-applied before each forward."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        module = modules[name]
        m = mask.to(module.weight.device)
        handles.append(module.weight.register_hook(lambda g, m=m: g * m))
        handles.append(module.register_forward_pre_hook(lambda mod, args, m=m: _apply_mask(mod, m)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for name, mask in masks.items():
            _apply_mask(modules[name], mask)


def _apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.mul_(mask.to(module.weight.device))


def simple_fine_tune(loader: Any, *, epochs: int, lr: float, device: torch.device) -> Callable[[nn.Module], None]:
    """A minimal fine-tune (AdamW, cross-entropy, every parameter) for `compress_model(fine_tune=...)`; the engine
    may pass its own loop instead."""

    def run(model: nn.Module) -> None:
        model.to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        for _ in range(epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(to_device(x, device)).float(), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval().to("cpu")

    return run


# ---------------------------------------------------------------------------------------------- quantization


def quantize_linear(model: nn.Module) -> nn.Module:
    """A CPU int8 copy: every nn.Linear becomes a dynamically quantized Linear; everything else stays fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices (torchao is its successor)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def _is_quantized_linear(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(module, "weight", None))


# -------------------------------------------------------------------------------------------------- measuring


def _weights(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(all parameter tensors, conv/linear weights) as float, quantized Linear weights dequantized."""
    everything = [p.detach() for p in model.parameters()]
    prunable = [m.weight.detach() for _, m in prunable_modules(model)]
    for module in model.modules():
        if _is_quantized_linear(module):
            w = module.weight().dequantize()
            bias = module.bias()
            everything += [w] + ([bias.detach()] if bias is not None else [])
            prunable.append(w)
    return everything, prunable


def _serialized(model: nn.Module) -> bytes:
    """The model's bytes on disk: safetensors for a float model, torch.save of the state dict once quantized
    (packed int8 weights are not plain tensors)."""
    if any(_is_quantized_linear(m) for m in model.modules()):
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getvalue()
    from safetensors.torch import save_model

    with _tempdir() as d:
        save_model(model, str(d / "m.safetensors"))
        return (d / "m.safetensors").read_bytes()


@contextlib.contextmanager
def _tempdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def cpu_latency_ms(model: nn.Module, batch: Any, *, repeats: int = 10, warmup: int = 2, threads: int = 1) -> float:
    """Median wall time of one forward over `batch` on the CPU, in inference mode, with `threads` intra-op threads
    (default 1: on a shared machine multi-threaded timings swing tenfold with the neighbours' load; one thread
    compares the steps fairly). The median shrugs off the odd scheduler hiccup that a mean would absorb."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                model(batch)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


@torch.inference_mode()
def accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 accuracy on the CPU."""

    model.eval()
    hits = total = 0
    for x, y in loader:
        hits += int((model(to_device(x, torch.device("cpu"))).argmax(-1) == y).sum())
        total += int(y.numel())
    return hits / max(total, 1)


def measure_model(
    model: nn.Module,
    *,
    loader: Any,
    eval_fn: Callable[[nn.Module, Any], float] = accuracy,
    repeats: int = 10,
    threads: int = 1,
) -> dict[str, Any]:
    """Parameters, bytes, compressed bytes, nonzero fractions, val accuracy and CPU latency of one model."""
    model = model.cpu().eval()
    everything, prunable = _weights(model)
    blob = _serialized(model)
    first = next(iter(loader))[0]
    return {
        "params": sum(t.numel() for t in everything),
        "nonzero": sum(int(t.count_nonzero()) for t in everything) / max(sum(t.numel() for t in everything), 1),
        "nonzero_prunable": sum(int(t.count_nonzero()) for t in prunable) / max(sum(t.numel() for t in prunable), 1),
        "file_bytes": len(blob),
        "zlib_bytes": len(zlib.compress(blob, 6)),
        "val_acc": eval_fn(model, loader),
        "latency_ms": cpu_latency_ms(model, first, repeats=repeats, threads=threads),
        "threads": threads,
        "batch_size": len(next(iter(first.values())) if isinstance(first, dict) else first),
    }


# ------------------------------------------------------------------------------------------------ the steps


def compress_model(
    model: nn.Module,
    *,
    sparsity: float,
    quantize: bool,
    measure: Measure,
    fine_tune: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module | None, dict]:
    """Prune `model` in place (optionally fine-tune it with the masks kept), then quantize a copy. Returns the int8
    copy (or None) and the report: one row per step, each measured by `measure`, plus notes."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity: expected a fraction in [0, 1), got {sparsity}")
    rows = [{"step": "original", **measure(model)}]
    masks: dict[str, torch.Tensor] = {}
    if sparsity > 0:
        masks = global_magnitude_prune(model, sparsity)
        rows.append({"step": f"pruned {sparsity:.0%}", **measure(model)})
        if fine_tune is not None:
            with masks_kept(model, masks):
                fine_tune(model)
            rows.append({"step": "pruned + fine-tuned", **measure(model)})
    quantized = None
    notes = []
    if quantize:
        quantized = quantize_linear(model)
        rows.append({"step": "int8 (Linear)", **measure(quantized)})
        notes.append(_quantization_note(model))
    return quantized, {"steps": rows, "notes": notes, "pruned_tensors": len(masks)}


def _quantization_note(model: nn.Module) -> str:
    """What dynamic quantization actually touched: conv nets keep almost everything in fp32."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    in_linear = sum(m.weight.numel() for m in linear)
    total = sum(p.numel() for p in model.parameters())
    return (
        f"int8 dynamic quantization converts nn.Linear only: {len(linear)} Linear layer(s) holding "
        f"{in_linear:,} of {total:,} parameters ({in_linear / max(total, 1):.1%}); convolutions, norms and "
        f"embeddings stay fp32. CPU only."
    )


def compress_run(
    run_dir: str | Path,
    sparsity: float = 0.5,
    quantize: bool = True,
    fine_tune_epochs: int = 0,
    *,
    tag: str = "best",
    lr: float | None = None,
    repeats: int = 10,
    threads: int = 1,
) -> dict[str, Any]:
    """Compress a finished run's checkpoint: the report goes to `RUN_DIR/compressed/report.json` and into
    `summary.json` under "compression"; the models to `RUN_DIR/compressed/`."""
    from tuitune.engine.data.datasets import make_loaders
    from tuitune.engine.data.kinds import build_datasets
    from tuitune.engine.rebuild import rebuild_model
    from tuitune.engine.train.parts import resolve_device, seed_everything

    run_dir = Path(run_dir)
    profile, backbone, _ = rebuild_model(run_dir, tag)
    if backbone.lora is not None:  # compress the plain model the export holds: adapters merged, peft layers gone
        from tuitune.engine.model.lora import merged

        backbone = merged(backbone, copy=False)  # the rebuilt model is ours: merged in place
    seed_everything(profile.train.seed)
    bundle = build_datasets(
        profile.data,
        task=backbone.task,
        data_config=backbone.data_config,
        tokenizer=backbone.tokenizer,
        max_length=profile.model.max_length,
        seed=profile.train.seed,
    )
    from tuitune.engine.train.distributed import LOCAL
    from tuitune.engine.train.parts import rank_batch_size

    train_loader, val_loader, _ = make_loaders(
        bundle, batch_size=rank_batch_size(profile, LOCAL), num_workers=0, device_type="cpu", seed=profile.train.seed
    )
    fine_tune = None
    if fine_tune_epochs > 0:
        # a tenth of the base LR: the model is trained already, the fine-tune only repairs what pruning broke
        fine_tune = simple_fine_tune(
            train_loader,
            epochs=fine_tune_epochs,
            lr=lr or profile.train.lr / 10,
            device=resolve_device(profile.train.device),
        )
    model = backbone.model
    quantized, report = compress_model(
        model,
        sparsity=sparsity,
        quantize=quantize,
        fine_tune=fine_tune,
        measure=lambda m: measure_model(m, loader=val_loader, repeats=repeats, threads=threads),
    )
    report = {
        "checkpoint": tag,
        "sparsity": sparsity,
        "quantize": quantize,
        "fine_tune_epochs": fine_tune_epochs,
        **report,
        "files": _save_compressed(run_dir / "compressed", model, quantized),
    }
    (run_dir / "compressed" / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_summary_key(run_dir, "compression", report)
    return report


def _save_compressed(out: Path, model: nn.Module, quantized: nn.Module | None) -> dict[str, str]:
    """The pruned float model as safetensors (loads like a checkpoint); the int8 one as a weights_only-loadable
    state dict (rebuild, `quantize_linear`, then `load_state_dict`)."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    files = {"pruned": str(out / "model_pruned.safetensors")}
    atomic_write(Path(files["pruned"]), lambda tmp: save_model(model, str(tmp)))
    if quantized is not None:
        files["int8"] = str(out / "model_int8.pt")
        atomic_write(Path(files["int8"]), lambda tmp: torch.save(quantized.state_dict(), tmp))
    return files


def write_summary_key(run_dir: Path, key: str, value: Any) -> None:
    """Set one top-level key of `summary.json`, atomically (temp file + rename)."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    summary[key] = value
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8"))
