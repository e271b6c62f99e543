"""Text data: tokenized once, batched at its real length.

Every text is tokenized once, when the run starts (with progress events), and stored padded to `model.max_length`
(the cap). A training or validation batch is then cut to its own longest sequence by the loaders' collate
(`TrimPadding`): what transformers' `DataCollatorWithPadding` gives, without padding again per batch. Why store
padded and trim, rather than store ragged and pad: any plain `DataLoader` over these datasets (the feature cache,
the in-run LR finder, export's sample) still batches them with torch's default collate, at the full cap, unchanged.
With `data.group_by_length`, transformers' `LengthGroupedSampler` orders each epoch's shuffle so that a batch holds
texts of similar length (shuffled, then sorted by length within mega-batches of 50 batches): less padding still.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from tuitune.config import DataConfig
from tuitune.engine.data.datasets import DataBundle, carve_missing, split_counts
from tuitune.engine.data.textfiles import Row, encode_targets, read_text_file, strata, target_classes
from tuitune.engine.events import Event
from tuitune.engine.record.progress import Progress
from tuitune.errors import UserError

Emit = Callable[[Event], None]
CHUNK = 1000  # texts per tokenizer call: progress between calls, and the fast tokenizer's batching stays efficient


class TrimPadding:
    """Collate: stack, then cut every [B, T] token tensor to the batch's longest sequence (left-padding
    tokenizers keep the last columns). The one host read is a max over the CPU attention mask, in the loader."""

    def __init__(self, side: str = "right") -> None:
        self.side = side

    def __call__(self, batch: list[Any]) -> Any:
        x, y = default_collate(batch)
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        if mask is None or mask.ndim != 2:
            return x, y
        longest = max(int(mask.sum(dim=1).max()), 1)
        cut = slice(-longest, None) if self.side == "left" else slice(0, longest)
        return {k: v[:, cut] if v.ndim == 2 and v.shape[1] == mask.shape[1] else v for k, v in x.items()}, y


class TokenizedText(Dataset):
    """Texts tokenized once into tensors padded to the cap; `collate` trims each batch (see module doc)."""

    def __init__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, padding_side: str = "right"
    ) -> None:
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels
        self.collate = TrimPadding(padding_side)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}, self.labels[i]

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)


def tokenize(
    tokenizer: Any,
    texts: list[str],
    labels: list[int] | torch.Tensor,
    max_length: int,
    emit: Emit | None = None,
    detail: str = "",
) -> TokenizedText:
    """Tokenize everything once, padded to max_length, in chunks so that progress shows on big files."""
    progress = Progress(emit, "tokenize", detail, len(texts), "texts")
    ids, masks = [], []
    try:
        for i in range(0, len(texts), CHUNK):
            enc = tokenizer(
                texts[i : i + CHUNK], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
            )
            ids.append(enc["input_ids"].long())
            masks.append(enc["attention_mask"].long())
            progress.advance(len(texts[i : i + CHUNK]))
    except ValueError as e:  # e.g. a tokenizer without a padding token
        raise UserError(f"tokenizer: {(str(e).splitlines() or [''])[0]}") from None
    progress.finish()
    targets = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels, dtype=torch.int64)
    side = getattr(tokenizer, "padding_side", "right")
    return TokenizedText(torch.cat(ids), torch.cat(masks), targets, side if side in ("left", "right") else "right")


def build_text(
    cfg: DataConfig, tokenizer: Any, max_length: int, seed: int, target: str = "class", emit: Emit | None = None
) -> DataBundle:
    """Train file, plus `val_path` / `test_path` files where given; a split without its own file is cut from the
    train file by the seeded fractions. Classes (or labels) come from the train file alone."""
    path = Path(cfg.path).expanduser()
    train_rows = read_text_file(path, "path", cfg.text_column, cfg.label_column)
    classes = target_classes(train_rows, target)

    def encode(rows: list[Row], file: Path) -> TokenizedText:
        targets = encode_targets(rows, target, classes, file)
        return tokenize(tokenizer, [t for _, t, _ in rows], targets, max_length, emit, file.name)

    def encode_file(key: str) -> Dataset | None:
        if not getattr(cfg, key):
            return None
        file = Path(getattr(cfg, key)).expanduser()
        return encode(read_text_file(file, key, cfg.text_column, cfg.label_column), file)

    encoded = encode(train_rows, path)
    val, test = encode_file("val_path"), encode_file("test_path")
    train, val, test = carve_missing(encoded, strata(encoded.labels), cfg, val, test, seed, str(path))
    noun = {"value": "target", "multi": "labels"}.get(target, "classes")
    return DataBundle(
        train, val, test, classes, f"text {path.name}: {len(classes)} {noun}, {split_counts(train, val, test)}"
    )
