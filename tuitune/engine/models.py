"""Backbones: build a timm or Hugging Face model with a fresh head, and split it into ordered layer groups.

Layer groups are what the fine-tuning strategies freeze, unfreeze and give their own learning rates, so every
parameter must land in exactly one group, ordered from the input (stem / embeddings) to the output (always a
group named "head"). timm models describe their own grouping (`group_matcher`); transformers models are split
generically around their largest list of layers, with no per-architecture tables.

The product runs offline: nothing here downloads. A missing cache or a wrong name is a `ModelError`, one line that
says how to fix it. This module imports torch and timm at the top; it is only imported when a run starts.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm / huggingface_hub read it

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tuitune.config import ModelConfig  # noqa: E402
from tuitune.errors import UserError  # noqa: E402


class ModelError(UserError):
    """A model that cannot be built or loaded: a wrong name, a missing cache, weights of another architecture."""


@dataclass(frozen=True)
class LayerGroup:
    """A unit of freezing: strategies and checkpoints refer to groups by name, parameters by their full name."""

    name: str
    param_names: tuple[str, ...]
    params: int


@dataclass
class Backbone:
    """Everything a run needs from the model: `model(x) -> logits` for a tensor (images) or a dict of tensors
    (text), its groups (input to head), and how to feed it (data_config for images, tokenizer for text)."""

    model: nn.Module
    groups: tuple[LayerGroup, ...]
    task: str
    data_config: dict
    tokenizer: object | None
    description: str


def build_backbone(cfg: ModelConfig, num_classes: int, task: str = "image", coarse: bool = True) -> Backbone:
    """Build the model named by `cfg` with a `num_classes` head, its layer groups and its input settings."""
    if task not in ("image", "text"):
        raise ModelError(f"task: unknown task {task!r} (expected image or text)")
    _offline()
    if cfg.source == "timm":
        if task != "image":
            raise ModelError(f"model.source: timm models are image models; use source = \"hf\" for {task}")
        model, data_config, note = _build_timm(cfg, num_classes)
        tokenizer = None
    elif cfg.source == "hf":
        model, data_config, tokenizer, note = _build_hf(cfg, num_classes, task)
    else:
        raise ModelError(f"model.source: unknown source {cfg.source!r} (expected timm or hf)")
    total = sum(p.numel() for p in model.parameters())
    size = f"{total / 1e6:.1f}M" if total >= 100_000 else f"{total / 1e3:.1f}K"
    description = f"{cfg.source} {cfg.name} ({size} params){note}"
    return Backbone(model, layer_groups(model, coarse=coarse), task, data_config, tokenizer, description)


def layer_groups(model: nn.Module, *, coarse: bool = True) -> tuple[LayerGroup, ...]:
    """Split `model` (timm, wrapped or bare transformers, or any module) into ordered groups, head last."""
    if _hf_inner(model) is not None:
        named = _hf_groups(model)
    elif hasattr(model, "group_matcher"):
        named = _timm_groups(model, coarse)
    else:
        named = _child_groups(model)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    groups = tuple(LayerGroup(name, tuple(names), sum(sizes[n] for n in names)) for name, names in named)
    _check_partition(model, groups)
    return groups


def layer_table(groups: Iterable[LayerGroup], trainable: set[str] | None = None) -> list[dict]:
    """Rows for `tuitune layers --json` and the UI's layer panel; every group is trainable unless told."""
    return [{"name": g.name, "params": g.params, "trainable": trainable is None or g.name in trainable}
            for g in groups]


# ---------------------------------------------------------------------------------------------------- offline

