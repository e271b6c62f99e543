"""Hugging Face backbones: an AutoModelFor* (or a bare AutoModel under a mean-pooled head) behind one
`model(x) -> logits` wrapper, its tokenizer or image data config, and a generic split into layer groups found
around the base model's largest list of layers (no per-architecture tables).

`tuitune.engine.model.backbone.build_backbone` / `layer_groups` call into this module; it imports transformers only
inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuitune.config import ModelConfig
from tuitune.engine.model.groups import ModelError, unique_groups
from tuitune.errors import first_line


class HFClassifier(nn.Module):
    """A transformers model made callable as `model(x) -> logits`: x is an image tensor or a dict of tensors.

    `pooling="mean"` wraps a bare base model and puts an attention-masked mean over tokens under a fresh linear
    `head`; otherwise the model's own classification head gives the logits."""

    def __init__(
        self, hf: nn.Module, task: str, num_classes: int, pooling: str = "model", interpolate_pos_encoding: bool = False
    ) -> None:
        super().__init__()
        self.hf = hf
        self.task = task
        self.pooling = pooling if task == "text" else "model"
        self.head = nn.Linear(hf.config.hidden_size, num_classes) if self.pooling == "mean" else None
        sig = inspect.signature(hf.forward).parameters
        self._inputs = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self._extra = (
            {"interpolate_pos_encoding": True}
            if (interpolate_pos_encoding and "interpolate_pos_encoding" in self._inputs)
            else {}
        )

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


def build_hf(cfg: ModelConfig, num_classes: int, task: str) -> tuple[nn.Module, dict, object | None, str]:
    """Build a transformers classifier from a local folder or the hub cache; random init when not pretrained."""
    import transformers as tf

    if cfg.weights:
        raise ModelError("model.weights: only for timm models; for hf set model.name to a local model folder")
    name = hf_location(cfg.name)
    config = _hf_call(name, lambda: tf.AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code))
    apply_config_overrides(config, cfg.kwargs)
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

    def load() -> Any:
        if cfg.pretrained:
            return cls.from_pretrained(
                name, config=config, ignore_mismatched_sizes=True, trust_remote_code=cfg.trust_remote_code
            )
        return cls.from_config(config, trust_remote_code=cfg.trust_remote_code)

    with _quiet_transformers():
        model = HFClassifier(_hf_call(name, load), task, num_classes, cfg.pooling, interpolate)
        if task == "text":
            tokenizer = _hf_call(
                name, lambda: tf.AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
            )
            return model, {}, tokenizer, ""
        return model, _hf_data_config(name, config, size), None, ""


# The same knob has different names across architectures (BERT `hidden_dropout_prob`, DistilBERT `dropout`, ...).
_ALIASES = {
    "hidden_dropout": ("hidden_dropout_prob", "dropout", "hidden_dropout"),
    "classifier_dropout": ("classifier_dropout", "seq_classif_dropout"),
}


def apply_config_overrides(config: Any, overrides: dict[str, Any]) -> None:
    """`model.kwargs` for an hf model: attributes of its config, plus the portable dropout names above."""
    for key, value in overrides.items():
        names = [n for n in _ALIASES.get(key, (key,)) if hasattr(config, n)]
        if not names:
            raise ModelError(f"model.kwargs.{key}: {type(config).__name__} has no such setting")
        for n in names:
            setattr(config, n, value)


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


def hf_location(name: str) -> str:
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
            raise ModelError(f"model.name: {name}: cannot load: {first_line(e)}") from e
        raise ModelError(
            f"model.name: Hugging Face model {name!r} is not in the local cache and there is no "
            f"network; fetch it once with: hf download {name} (or huggingface-cli download "
            f"{name}), or set model.name to a local folder"
        ) from e
    except (ValueError, KeyError) as e:
        raise ModelError(f"model.name: {name}: {first_line(e)}") from e


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
    return {
        "input_size": (channels, size, size),
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def hf_inner(model: nn.Module) -> nn.Module | None:
    """The transformers model inside `model` (the wrapper's `hf`, or `model` itself), else None."""
    inner = model.hf if isinstance(model, HFClassifier) else model
    if getattr(inner, "base_model_prefix", None) is not None and hasattr(inner, "base_model"):
        return inner
    return None


def hf_base(model: nn.Module) -> nn.Module:
    """The base model (the encoder, without pooler or head) of the transformers model inside `model`."""
    inner = hf_inner(model)
    if inner is None:
        raise TypeError(f"{type(model).__name__} is not a transformers model")
    return inner.base_model


def hf_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """embeddings / layer.<i> / post-layer modules / head, found around the base model's largest layer list."""
    base = hf_base(model)
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
        rel = n[len(prefix) :]
        if lname is not None and rel.startswith(lname + "."):
            blocks.setdefault(int(rel[len(lname) + 1 :].split(".")[0]), []).append(n)
        elif not blocks:
            embeddings.append(n)
        else:
            post.append(n)
    named = [("embeddings" if lname else "base", embeddings)] if embeddings else []
    named += [(f"layer.{i}", blocks[i]) for i in sorted(blocks)]
    if post:
        tops = {n[len(prefix) :].split(".")[0] for n in post}
        top = tops.pop() if len(tops) == 1 else "post"
        named.append((top if top not in ("head", "embeddings") else "post", post))
    named.append(("head", head))
    return unique_groups(named)


def _largest_module_list(base: nn.Module) -> nn.ModuleList | None:
    """The transformer's stack of layers: the ModuleList holding the most parameters."""
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return None
    return max(lists, key=lambda m: (sum(p.numel() for p in m.parameters()), len(m)))
