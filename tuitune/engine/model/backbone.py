"""Backbones: build a timm or Hugging Face model with a fresh head, and split it into ordered layer groups.

Layer groups are what the fine-tuning strategies freeze, unfreeze and give their own learning rates, so every
parameter must land in exactly one group, ordered from the input (stem / embeddings) to the output (always a
group named "head"). timm models describe their own grouping (`group_matcher`); transformers models are split
generically around their largest list of layers, with no per-architecture tables.

Pretrained weights come from the standard Hugging Face cache; when they are missing and the hub is reachable (not
`HF_HUB_OFFLINE=1` / `--offline`), `tuitune.engine.model.hub` fetches them first, with progress as events, and the
model is then built with the hub switched off. A missing cache, a failed download or a wrong name is a `ModelError`,
one line that says how to fix it. This module imports torch and timm at the top; it is only imported when a run
starts.
The Hugging Face half lives in `tuitune.engine.model.hf`; the types both halves share (groups, `Backbone`,
`ModelError`) in `tuitune.engine.model.groups`.
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuitune.config import ModelConfig
from tuitune.engine.model import hub
from tuitune.engine.model.groups import Backbone, LayerGroup, ModelError, check_partition, unique_groups
from tuitune.engine.model.hf import HFClassifier, build_hf, hf_groups, hf_inner, hf_location
from tuitune.errors import first_line

__all__ = ["Backbone", "HFClassifier", "LayerGroup", "ModelError", "build_backbone", "layer_groups", "layer_table"]


def build_backbone(
    cfg: ModelConfig, num_classes: int, task: str = "image", coarse: bool = True, emit: hub.Emit | None = None
) -> Backbone:
    """Build the model named by `cfg` with a `num_classes` head, its layer groups and its input settings;
    `emit` receives the download's `SetupProgressed` events when weights must be fetched first."""
    if task not in ("image", "text"):
        raise ModelError(f"task: unknown task {task!r} (expected image or text)")
    if cfg.source not in ("timm", "hf"):
        raise ModelError(f"model.source: unknown source {cfg.source!r} (expected timm or hf)")
    if cfg.source == "timm" and task != "image":
        raise ModelError(f'model.source: timm models are image models; use source = "hf" for {task}')
    _fetch(cfg, emit)
    with hub.hub_off():
        if cfg.source == "timm":
            model, data_config, note, source_head = _build_timm(cfg, num_classes)
            tokenizer = None
        else:
            model, data_config, tokenizer, note = build_hf(cfg, num_classes, task)
            source_head = None
    total = sum(p.numel() for p in model.parameters())
    size = f"{total / 1e6:.1f}M" if total >= 100_000 else f"{total / 1e3:.1f}K"
    description = f"{cfg.source} {cfg.name} ({size} params){note}"
    return Backbone(model, layer_groups(model, coarse=coarse), task, data_config, tokenizer, description, source_head)


def layer_groups(model: nn.Module, *, coarse: bool = True) -> tuple[LayerGroup, ...]:
    """Split `model` (timm, wrapped or bare transformers, or any module) into ordered groups, head last."""
    if hf_inner(model) is not None:
        named = hf_groups(model)
    elif hasattr(model, "group_matcher"):
        named = _timm_groups(model, coarse)
    else:
        named = _child_groups(model)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    groups = tuple(LayerGroup(name, tuple(names), sum(sizes[n] for n in names)) for name, names in named)
    check_partition(model, groups)
    return groups


def layer_table(groups: Iterable[LayerGroup], trainable: set[str] | None = None) -> list[dict]:
    """Rows for `tuitune layers --json` and the UI's layer panel; every group is trainable unless told."""
    return [
        {
            "name": g.name,
            "params": g.params,
            "trainable": (trainable is None or g.name in trainable) and bool(g.trained),  # LoRA: no adapter, frozen
            **({"adapters": g.adapter_params} if g.adapter_params is not None else {}),
        }
        for g in groups
    ]


# ---------------------------------------------------------------------------------------------------- the hub


