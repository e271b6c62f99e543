"""Causal language models (`model.task = "causal_lm"`): an `AutoModelForCausalLM` from a hub id, a local folder, the
folder of an installed Python package (`python:PACKAGE`) or a GGUF file in one (`model.gguf_file`, read by
transformers' own GGUF support), behind one `model(x) -> logits` wrapper; its layer groups; greedy generation.

Layer groups of a decoder, input to output: the embeddings, the blocks (in about 6 groups with `strategy.coarse`,
e.g. `layer.0-4` ... `layer.25-29` for 30 blocks; one group each otherwise), what follows them (the final norm) and
the LM head. A head tied to the embeddings is one parameter, so one group: `head`, last, as every strategy expects
(`progressive` unfreezes it first, `head_only` trains it alone). Under LoRA the head is not adapted and does not
train (it is pretrained, unlike a classifier's new head); the attention and MLP projections of every block are.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tuitune.config import ModelConfig
from tuitune.engine.model import hub
from tuitune.engine.model.groups import Backbone, LayerGroup, ModelError, check_partition
from tuitune.engine.model.hf import _hf_call, _largest_module_list, _quiet_transformers, apply_config_overrides
from tuitune.engine.model.lora import apply_lora, uses_lora
from tuitune.engine.record.progress import Progress
from tuitune.errors import first_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from tuitune.config import RunProfile
    from tuitune.engine.events import Event

__all__ = [
    "DECODER_TARGETS",
    "CausalLM",
    "build_causal_lm",
    "causal_backbone",
    "decoder_groups",
    "generation_eos",
    "greedy",
    "model_folder",
]

# LoRA's default targets in a decoder: the attention and MLP projections (Llama / Mistral / Qwen / SmolLM names,
# and GPT-2's fused ones).
DECODER_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)
BLOCK_GROUPS = 6  # `strategy.coarse`: the blocks in about this many groups


class CausalLM(nn.Module):
    """A transformers causal LM as `model(x) -> logits` ([B, T, V]); x is a dict of token tensors, of which the
    model's forward takes what it knows (`input_ids`, `attention_mask`, `position_ids`). No KV cache in training.
    `logits_to_keep` (the positions scored, from the chat data's collate) gives [B, K, V]: the model's own argument
    where it has one, else the full logits cut to them."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        sig = inspect.signature(hf.forward).parameters
        self._inputs = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self._extra = {"use_cache": False} if "use_cache" in self._inputs else {}

    @property
    def config(self) -> Any:
        return self.hf.config

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.hf(**{k: v for k, v in x.items() if k in self._inputs}, **self._extra).logits
        keep = x.get("logits_to_keep")
        if keep is not None and "logits_to_keep" not in self._inputs:
            logits = logits[:, keep]
        return logits


# ------------------------------------------------------------------------------------------------ building


def causal_backbone(
    profile: RunProfile,
    model_cfg: ModelConfig | None = None,
    emit: Callable[[Event], None] | None = None,
    classes: tuple[str, ...] | None = None,
) -> tuple[Backbone, tuple[str, ...], list[str]]:
    """The causal-LM task's builder (`rebuild.profile_backbone`'s signature): the model, its decoder groups and,
    under LoRA, its adapters; a language model has no classes. `train.gradient_checkpointing` (declared with the
    memory plan) turns on the model's own gradient checkpointing."""
    cfg = profile.model if model_cfg is None else model_cfg
    checkpointing = bool(getattr(profile.train, "gradient_checkpointing", False))
    backbone = build_causal_lm(cfg, coarse=profile.strategy.coarse, emit=emit, checkpointing=checkpointing)
    notes: list[str] = []
    if uses_lora(profile.strategy):
        backbone, notes = apply_lora(backbone, profile.strategy, defaults=DECODER_TARGETS, full_head=False)
    return backbone, (), notes


def model_folder(cfg: ModelConfig) -> tuple[str, bool]:
    """(where transformers reads the model, whether that is a local folder). `python:PACKAGE` is the folder of an
    installed package; with `gguf_file` it must be a local folder holding the file."""
    name = cfg.name
    if name.startswith("python:"):
        spec = importlib.util.find_spec(name[len("python:") :]) if name[len("python:") :] else None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model.name: {name}: no installed Python package of that name")
        name = next(iter(spec.submodule_search_locations))
    folder = Path(name).expanduser()
    if cfg.gguf_file:
        if not folder.is_dir():
            raise ModelError(f"model.gguf_file: {cfg.gguf_file} is read from a local folder; {name} is not one")
        if not (folder / cfg.gguf_file).is_file():
            ggufs = sorted(p.name for p in folder.glob("*.gguf")) or ["none"]
            raise ModelError(f"model.gguf_file: no {cfg.gguf_file} in {folder} (GGUF files there: {', '.join(ggufs)})")
        return str(folder), True
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError(f"model.name: {name} has no config.json (not a Hugging Face model folder)")
        return str(folder), True
    if folder.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name: {name} is not a Hugging Face model folder")
    return name, False


def build_causal_lm(
    cfg: ModelConfig, *, coarse: bool = True, emit: Callable[[Event], None] | None = None, checkpointing: bool = False
) -> Backbone:
    """An AutoModelForCausalLM (float32) and its tokenizer; random weights when not `pretrained`."""
    import transformers as tf

    name, local = model_folder(cfg)
    if not local:
        try:
            hub.fetch_hf(name, emit, weights=cfg.pretrained)
        except hub.DownloadFailed as e:
            raise ModelError(f"model.pretrained: download failed: {e} (a partial file is never used; retry)") from e
    kw: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        kw["gguf_file"] = cfg.gguf_file
    with hub.hub_off(), _quiet_transformers(), _gguf_progress(emit, cfg.gguf_file):
        config = _hf_call(name, lambda: tf.AutoConfig.from_pretrained(name, **kw))
        apply_config_overrides(config, cfg.kwargs)

        def load() -> Any:
            if cfg.pretrained:
                return tf.AutoModelForCausalLM.from_pretrained(name, config=config, dtype=torch.float32, **kw)
            return tf.AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)

        try:
            hf = _hf_call(name, load)
        except ImportError as e:  # e.g. GGUF without the `gguf` package
            raise ModelError(f"model.gguf_file: {first_line(e)}") from e
        tokenizer = _hf_call(name, lambda: tf.AutoTokenizer.from_pretrained(name, **kw))
    if any(p.dtype != torch.float32 for p in hf.parameters()):
        hf.float()
    if cfg.gguf_file:  # dequantized to float32 on loading: a plain model from here on (it trains and saves as one)
        hf.hf_quantizer = None
        getattr(hf.config, "__dict__", {}).pop("quantization_config", None)
    if checkpointing:  # transformers 5.x's name, then the older one
        enable = getattr(hf, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = CausalLM(hf)
    groups = decoder_groups(model, coarse)
    total = sum(p.numel() for p in model.parameters())
    tied = " (LM head tied to the embeddings)" if _tied(hf) else ""
    source = f"{cfg.name} [{cfg.gguf_file}]" if cfg.gguf_file else cfg.name
    return Backbone(model, groups, "text", {}, tokenizer, f"hf {source} ({total / 1e6:.1f}M params){tied}")


@contextlib.contextmanager
def _gguf_progress(emit: Callable[[Event], None] | None, name: str) -> Iterator[None]:
    """transformers dequantizes a GGUF file's tensors under a plain tqdm bar on stderr, which would scribble over the
    dashboard: while it loads, its bar is replaced by `SetupProgressed` events (`convert`, in tensors)."""
    if not name:
        yield
        return
    module: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")

    def tracked(items: Iterable[Any], desc: str = "", **_: Any) -> Iterator[Any]:
        items = list(items)
        progress = Progress(emit, "convert", name, len(items), "tensors")
        for item in items:
            yield item
            progress.advance(1)
        progress.finish()

    before = module.tqdm
    module.tqdm = tracked
    try:
        yield
    finally:
        module.tqdm = before


def _tied(hf: nn.Module) -> bool:
    out, emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    return out is not None and emb is not None and out.weight is emb.weight


def decoder_groups(model: CausalLM, coarse: bool = True) -> tuple[LayerGroup, ...]:
    """embeddings / the blocks (grouped) / what follows them / head: found around the base model's largest list of
    layers, not by architecture. The LM head's parameters (one, when tied to the embeddings) make `head`."""
    hf = model.hf
    base = hf.base_model
    prefix = next(n for n, m in model.named_modules() if m is base) + "."
    layers = _largest_module_list(base)
    if layers is None:
        raise ModelError(f"model.name: {type(base).__name__} has no list of blocks to group")
    lname = prefix + next(n for n, m in base.named_modules() if m is layers) + "."
    out = hf.get_output_embeddings()
    head_ids = {id(p) for p in out.parameters()} if out is not None else set()
    embeddings, post, head = [], [], []
    blocks: dict[int, list[str]] = {}
    for n, p in model.named_parameters():
        if id(p) in head_ids or not n.startswith(prefix):
            head.append(n)
        elif n.startswith(lname):
            blocks.setdefault(int(n[len(lname) :].split(".")[0]), []).append(n)
        elif not blocks:
            embeddings.append(n)
        else:
            post.append(n)
    named = [("embeddings", embeddings)] if embeddings else []
    named += _block_groups(blocks, coarse)
    if post:
        tops = {n[len(prefix) :].split(".")[0] for n in post}
        named.append((tops.pop() if len(tops) == 1 else "post", post))
    named.append(("head", head))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    groups = tuple(LayerGroup(name, tuple(names), sum(sizes[n] for n in names)) for name, names in named)
    check_partition(model, groups)
    return groups


def _block_groups(blocks: dict[int, list[str]], coarse: bool) -> list[tuple[str, list[str]]]:
    order = sorted(blocks)
    size = math.ceil(len(order) / BLOCK_GROUPS) if coarse else 1
    out = []
    for i in range(0, len(order), size):
        chunk = order[i : i + size]
        name = f"layer.{chunk[0]}" if len(chunk) == 1 else f"layer.{chunk[0]}-{chunk[-1]}"
        out.append((name, [n for b in chunk for n in blocks[b]]))
    return out


# ---------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy(
    model: CausalLM, prompts: list[list[int]], max_new_tokens: int, pad: int, eos: Any, batch_size: int = 16
) -> list[list[int]]:
    """Greedy continuations of each prompt (token ids), each cut before its first end-of-sequence token. Prompts are
    left-padded in batches; the model is left in eval mode (the caller restores its training mode)."""
    from transformers import GenerationConfig

    stops = {int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos]) if t is not None}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=sorted(stops) or None
    )
    device = next(model.parameters()).device
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, p in enumerate(chunk):
            ids[r, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        with _quiet_transformers():
            gen = model.hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row in gen[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def generation_eos(model: CausalLM, tokenizer: Any) -> list[int]:
    """The tokens that end a generation: the model's generation config's, the tokenizer's end-of-sequence token."""
    found = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    ids = list(found) if isinstance(found, (list, tuple)) else [found]
    ids.append(tokenizer.eos_token_id)
    return sorted({int(t) for t in ids if t is not None})