def _offline() -> None:
    """Keep the hub offline unless the user said otherwise. huggingface_hub reads the variable once at import,
    so when something imported it earlier the constant is brought in line too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if _is_true(os.environ["HF_HUB_OFFLINE"]):
        try:
            from huggingface_hub import constants
            constants.HF_HUB_OFFLINE = True
        except ImportError:  # pragma: no cover
            pass


# ------------------------------------------------------------------------------------------------------ timm

def _build_timm(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, dict, str]:
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
    note = _load_weights(model, cfg.weights, name) if cfg.weights else ""
    data_config = dict(resolve_model_data_config(model))
    if cfg.img_size:
        data_config["input_size"] = (data_config["input_size"][0], cfg.img_size, cfg.img_size)
    return model, data_config, note


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
        raise ModelError(f"model.kwargs: timm model {name!r} rejected its arguments: {_first_line(e)}") from e
    except OSError as e:  # hub cache miss, offline mode, or a failed download
        if not pretrained:
            raise
        raise _no_timm_cache(name) from e


def _no_timm_cache(name: str) -> ModelError:
    return ModelError(
        f"model.pretrained: no cached pretrained weights for timm model {name!r} and no network; fetch them once "
        f"with: python -c \"import timm; timm.create_model('{name}', pretrained=True)\", or set model.weights to "
        "a local file")


def _check_timm_url_cache(name: str) -> None:
    """Weights hosted at a plain URL go through torch.hub, which ignores HF_HUB_OFFLINE: fail fast instead."""
    if not _is_true(os.environ.get("HF_HUB_OFFLINE", "")):
        return
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
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"model.weights: {path}: unknown format (expected .safetensors, .pth, .pt or .bin)")
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"model.weights: {path}: cannot read weights: {_first_line(e)}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"model.weights: {path}: not a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_weights(model: nn.Module, path: str, name: str) -> str:
    """Load a local file into everything but the (re-created) classifier; refuse another architecture's file."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    heads = _classifier_names(model)
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    body = [k for k in own if not is_head(k)]
    bad = [k for k in body if k not in sd or sd[k].shape != own[k].shape]
    if len(bad) * 2 > len(body):
        raise ModelError(f"{path}: weights do not fit timm model {name}: {len(bad)} of {len(body)} tensors "
                         f"missing/mismatched (e.g. {bad[0]})")
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    note = f"; weights {Path(path).name}"
    return note + (f", {len(bad)} tensors not in the file" if bad else "")


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
    except (NotImplementedError, AttributeError, TypeError):
        return _child_groups(model)
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
    return _unique(named + [("head", lists[-1])])


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
    heads = set(_classifier_names(model)) or {n for n in ("head", "fc", "classifier")
                                               if isinstance(getattr(model, n, None), nn.Module)}
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


def _unique(named: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    seen: Counter[str] = Counter()
    out = []
    for name, names in named:
        seen[name] += 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", names))
    return out


def _check_partition(model: nn.Module, groups: tuple[LayerGroup, ...]) -> None:
    """Every parameter in exactly one group: a strategy must never silently skip (or double) a tensor."""
    all_names = [n for n, _ in model.named_parameters()]
    assigned = Counter(n for g in groups for n in g.param_names)
    missing = [n for n in all_names if n not in assigned]
    doubled = [n for n, c in assigned.items() if c > 1]
    unknown = set(assigned) - set(all_names)
    if missing or doubled or unknown:
        example = (missing or doubled or sorted(unknown))[0]
        raise ModelError(f"model.name: cannot split {type(model).__name__} into layer groups: {len(missing)} "
                         f"unassigned, {len(doubled)} duplicated, {len(unknown)} unknown parameters "
                         f"(e.g. {example})")
    if not groups or groups[-1].name != "head" or len({g.name for g in groups}) != len(groups):
        raise ModelError(f"model.name: bad layer groups for {type(model).__name__}: {[g.name for g in groups]}")


# -------------------------------------------------------------------------------------------------------- hf

class HFClassifier(nn.Module):
    """A transformers model made callable as `model(x) -> logits`: x is an image tensor or a dict of tensors.

    `pooling="mean"` wraps a bare base model and puts an attention-masked mean over tokens under a fresh linear
    `head`; otherwise the model's own classification head gives the logits."""

    def __init__(self, hf: nn.Module, task: str, num_classes: int, pooling: str = "model",
                 interpolate_pos_encoding: bool = False) -> None:
        super().__init__()
        self.hf = hf
        self.task = task
        self.pooling = pooling if task == "text" else "model"
        self.head = nn.Linear(hf.config.hidden_size, num_classes) if self.pooling == "mean" else None
        sig = inspect.signature(hf.forward).parameters
        self._inputs = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self._extra = {"interpolate_pos_encoding": True} if (
            interpolate_pos_encoding and "interpolate_pos_encoding" in self._inputs) else {}

    @property
    def config(self) -> Any:
        return self.hf.config

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(x, dict):
            inputs = {k: v for k, v in x.items() if k in self._inputs}
        else:
            inputs = {"pixel_values" if self.task == "image" else "input_ids": x}
        out = self.hf(**inputs, **self._extra)
        if self.head is None:
            return out.logits
        hidden = out.last_hidden_state
        mask = inputs.get("attention_mask")
        if mask is None:
            return self.head(hidden.mean(dim=1))
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0))


