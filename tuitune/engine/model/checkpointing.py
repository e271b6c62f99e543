"""Gradient (activation) checkpointing: each checkpointed block keeps only its input in the forward and recomputes
its activations in the backward (`train.gradient_checkpointing`).

timm models that support it have `set_grad_checkpointing()` (the others assert or lack it); transformers models
say so in `supports_gradient_checkpointing`. Both use torch's non-reentrant checkpoint here: with it the gradient
reaches a checkpointed block's parameters whether or not its input needs a gradient, so frozen layers below need
no trick. transformers adds one anyway (a hook that makes the embeddings' output need a gradient, for the reentrant
kind); it is taken off again, or every frozen layer would keep its activations for a backward nobody needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from tuitune.engine.model.hf import hf_inner


def enable_checkpointing(model: nn.Module) -> str:
    """Turn gradient checkpointing on; "" when it is on, else one line saying why the run trains without."""
    inner = hf_inner(model)
    name = type(inner if inner is not None else model).__name__
    why = f"train.gradient_checkpointing: {name} does not support it; training without"
    if inner is not None:
        if not getattr(inner, "supports_gradient_checkpointing", False):
            return why
        kwargs = {"use_reentrant": False}
        enable = getattr(inner, "activation_checkpointing_enable", None)  # transformers >= 5.x: the new name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if enable is not None:
                enable(activation_checkpointing_kwargs=kwargs)
            else:
                inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(inner, "disable_input_require_grads"):
            inner.disable_input_require_grads()
        return ""
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        return why
    try:
        setter(True)
    except (AssertionError, NotImplementedError):  # timm's "gradient checkpointing not supported"
        return why
    return ""


@contextmanager
def checkpointing_paused(model: nn.Module) -> Iterator[None]:
    """Checkpointing off inside the block, on again after (the memory plan measures what a checkpointed block
    keeps when it is recomputed: what it keeps without checkpointing)."""
    inner = hf_inner(model)
    target = inner if inner is not None else model
    on = bool(getattr(target, "is_gradient_checkpointing", False) or getattr(target, "grad_checkpointing", False))
    if on:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if inner is not None:
                off = getattr(inner, "activation_checkpointing_disable", None) or inner.gradient_checkpointing_disable
                off()
            else:
                model.set_grad_checkpointing(False)
    try:
        yield
    finally:
        if on:
            enable_checkpointing(model)