def _fetch(cfg: ModelConfig, emit: hub.Emit | None) -> None:
    """Fetch what the build will read from the hub (nothing when cached, offline, or a local file / folder)."""
    try:
        if cfg.source == "timm" and cfg.pretrained and not cfg.weights and cfg.name:
            import timm

            if cfg.name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(cfg.name):
                hub.fetch_timm(cfg.name, emit)
        elif cfg.source == "hf" and cfg.name and not cfg.weights:
            hub.fetch_hf(hf_location(cfg.name), emit, weights=cfg.pretrained)
    except hub.DownloadFailed as e:
        raise ModelError(
            f"model.pretrained: download failed: {e} (a partial file is never used; retry, or "
            f"set model.weights to a local file)"
        ) from e


# ------------------------------------------------------------------------------------------------------ timm


def _build_timm(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, dict, str, dict | None]:
    """Create the timm model (weights from a local file, the hub cache, or none) and resolve its data config."""
    import timm
    from timm.data import resolve_model_data_config

    name = cfg.name
    if not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ModelError(f"model.name: unknown timm model {name!r}{hint}")
    pretrained = cfg.pretrained and not cfg.weights
    if pretrained:
        _check_timm_url_cache(name)
    model = _create_timm(name, pretrained, num_classes, cfg)
    note, source_head = _load_weights(model, cfg.weights, name, cfg.keep_head) if cfg.weights else ("", None)
    data_config = dict(resolve_model_data_config(model))
    if cfg.img_size:
        data_config["input_size"] = (data_config["input_size"][0], cfg.img_size, cfg.img_size)
    return model, data_config, note, source_head


def _create_timm(name: str, pretrained: bool, num_classes: int, cfg: ModelConfig) -> nn.Module:
    """timm.create_model with `img_size` when the model takes it; offline misses become one-line errors."""
    import timm

    kwargs = dict(cfg.kwargs)
    if cfg.img_size and "img_size" not in kwargs:
        kwargs["img_size"] = cfg.img_size
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e) or "img_size" in cfg.kwargs:
                raise
            kwargs.pop("img_size")
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ModelError(f"model.kwargs: timm model {name!r} rejected its arguments: {first_line(e)}") from e
    except OSError as e:  # hub cache miss, offline mode, or a failed download
        if not pretrained:
            raise
        raise _no_timm_cache(name) from e


def _no_timm_cache(name: str) -> ModelError:
    return ModelError(
        f"model.pretrained: no cached pretrained weights for timm model {name!r} and no network; fetch them once "
        f"with: python -c \"import timm; timm.create_model('{name}', pretrained=True)\", or set model.weights to "
        "a local file"
    )


