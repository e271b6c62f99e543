"""Synthetic data for tests and benchmarks: easy, seeded, learnable tasks of every target kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tuitune.config import DataConfig
from tuitune.engine.data.datasets import DataBundle, TensorImages, split_counts, split_subsets
from tuitune.engine.data.text import tokenize
from tuitune.errors import UserError


def synthetic_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    """`num_classes` classes c0, c1, ...; one output named "value" for regression."""
    return ("value",) if target == "value" else tuple(f"c{k}" for k in range(cfg.num_classes))


def _synthetic_labels(
    cfg: DataConfig, target: str, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first class, second class or -1, targets). Multi-label examples carry a second class half the time;
    regression targets are the class index as a number."""
    first = torch.arange(cfg.num_samples) % cfg.num_classes
    second = torch.full_like(first, -1)
    if target == "multi":
        second = torch.where(torch.rand(cfg.num_samples, generator=g) < 0.5, (first + 1) % cfg.num_classes, -1)
        hot = torch.nn.functional.one_hot(first, cfg.num_classes).float()
        hot[second >= 0, second[second >= 0]] = 1.0
        return first, second, hot
    if target == "value":
        return first, second, first.float()
    return first, second, first.to(torch.int64)


def build_synthetic_images(cfg: DataConfig, data_config: dict, seed: int, target: str = "class") -> DataBundle:
    """Class k = a smooth random template (4x4 upsampled, so pooled CNN features see it) + pixel noise: easy
    enough that a tiny model learns it in a few epochs, random enough that it is not trivially constant."""
    c, h, w = (int(v) for v in data_config["input_size"])
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(cfg.num_classes, c, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    first, second, targets = _synthetic_labels(cfg, target, g)
    x = templates[first] + 0.5 * torch.randn(cfg.num_samples, c, h, w, generator=g)
    x = x + templates[second.clamp(min=0)] * (second >= 0).float()[:, None, None, None]
    full = TensorImages(x, targets)
    train, val, test = split_subsets(full, first.numpy(), cfg, seed, "synthetic")
    return DataBundle(
        train,
        val,
        test,
        synthetic_classes(cfg, target),
        f"synthetic images {c}x{h}x{w}: {cfg.num_classes} classes, {split_counts(train, val, test)}",
    )


def _vocab_words(tokenizer: Any) -> list[str]:
    """Plain lower-case words the tokenizer knows whole; drawing from them means no word becomes [UNK]."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    return sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and w not in special)


def build_synthetic_text(
    cfg: DataConfig, tokenizer: Any, max_length: int, seed: int, target: str = "class", emit: Any = None
) -> DataBundle:
    """Short texts whose words come mostly from a per-class word list (plus shared filler words)."""
    rng = np.random.default_rng(seed)
    words = _vocab_words(tokenizer)
    per_class = min(8, len(words) // (cfg.num_classes + 1))
    if per_class < 2:
        raise UserError(
            f"synthetic text: the tokenizer knows {len(words)} plain words; "
            f"{cfg.num_classes} classes need at least {2 * (cfg.num_classes + 1)}"
        )
    chosen = list(rng.permutation(words)[: per_class * (cfg.num_classes + 1)])
    vocab = [chosen[k * per_class : (k + 1) * per_class] for k in range(cfg.num_classes + 1)]
    filler = vocab[-1]
    first, second, targets = _synthetic_labels(cfg, target, torch.Generator().manual_seed(seed))
    pools = [vocab[int(a)] + (vocab[int(b)] if b >= 0 else []) for a, b in zip(first, second)]
    texts = [
        " ".join(rng.choice(pool) if rng.random() < 0.7 else rng.choice(filler) for _ in range(int(rng.integers(4, 9))))
        for pool in pools
    ]
    full = tokenize(tokenizer, texts, targets, max_length, emit, "synthetic")
    train, val, test = split_subsets(full, first.numpy(), cfg, seed, "synthetic")
    return DataBundle(
        train,
        val,
        test,
        synthetic_classes(cfg, target),
        f"synthetic text: {cfg.num_classes} classes, {split_counts(train, val, test)}",
    )