def _build_hf(cfg: ModelConfig, num_classes: int, task: str) -> tuple[nn.Module, dict, object | None, str]:
    """Build a transformers classifier from a local folder or the hub cache; random init when not pretrained."""
    import transformers as tf

    if cfg.weights:
        raise ModelError("model.weights: only for timm models; for hf set model.name to a local model folder")
    name = _hf_location(cfg.name)
    config = _hf_call(name, lambda: tf.AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code))
    size = cfg.img_size or _image_size(config)
    interpolate = False
    if task == "text" and cfg.pooling == "mean":
        cls = tf.AutoModel
    else:
        cls = tf.AutoModelForSequenceClassification if task == "text" else tf.AutoModelForImageClassification
        config.num_labels = num_classes
    if task == "image" and cfg.img_size and _image_size(config) != cfg.img_size:
        if cfg.pretrained:
            interpolate = True  # keep the pretrained position embeddings; interpolate them at run time
        else:
            config.image_size = cfg.img_size
    if cfg.pretrained:
        load = lambda: cls.from_pretrained(name, config=config, ignore_mismatched_sizes=True,  # noqa: E731
                                           trust_remote_code=cfg.trust_remote_code)
    else:
        load = lambda: cls.from_config(config, trust_remote_code=cfg.trust_remote_code)  # noqa: E731
    with _quiet_transformers():
        model = HFClassifier(_hf_call(name, load), task, num_classes, cfg.pooling, interpolate)
        if task == "text":
            tokenizer = _hf_call(name, lambda: tf.AutoTokenizer.from_pretrained(
                name, trust_remote_code=cfg.trust_remote_code))
            return model, {}, tokenizer, ""
        return model, _hf_data_config(name, config, size), None, ""


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading reports and progress bars on stderr would scribble over the TUI; a re-created head is expected."""
    from transformers.utils import logging as tf_logging

    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def _hf_location(name: str) -> str:
    """A local folder must hold config.json; anything else that looks like a path must exist."""
    if not name:
        raise ModelError("model.name: empty (a local Hugging Face model folder or a hub id)")
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"model.name: {name} has no config.json (not a Hugging Face model folder)")
        return str(p)
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name: {name} is not a Hugging Face model folder")
    return name


def _hf_call(name: str, fn: Any) -> Any:
    """Run a transformers loader; a cache miss or an unsupported model becomes a one-line ModelError."""
    try:
        return fn()
    except OSError as e:
        if Path(name).is_dir():
            raise ModelError(f"model.name: {name}: cannot load: {_first_line(e)}") from e
        raise ModelError(f"model.name: Hugging Face model {name!r} is not in the local cache and there is no "
                         f"network; fetch it once with: hf download {name} (or huggingface-cli download "
                         f"{name}), or set model.name to a local folder") from e
    except (ValueError, KeyError) as e:
        raise ModelError(f"model.name: {name}: {_first_line(e)}") from e


def _image_size(config: Any) -> int:
    size = getattr(config, "image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _hf_data_config(name: str, config: Any, size: int) -> dict:
    """Input settings in timm's data_config shape, from the image processor when the folder has one."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(name)
    except Exception:  # no preprocessor_config.json: the ViT defaults
        proc = None
    channels = int(getattr(config, "num_channels", 3))
    mean = tuple(getattr(proc, "image_mean", None) or [0.5] * channels)
    std = tuple(getattr(proc, "image_std", None) or [0.5] * channels)
    resample = getattr(proc, "resample", 2)
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(resample or 2), "bilinear")
    return {"input_size": (channels, size, size), "mean": mean, "std": std,
            "interpolation": interpolation, "crop_pct": 1.0, "crop_mode": "center"}


def _hf_inner(model: nn.Module) -> nn.Module | None:
    """The transformers model inside `model` (the wrapper's `hf`, or `model` itself), else None."""
    inner = model.hf if isinstance(model, HFClassifier) else model
    if getattr(inner, "base_model_prefix", None) is not None and hasattr(inner, "base_model"):
        return inner
    return None


def _hf_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """embeddings / layer.<i> / post-layer modules / head, found around the base model's largest layer list."""
    base = _hf_inner(model).base_model  # type: ignore[union-attr]
    prefix = next(n for n, m in model.named_modules() if m is base)
    prefix = prefix + "." if prefix else ""
    layers = _largest_module_list(base)
    lname = next(n for n, m in base.named_modules() if m is layers) if layers is not None else None
    embeddings, post, head = [], [], []
    blocks: dict[int, list[str]] = {}
    for n, _ in model.named_parameters():
        if not n.startswith(prefix):
            head.append(n)
            continue
        rel = n[len(prefix):]
        if lname is not None and rel.startswith(lname + "."):
            blocks.setdefault(int(rel[len(lname) + 1:].split(".")[0]), []).append(n)
        elif not blocks:
            embeddings.append(n)
        else:
            post.append(n)
    named = [("embeddings" if lname else "base", embeddings)] if embeddings else []
    named += [(f"layer.{i}", blocks[i]) for i in sorted(blocks)]
    if post:
        tops = {n[len(prefix):].split(".")[0] for n in post}
        top = tops.pop() if len(tops) == 1 else "post"
        named.append((top if top not in ("head", "embeddings") else "post", post))
    named.append(("head", head))
    return _unique(named)


def _largest_module_list(base: nn.Module) -> nn.ModuleList | None:
    """The transformer's stack of layers: the ModuleList holding the most parameters."""
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return None
    return max(lists, key=lambda m: (sum(p.numel() for p in m.parameters()), len(m)))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