def _check_timm_url_cache(name: str) -> None:
    """Weights hosted at a plain URL go through torch.hub, which ignores HF_HUB_OFFLINE: after the fetch step
    (which downloads them when the hub is on), a miss means offline and not cached: fail fast instead."""
    try:
        from timm.models import get_pretrained_cfg
        from timm.models._builder import _resolve_pretrained_source, check_cached_file

        pcfg = get_pretrained_cfg(name)
        source, location = _resolve_pretrained_source(pcfg.to_dict()) if pcfg else ("", "")
    except Exception:  # timm internals moved: let create_model fail on its own
        return
    if source == "url" and not check_cached_file(location):
        raise _no_timm_cache(name)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a local weights file; unwrap the usual {"state_dict": ...} / {"model": ...} and DDP's `module.`."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model.weights: no such file {path}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p), device="cpu")
        elif p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            with warnings.catch_warnings():  # torch's pickle-protocol notes would be a second line on stderr
                warnings.simplefilter("ignore")
                sd = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"model.weights: {path}: unknown format (expected .safetensors, .pth, .pt or .bin)")
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"model.weights: {path}: cannot read weights: {first_line(e)}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"model.weights: {path}: not a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_weights(
    model: nn.Module, path: str, name: str, keep_head: bool = False
) -> tuple[str, dict[str, torch.Tensor] | None]:
    """Load a local file into everything but the classifier, which is re-created for this run's classes (even when
    its shape happens to match: a head trained on other classes is no head for these) unless `keep_head`. The
    file's own classifier tensors are returned as the source head. Refuse another architecture's file."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    heads = _classifier_names(model)
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    # parameters and running statistics: BatchNorm's `num_batches_tracked` counters are used by no forward pass
    # (momentum is set), so a file without them (most published ones) is complete
    body = [k for k in own if not is_head(k) and not k.endswith("num_batches_tracked")]
    bad = [k for k in body if k not in sd or sd[k].shape != own[k].shape]
    if len(bad) * 2 > len(body):
        raise ModelError(
            f"model.weights: {path}: weights do not fit timm model {name}: {len(bad)} of {len(body)} tensors "
            f"missing/mismatched (e.g. {bad[0]})"
        )
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape and (keep_head or not is_head(k))}
    model.load_state_dict(keep, strict=False)
    source_head = {k: v for k, v in sd.items() if is_head(k)} or None
    note = f"; weights {Path(path).name}"
    return note + (f", {len(bad)} tensors not in the file" if bad else ""), source_head


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names from timm's pretrained_cfg (a name, or a tuple for distilled models)."""
    pcfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = pcfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _timm_groups(model: nn.Module, coarse: bool) -> list[tuple[str, list[str]]]:
    """timm's own grouping, named from the parameter names; the classifier always ends up in the last group."""
    from timm.models import group_parameters

    try:
        grouped = group_parameters(model, model.group_matcher(coarse=coarse))
    except (NotImplementedError, AttributeError, TypeError):  # a model without a usable group_matcher:
        return _child_groups(model)  # fall back to one group per top-level child, classifier last
    lists = [list(v) for v in grouped.values() if v]
    heads = _classifier_names(model)
    head_names = [n for lst in lists for n in lst if any(n.startswith(h + ".") for h in heads)]
    if head_names and not set(head_names) <= set(lists[-1]):
        lists = [[n for n in lst if n not in head_names] for lst in lists]
        lists = [lst for lst in lists if lst] + [head_names]
    full = [_prefix_name(names) for names in lists[:-1]]
    named = [(_short_name(name, full), names) for name, names in zip(full, lists)]
    if named and not any(c.isdigit() for c in full[0].split(".")):
        named[0] = ("stem", named[0][1])
    return unique_groups([*named, ("head", lists[-1])])


def _short_name(name: str, others: list[str]) -> str:
    """The shortest prefix ending at a numbered part ("layer1", "stages.0") that no other group's name shares,
    so coarse stages read as "layer1" rather than "layer1.0" when a stage holds a single block."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        short = parts[:i]
        if not any(ch.isdigit() for ch in parts[i - 1]):
            continue
        if not any(o != name and o.split(".")[:i] == short for o in others):
            return ".".join(short)
    return name


def _prefix_name(names: list[str]) -> str:
    """The common module prefix ("layer1", "stages.0"); a group spanning unrelated modules (ViT's last block +
    the final norm) is named after the top-level module holding most of its tensors."""
    common = _common_module_prefix(names)
    if common:
        return common
    top = Counter(n.split(".")[0] for n in names).most_common(1)[0][0]
    return _common_module_prefix([n for n in names if n.split(".")[0] == top]) or top


def _common_module_prefix(names: list[str]) -> str:
    paths = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _child_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Fallback: one group per top-level child, root-level parameters as "stem", the classifier last."""
    heads = set(_classifier_names(model)) or {
        n for n in ("head", "fc", "classifier") if isinstance(getattr(model, n, None), nn.Module)
    }
    order: dict[str, list[str]] = {}
    for n, _ in model.named_parameters():
        top = n.split(".")[0] if "." in n else "stem"
        order.setdefault("head" if top in heads else top, []).append(n)
    named = [(k, v) for k, v in order.items() if k not in ("stem", "head")]
    if "stem" in order:
        named.insert(0, ("stem", order["stem"]))
    if "head" in order:
        named.append(("head", order["head"]))
    elif named:
        named[-1] = ("head", named[-1][1])
    return named
