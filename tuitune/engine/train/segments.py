"""A model's forward as a sequence of segments, so that a frozen prefix can be computed once and cached.

The feature cache (`feature_cache.py`) needs three things of a model: its segments in forward order (each with
the modules it calls and the parameters it owns), the activation after segment k (`prefix`), and the logits from
that activation (`top`). Two kinds of models give them honestly:

- timm models whose `forward_features` is a plain chain of modules: ResNet, ConvNeXt, VisionTransformer,
  EfficientNet, MobileNetV3 (read off their `forward_features`; `forward_head(pre_logits=True)` and the classifier
  are the last two segments). Any other class is reported as not known to be sequential.
- Hugging Face encoders (embeddings, then the base model's largest list of layers): the model runs its own forward
  with the embeddings module replaced by one that hands back the cached activation and the layer list cut to the
  layers above the boundary, so masks, pooling and heads stay exactly the library's.
- Causal LMs (`CausalLM`, Llama-style: `embed_tokens`, then the blocks) the same way (`DecoderSplit`): the cached
  activation goes in as `inputs_embeds` with the batch's other inputs, so rotary positions, the causal mask (from
  the attention mask, or from packed position ids), the final norm and the LM head on `logits_to_keep` are the
  model's own. GPT-2-style decoders, which add position embeddings after `wte`, fail `verify` and are not cached.

Either way the split is checked on a real batch before it is trusted (`verify`): top(prefix(x)) must equal the
model's own output in eval mode, or the cache is not used and the event says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuitune.engine.model.heads import classifier, splittable


@dataclass(frozen=True)
class Segment:
    """One step of the forward: what it calls (`modules`, checked for randomness) and the parameters it owns."""

    name: str
    run: Callable[[Any], Any]
    modules: tuple[nn.Module, ...]
    params: frozenset[str]


class NotSequential(Exception):
    """The model's forward is not (known to be) a chain of its segments: the reason is the message."""


def split_model(model: nn.Module) -> TimmSplit | HFSplit:
    """The split for `model`, or NotSequential saying why there is none."""
    from tuitune.engine.model.causal_lm import CausalLM
    from tuitune.engine.model.hf import hf_inner

    if isinstance(model, CausalLM):
        return DecoderSplit(model)
    if hf_inner(model) is not None:
        return HFSplit(model)
    if splittable(model):
        return TimmSplit(model)
    raise NotSequential(f"{type(model).__name__} is neither a timm model, a Hugging Face encoder nor a causal LM")


