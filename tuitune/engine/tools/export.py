"""Export a finished run as files other tools load without tuitune.

A run directory holds the resolved `profile.toml` and `checkpoints/<tag>.safetensors`. Export rebuilds the model
from that profile (at random init: the checkpoint holds every tensor, so no pretrained weights or hub cache are
needed), loads the checkpoint, and writes `RUN_DIR/export/`:

- `model.safetensors`, `classes.json`, `profile.toml` — always;
- timm: `config.json` in timm's own hub format (written by timm's `save_config_for_hf`), so the folder loads with
  `timm.create_model("local-dir:/path/to/export", pretrained=True)`;
- hf, `pooling = "model"`: `save_pretrained` of the transformers model (with `id2label`) and of the tokenizer, so
  `AutoModelForSequenceClassification.from_pretrained(dir)` (or `...ForImageClassification`) loads it; the folder
  then holds the transformers `model.safetensors` (no second copy is written);
- hf, `pooling = "mean"`: the base model and tokenizer via `save_pretrained` (`AutoModel.from_pretrained(dir)`), and
  the mean-pooled linear head on its own in `head.safetensors` (`weight`, `bias`), described in `tuitune_head.json`.
  transformers has no class for "masked mean over tokens + linear", so the head cannot ride inside config.json;
- `sample.safetensors` — up to `sample` validation inputs with their labels and the exported model's logits, so a
  fresh process can check the load (same logits) and measure accuracy with nothing but timm / transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file, save_model
from torch.utils.data import Dataset

from tuitune.config import RunProfile, dump_toml, profile_to_dict
from tuitune.engine.data.kinds import build_datasets, data_kind
from tuitune.engine.model.groups import Backbone
from tuitune.engine.train.tasks import rebuild_run, task_of
from tuitune.errors import UserError

__all__ = ["export_adapters", "export_run", "write_export"]


def export_run(
    run_dir: str | Path, out: str | Path | None = None, tag: str = "best", sample: int = 256, onnx: bool = False
) -> dict[str, Any]:
    """Rebuild, load `tag`, write the export folder; returns a manifest (also written as `export.json`).
    `onnx`: also `model.onnx`, checked against the model on the run's validation data (`onnx_export`); a failed
    check raises ParityFailed after the rest of the folder is written, with no `model.onnx` in it."""
    run_dir = Path(run_dir)
    if onnx:
        from tuitune.engine.tools.onnx_export import require_onnx

        require_onnx()
    profile, backbone, classes = rebuild_run(run_dir, tag)
    task = task_of(profile)
    if onnx and task.export is not None:
        raise UserError(f"--onnx exports classifiers; this run's task is {profile.model.task!r}")
    val = _val_data(backbone, profile) if onnx else "not asked for"
    if onnx and isinstance(val, str):  # before anything is written
        raise UserError(f"--onnx checks the export on the run's validation data, which cannot be read: {val}")
    out_dir = Path(out) if out else run_dir / "export"
    clear_export(out_dir)  # no stale head or sample from an earlier export
    backbone, adapters = export_adapters(backbone, out_dir)  # the sample and the ONNX file are the merged model's
    write = task.export or _write_classifier
    manifest = {**write(backbone, profile, classes, out_dir, sample), **adapters}
    manifest["checkpoint"] = str(run_dir / "checkpoints" / f"{tag}.safetensors")
    failed = None
    if onnx and not isinstance(val, str):
        from tuitune.engine.tools.onnx_export import ParityFailed, write_onnx

        try:
            size = profile.data.batch_size  # a run records the size "auto" chose; 32 for a profile never run
            manifest["onnx"] = write_onnx(backbone, val, size if isinstance(size, int) else 32, out_dir)
        except ParityFailed as e:
            manifest["onnx"], failed = {"written": False, "reason": str(e)}, e
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if failed is not None:
        raise failed
    return manifest


def write_export(backbone: Backbone, profile: RunProfile, classes: tuple[str, ...], out_dir: Path) -> dict[str, Any]:
    """Write the loadable folder for an in-memory model (also usable by the engine right after training); under
    LoRA the adapters alone too, and the model with them merged."""
    backbone, adapters = export_adapters(backbone, out_dir)
    write = task_of(profile).export or _write_classifier
    return {**write(backbone, profile, classes, out_dir, 0), **adapters}


def _write_classifier(
    backbone: Backbone, profile: RunProfile, classes: tuple[str, ...], out_dir: Path, sample: int
) -> dict[str, Any]:
    """A classifier's export (the task table's writer for `classify`): the loadable folder, and `sample` validation
    examples with the exported model's logits."""
    manifest = _write_plain(backbone, profile, classes, out_dir)
    if sample > 0:
        manifest["sample"] = _write_sample(backbone, _val_data(backbone, profile), out_dir, sample)
    return manifest