def _sub(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _blocks(model: nn.Module, path: str, depth: int = 1) -> list[str]:
    """The children of an nn.Sequential (`depth` levels down), so a boundary can fall between blocks."""
    module = _sub(model, path)
    if depth == 0 or not isinstance(module, nn.Sequential):
        return [path]
    return [p for name, _ in module.named_children() for p in _blocks(model, f"{path}.{name}", depth - 1)]


def _chain(modules: list[nn.Module]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        for m in modules:
            x = m(x)
        return x

    return run


# timm: each family's forward_features, as (segment name, module paths) in call order; "*" expands a Sequential.
_TIMM: dict[str, list[tuple[str, list[str]]]] = {
    "ResNet": [
        ("stem", ["conv1", "bn1", "act1", "maxpool"]),
        ("*1", ["layer1"]),
        ("*1", ["layer2"]),
        ("*1", ["layer3"]),
        ("*1", ["layer4"]),
    ],
    "ConvNeXt": [("stem", ["stem"]), ("*1", ["stages"]), ("norm_pre", ["norm_pre"])],
    "EfficientNet": [("stem", ["conv_stem", "bn1"]), ("*2", ["blocks"]), ("conv_head", ["conv_head", "bn2"])],
    "MobileNetV3": [("stem", ["conv_stem", "bn1"]), ("*2", ["blocks"])],
    "VisionTransformer": [
        ("stem", ["patch_embed", "pos_drop", "patch_drop", "norm_pre"]),
        ("*1", ["blocks"]),
        ("norm", ["norm"]),
    ],
}
_VIT_ROOT_PARAMS = ("cls_token", "reg_token", "pos_embed")


class TimmSplit:
    """A timm model as stem, blocks, final features, pre-logits, classifier."""

    def __init__(self, model: nn.Module) -> None:
        kind = type(model).__name__
        if kind not in _TIMM:
            raise NotSequential(
                f"timm {kind}: its forward is not known to be a chain of its blocks (cached "
                f"families: {', '.join(_TIMM)})"
            )
        if getattr(model, "grad_checkpointing", False):
            raise NotSequential("gradient checkpointing is on")
        self.model = model
        names = {n for n, _ in model.named_parameters()}
        self.segments: list[Segment] = []
        for name, paths in _TIMM[kind]:
            expanded = [[p] for p in _blocks(model, paths[0], int(name[1]))] if name.startswith("*") else [paths]
            for group in expanded:
                self._add(name if not name.startswith("*") else group[0], group, names)
        if kind == "VisionTransformer":
            self._vit_stem(names)
        head = {id(p) for p in classifier(model).parameters()}
        claimed = set().union(*(s.params for s in self.segments))
        own = dict(model.named_parameters())
        rest = frozenset(n for n in names - claimed if id(own[n]) not in head)
        # forward_head's own randomness (timm's functional head dropout) shows in `feature_cache`'s repeat check
        self.segments.append(Segment("pre_logits", lambda x: model.forward_head(x, pre_logits=True), (), rest))
        self.segments.append(
            Segment("classifier", classifier(model), (classifier(model),), frozenset(n for n in names - claimed - rest))
        )

    def _add(self, name: str, paths: list[str], names: set[str]) -> None:
        modules = [m for m in (_sub(self.model, p) for p in paths) if m is not None]
        owned = frozenset(n for n in names if any(n.startswith(p + ".") for p in paths))
        self.segments.append(Segment(name, _chain(modules), tuple(modules), owned))

    def _vit_stem(self, names: set[str]) -> None:
        """ViT's stem is patch embedding, then `_pos_embed` (class / register tokens and position embedding, a
        method over root parameters), then patch dropout and the pre-norm."""
        m, stem = self.model, self.segments[0]
        run = lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # noqa: E731
        self.segments[0] = Segment(
            "stem", run, stem.modules, stem.params | frozenset(n for n in names if n in _VIT_ROOT_PARAMS)
        )

    def prefixes(self, x: Any, ks: list[int]) -> dict[int, Any]:
        """The activations after each segment in `ks`, from one pass."""
        out = {}
        for i, seg in enumerate(self.segments[: max(ks) + 1]):
            x = seg.run(x)
            if i in ks:
                out[i] = x
        return out

    def top_input(self, a: Any, x: Any) -> Any:
        """What `top` takes, from the activation `a` of batch `x`: the activation itself."""
        return a

    def top(self, a: Any, k: int) -> Any:
        for seg in self.segments[k + 1 :]:
            a = seg.run(a)
        return a


class _Stop(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class _Feed(nn.Module):
    """Stands in for the embeddings module: returns the activation it is given (as `inputs_embeds` or as the
    first tensor argument), and answers attribute reads with the real module's (ViT reads its dtype first)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.__dict__["_inner"] = inner  # not registered: no second copy of its parameters

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_inner"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        for key in ("inputs_embeds", "input_embeds", "pixel_values"):
            if isinstance(kwargs.get(key), torch.Tensor):
                return kwargs[key]
        return next(a for a in args if isinstance(a, torch.Tensor))


class HFSplit:
    """A Hugging Face encoder as embeddings, layer.0 ... layer.N-1; what follows (pooler, head) always runs."""

    def __init__(self, model: nn.Module, base: nn.Module | None = None, emb_name: str = "embeddings") -> None:
        from tuitune.engine.model.hf import HFClassifier, _largest_module_list, hf_base

        self.model = model
        base = hf_base(model) if base is None else base
        layers = _largest_module_list(base)
        children = dict(base.named_children())
        emb = children.get(emb_name)
        if layers is None or emb is None:
            raise NotSequential(f"{type(base).__name__}: no `{emb_name}` module and list of layers found")
        if isinstance(model, HFClassifier) and model.task == "text" and "inputs_embeds" not in model._inputs:
            raise NotSequential(f"{type(base).__name__} takes no inputs_embeds")
        self.layers = layers
        self.layers_parent, self.layers_attr = self._owner(base, layers)
        self.emb_parent, self.emb_attr, self.embeddings = base, emb_name, emb
        full = {id(p): n for n, p in model.named_parameters()}
        owned = lambda m: frozenset(full[id(p)] for p in m.parameters())  # noqa: E731
        self.segments = [Segment("embeddings", emb, (emb,), owned(emb))]
        self.segments += [Segment(f"layer.{i}", layer, (layer,), owned(layer)) for i, layer in enumerate(layers)]

    @staticmethod
    def _owner(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
        for module in root.modules():
            for name, child in module.named_children():
                if child is target:
                    return module, name
        raise NotSequential("the layer list has no parent module")

    def prefixes(self, x: Any, ks: list[int]) -> dict[int, Any]:
        """Run the model until the deepest segment in `ks` has produced its output, keeping each one's; stop."""
        out: dict[int, Any] = {}
        last = max(ks)

        def keep(k: int) -> Callable[..., None]:
            def hook(_m: nn.Module, _args: Any, value: Any) -> None:
                out[k] = value[0] if isinstance(value, tuple) else value
                if k == last:
                    raise _Stop(None)

            return hook

        handles = [self.segments[k].modules[0].register_forward_hook(keep(k)) for k in ks]
        try:
            self.model(x)
        except _Stop:
            return out
        finally:
            for handle in handles:
                handle.remove()
        raise NotSequential(f"{self.segments[last].name} was not called by the model's forward")

    def top_input(self, a: Any, x: Any) -> Any:
        """What `top` takes: text, the activation as `inputs_embeds` with the attention mask; else the activation."""
        if isinstance(x, dict) and isinstance(a, torch.Tensor) and a.ndim == 3 and "attention_mask" in x:
            return {"inputs_embeds": a, "attention_mask": x["attention_mask"]}
        return a

    @contextlib.contextmanager
    def _swapped(self, k: int) -> Iterator[None]:
        setattr(self.emb_parent, self.emb_attr, _Feed(self.embeddings))
        setattr(self.layers_parent, self.layers_attr, nn.ModuleList(list(self.layers)[k:]))
        try:
            yield
        finally:
            setattr(self.emb_parent, self.emb_attr, self.embeddings)
            setattr(self.layers_parent, self.layers_attr, self.layers)

    def top(self, a: Any, k: int) -> Any:
        """The model's own forward from the activation after segment k (k = 0: embeddings; k = i: layer.i-1)."""
        with self._swapped(k):
            return self.model(a)


class DecoderSplit(HFSplit):
    """A causal LM as embeddings (`embed_tokens`), layer.0 ... layer.N-1; the final norm and the LM head always run.
    A head tied to the embeddings is the embeddings' parameter: while it trains, nothing below the blocks is frozen
    and the planner finds no boundary."""

    def __init__(self, model: nn.Module) -> None:
        inner = getattr(model, "hf", None)
        if inner is None or "inputs_embeds" not in getattr(model, "_inputs", ()):
            raise NotSequential(f"{type(inner or model).__name__} takes no inputs_embeds")
        super().__init__(model, inner.base_model, "embed_tokens")

    def top_input(self, a: Any, x: Any) -> Any:
        """The activation as `inputs_embeds`, with every other input of the batch (attention mask, position ids,
        `logits_to_keep`) but the token ids, so the model's forward above the boundary is the uncut one's."""
        return {"inputs_embeds": a, **{k: v for k, v in x.items() if k != "input_ids"}}


def verify(split: TimmSplit | HFSplit, x: Any, k: int) -> str:
    """ "" when top(prefixes(x, [k])[k]) equals the model's output on x in eval mode (tolerance 1e-4), else why not."""
    model = split.model
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            want = model(x).float()
            got = split.top(split.top_input(split.prefixes(x, [k])[k], x), k).float()
    except NotSequential as e:
        return str(e)
    except Exception as e:
        return f"running the layers above {split.segments[k].name} alone failed ({type(e).__name__}: {e})"
    finally:
        for m, mode in was.items():
            m.train(mode)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        return f"the model's forward is not the chain of its blocks (checked after {split.segments[k].name})"
    return ""