def _write_plain(backbone: Backbone, profile: RunProfile, classes: tuple[str, ...], out_dir: Path) -> dict[str, Any]:
    """The loadable folder of a model without adapters: classes, profile, weights and how to load them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.json").write_text(json.dumps(list(classes)) + "\n", encoding="utf-8")
    (out_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)), encoding="utf-8")
    if profile.model.source == "timm":
        load = _export_timm(backbone, profile, classes, out_dir)
    else:
        load = _export_hf(backbone, classes, out_dir, profile.model.name)
    out = {"dir": str(out_dir.resolve()), "source": profile.model.source, "task": backbone.task}
    return {**out, "classes": list(classes), **load}


def export_adapters(backbone: Backbone, out_dir: Path) -> tuple[Backbone, dict[str, Any]]:
    """Under LoRA: the adapters alone in `adapters/` (safetensors under the run's parameter names, and peft's
    `adapter_config.json`), and the backbone with them merged into the base weights (peft's `merge_and_unload`),
    so what is exported is a plain timm / transformers model that loads without peft. Otherwise unchanged."""
    if backbone.lora is None:
        return backbone, {}
    from tuitune.engine.model.lora import ADAPTER, adapter_state, merged

    folder = out_dir / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state(backbone.model)
    save_file(state, str(folder / "adapter_model.safetensors"))
    backbone.lora.peft_config[ADAPTER].save_pretrained(str(folder))
    return merged(backbone), {"adapters": str(folder.resolve()), "adapter_tensors": len(state), "lora_merged": True}


# ------------------------------------------------------------------------------------------------------ timm


def _export_timm(backbone: Backbone, profile: RunProfile, classes: tuple[str, ...], out_dir: Path) -> dict:
    model = backbone.model
    save_model(model, str(out_dir / "model.safetensors"))
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(profile.model.kwargs).items()}
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()}
    data.update(data_kind(profile.data).transform)  # what the data kind's transform used (digits: no crop)
    try:
        from timm.models._hub import save_config_for_hf  # timm's own writer: the format it reads back

        save_config_for_hf(
            model,
            str(out_dir / "config.json"),
            model_config={"label_names": list(classes)},
            model_args=kwargs,
            data_config=data,
        )
    except (ImportError, TypeError, ValueError, AttributeError):  # timm internals moved: write the format by hand
        _write_timm_config(model, profile, classes, kwargs, data, out_dir / "config.json")
    arch = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))["architecture"]
    path = str(out_dir.resolve())
    return {
        "architecture": arch,
        "model_args": kwargs,
        "data_config": data,
        "load": f'timm.create_model("local-dir:{path}", pretrained=True)',
        "load_by_name": (
            f'timm.create_model("{arch}", pretrained=True, num_classes={len(classes)}, '
            f'pretrained_cfg_overlay=dict(file="{path}/model.safetensors", '
            f"num_classes={len(classes)}){''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
        ),
    }


def _write_timm_config(
    model: torch.nn.Module, profile: RunProfile, classes: tuple[str, ...], kwargs: dict, data: dict, path: Path
) -> None:
    """timm's hub config.json by hand: architecture, num_classes, label_names, model_args, pretrained_cfg."""
    pcfg = {
        k: v
        for k, v in dict(getattr(model, "pretrained_cfg", {}) or {}).items()
        if isinstance(v, (str, int, float, bool, list, tuple, type(None)))
    }
    pcfg.update(
        {k: data[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode") if k in data}
    )
    pcfg["num_classes"] = len(classes)
    arch = pcfg.pop("architecture", profile.model.name)
    for key in ("hf_hub_id", "url", "file", "source", "state_dict", "tag"):
        pcfg.pop(key, None)
    config = {
        "architecture": arch,
        "num_classes": len(classes),
        "label_names": list(classes),
        "model_args": kwargs,
        "pretrained_cfg": pcfg,
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# -------------------------------------------------------------------------------------------------------- hf


def _export_hf(backbone: Backbone, classes: tuple[str, ...], out_dir: Path, source: str) -> dict:
    from tuitune.engine.model.hf import HFClassifier, _quiet_transformers

    wrapper = backbone.model
    assert isinstance(wrapper, HFClassifier)
    hf = wrapper.hf
    if wrapper.head is None:  # the model's own head: labels go into its config
        hf.config.id2label = dict(enumerate(classes))
        hf.config.label2id = {c: i for i, c in enumerate(classes)}
    with _quiet_transformers():  # no progress bars over a dashboard
        hf.save_pretrained(str(out_dir))
        if backbone.tokenizer is not None:
            backbone.tokenizer.save_pretrained(str(out_dir))
        elif wrapper.task == "image":
            _copy_image_processor(source, out_dir)
    path = str(out_dir.resolve())
    if wrapper.head is not None:
        head = {"weight": wrapper.head.weight.detach().contiguous(), "bias": wrapper.head.bias.detach().contiguous()}
        save_file(head, str(out_dir / "head.safetensors"))
        (out_dir / "tuitune_head.json").write_text(
            json.dumps(
                {
                    "pooling": "mean",
                    "about": "logits = head(masked mean of AutoModel(...).last_hidden_state over tokens)",
                    "weight": "head.safetensors:weight",
                    "bias": "head.safetensors:bias",
                    "classes": list(classes),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        return {"pooling": "mean", "load": f'transformers.AutoModel.from_pretrained("{path}")  # + head.safetensors'}
    cls = "AutoModelForSequenceClassification" if wrapper.task == "text" else "AutoModelForImageClassification"
    return {"pooling": "model", "load": f'transformers.{cls}.from_pretrained("{path}")'}


def _copy_image_processor(source: str, out_dir: Path) -> None:
    """The source folder's image processor, so `AutoImageProcessor.from_pretrained(dir)` works too (when it has
    one; tuitune itself feeds images through timm-style transforms from the same mean / std)."""
    try:
        from transformers import AutoImageProcessor

        AutoImageProcessor.from_pretrained(source).save_pretrained(str(out_dir))
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------------- sample


def _val_data(backbone: Backbone, profile: RunProfile) -> Dataset | str:
    """The run's validation split as training saw it, or why it cannot be read (the data moved since)."""
    try:
        bundle = build_datasets(
            profile.data,
            task=backbone.task,
            data_config=backbone.data_config,
            tokenizer=backbone.tokenizer,
            max_length=profile.model.max_length,
            seed=profile.train.seed,
        )
    except UserError as e:
        return str(e)
    return bundle.val


def _write_sample(backbone: Backbone, val: Dataset | str, out_dir: Path, limit: int) -> dict[str, Any]:
    """Validation inputs, labels and logits for a fresh-process check; skipped (with the reason) when the run's
    data is no longer readable."""
    if isinstance(val, str):
        return {"written": False, "reason": val}
    loader = torch.utils.data.DataLoader(val, batch_size=64, shuffle=False)
    xs: list[Any] = []
    ys, logits = [], []
    with torch.inference_mode():
        for x, y in loader:
            xs.append(x)
            ys.append(y)
            logits.append(backbone.model(x).float())
            if sum(len(t) for t in ys) >= limit:
                break
    tensors = {"labels": torch.cat(ys)[:limit], "logits": torch.cat(logits)[:limit]}
    if isinstance(xs[0], dict):
        tensors.update({k: torch.cat([x[k] for x in xs])[:limit] for k in xs[0]})
    else:
        tensors["inputs"] = torch.cat(xs)[:limit]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out_dir / "sample.safetensors"))
    acc = float((tensors["logits"].argmax(-1) == tensors["labels"]).float().mean())
    return {"written": True, "examples": len(tensors["labels"]), "acc": acc, "keys": sorted(tensors)}


def clear_export(out_dir: Path) -> None:
    """Remove a previous export folder, only one that looks like ours (never a folder the user pointed at)."""
    if (out_dir / "export.json").is_file() and (out_dir / "classes.json").is_file():
        shutil.rmtree(out_dir)
