"""Chat data (`data.kind = "chat"`), for supervised fine-tuning of a causal language model.

Each row is a prompt and its response (`data.prompt_column`, `data.response_column`) or a conversation of chat
messages whose last one, the assistant's, is the response (`data.messages_column`). Rows are formatted with the
tokenizer's own chat template: the prompt as the template renders it up to the assistant's turn
(`add_generation_prompt`), the response as the rest of the rendered conversation (its end-of-turn token included),
tokenized apart and joined, so the boundary between them is exact. The loss covers the response tokens only.

Labels are stored shifted: `y[t]` is the token position `t` must predict (`-100` where nothing is scored: the
prompt, padding), so the objective compares `logits[:, t]` with `y[:, t]` and never shifts a tensor. Examples are
stored padded to `model.max_length`, so a plain DataLoader with torch's default collate batches them; the run's
loaders trim every batch to its longest example (`ChatCollate`). With `data.packing`, training examples are packed
into rows of `model.max_length` (first-fit decreasing) whose `position_ids` start again at 0 for each example: with
no attention mask, transformers builds a block-diagonal causal mask from them, so an example attends only to itself.
Validation and test stay one example per row: they are generated from too (`[generate]`).

Bad input is one line: a missing column, a row that is not a conversation, a tokenizer without a chat template, a
prompt and response longer than `model.max_length` (its response would be cut off).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from tuitune.config import DataConfig
from tuitune.engine.data.batches import unwrap
from tuitune.engine.data.datasets import DataBundle, split_indices
from tuitune.engine.data.textfiles import _read_records
from tuitune.engine.events import Event
from tuitune.engine.record.progress import Progress
from tuitune.errors import DataError

Emit = Callable[[Event], None]
IGNORE = -100  # not scored (torch's cross-entropy ignore_index)

__all__ = ["ChatCollate", "ChatExamples", "PackedChat", "build_chat", "by_reference", "chat_classes", "val_prompts"]


@dataclasses.dataclass(frozen=True)
class Row:
    number: int  # the row's line in its file (CSV header = 1)
    prompt: list[dict[str, str]]  # the chat messages before the response
    response: str


# ------------------------------------------------------------------------------------------------- reading


def read_rows(cfg: DataConfig, path: Path, key: str) -> list[Row]:
    """A split's rows. Files (CSV, TSV, JSON Lines) are read here; a hub dataset will come through the `hf` data
    kind's loader (being built on its own branch): its records, with their row numbers and column names, go into
    `_rows` unchanged."""
    records, numbers, columns = _read_records(path, key)
    return _rows(cfg, records, numbers, columns, str(path), key)


def _rows(
    cfg: DataConfig, records: list[dict], numbers: list[int], columns: list[str], where: str, key: str
) -> list[Row]:
    if not records:
        raise DataError(f"{where}: data.{key}: no rows")
    needed = (
        [(cfg.messages_column, "messages_column")]
        if cfg.messages_column
        else [(cfg.prompt_column, "prompt_column"), (cfg.response_column, "response_column")]
    )
    for column, name in needed:
        if column not in columns:
            raise DataError(f"{where}: data.{name}: no column {column!r} (columns: {', '.join(columns)})")
    read = _conversation if cfg.messages_column else _prompt_response
    return [read(cfg, rec, n, where) for rec, n in zip(records, numbers)]


def _text(rec: dict, column: str, n: int, where: str) -> str:
    value = rec.get(column)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: row {n}: {column!r} must be non-empty text, got {value!r}")
    return value


def _prompt_response(cfg: DataConfig, rec: dict, n: int, where: str) -> Row:
    prompt = _text(rec, cfg.prompt_column, n, where)
    return Row(n, [{"role": "user", "content": prompt}], _text(rec, cfg.response_column, n, where))


def _conversation(cfg: DataConfig, rec: dict, n: int, where: str) -> Row:
    column, value = cfg.messages_column, rec.get(cfg.messages_column)
    if isinstance(value, str):  # CSV: the messages as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    ok = (
        isinstance(value, list)
        and len(value) >= 2
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
        and value[-1]["role"] == "assistant"
        and value[-1]["content"].strip()
    )
    if not ok or not isinstance(value, list):
        raise DataError(
            f"{where}: row {n}: {column!r} must be a list of {{role, content}} messages ending with a non-empty "
            f"assistant message (the response)"
        )
    return Row(n, [{"role": m["role"], "content": m["content"]} for m in value[:-1]], value[-1]["content"])


# ---------------------------------------------------------------------------------------------- tokenizing


def _template(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def encode_rows(
    tokenizer: Any, rows: list[Row], max_length: int, where: str, emit: Emit | None = None
) -> tuple[list[list[int]], list[int]]:
    """(token ids of each example, the index of its first response token)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            'data.kind: the model\'s tokenizer has no chat template (data.kind = "chat" formats each row with it); '
            "use a chat or instruct checkpoint"
        )
    progress = Progress(emit, "tokenize", Path(where).name, len(rows), "texts")
    ids, starts = [], []
    for row in rows:
        prompt = _template(tokenizer, row.prompt, True)
        full = _template(tokenizer, [*row.prompt, {"role": "assistant", "content": row.response}], False)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: row {row.number}: the chat template renders the prompt differently once the response "
                f"follows it, so the response cannot be told apart from the prompt"
            )
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        if not head or not tail:
            raise DataError(f"{where}: row {row.number}: the chat template renders an empty prompt or response")
        if len(head) + len(tail) > max_length:
            raise DataError(
                f"{where}: row {row.number}: the prompt and response take {len(head) + len(tail)} tokens, over "
                f"model.max_length = {max_length} (the response would be cut off): raise model.max_length or "
                f"shorten the row"
            )
        ids.append(head + tail)
        starts.append(len(head))
        progress.advance(1)
    progress.finish()
    return ids, starts


def pad_id(tokenizer: Any) -> int:
    """The padding token: the tokenizer's own, else its end-of-sequence token (many causal LMs have no pad)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("data.kind: the model's tokenizer has neither a padding nor an end-of-sequence token")
    return int(pad)


def shifted_labels(ids: list[int], start: int, width: int) -> torch.Tensor:
    """Position t predicts token t + 1: scored for the response tokens (positions start - 1 .. len - 2)."""
    y = torch.full((width,), IGNORE, dtype=torch.long)
    y[start - 1 : len(ids) - 1] = torch.as_tensor(ids[start:], dtype=torch.long)
    return y


# ------------------------------------------------------------------------------------------------ datasets


class ChatCollate:
    """Stack, then cut the batch to its longest example (every [B, T] tensor of x, and the labels), and keep only
    the positions some example is scored at: `logits_to_keep` (transformers' own argument) makes the LM head project
    just those, and the labels are cut to them. A response is a few tokens after a long prompt: the head, a
    hidden-size x vocabulary matmul at every position, would otherwise cost a quarter of a small model's step. Done
    here, on the host, so no step waits for the device to say which positions they are."""

    def __call__(self, batch: list[Any]) -> Any:
        x, y = default_collate(batch)
        longest = max(int(x["lengths"].max()), 1)
        out = {k: v[:, :longest] for k, v in x.items() if k != "lengths"}
        keep = (y[:, :longest] != IGNORE).any(0).nonzero().flatten()
        return {**out, "logits_to_keep": keep}, y[:, keep]


class ChatExamples(Dataset):
    """One example per row: `({"input_ids", "attention_mask"}, labels)`, padded to the cap (trimmed by `collate`).
    Keeps each example's prompt length and reference, which generation reads (`val_prompts`)."""

    def __init__(self, ids: list[list[int]], starts: list[int], rows: list[Row], width: int, pad: int) -> None:
        self.input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        for i, seq in enumerate(ids):
            self.input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        self.lengths = torch.as_tensor([len(s) for s in ids], dtype=torch.long)
        self.starts = torch.as_tensor(starts, dtype=torch.long)
        self.rows = rows
        self.width = width
        self.collate = ChatCollate()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n, start = int(self.lengths[i]), int(self.starts[i])
        mask = (torch.arange(self.width) < n).long()
        labels = shifted_labels(self.input_ids[i, :n].tolist(), start, self.width)
        return {"input_ids": self.input_ids[i], "attention_mask": mask, "lengths": self.lengths[i]}, labels

    def prompt_ids(self, i: int) -> list[int]:
        return self.input_ids[i, : int(self.starts[i])].tolist()


class PackedChat(Dataset):
    """Training examples packed into rows of `width` tokens: `({"input_ids", "position_ids"}, labels)`."""

    def __init__(self, ids: list[list[int]], starts: list[int], width: int, pad: int) -> None:
        bins = pack([len(s) for s in ids], width)
        self.input_ids = torch.full((len(bins), width), pad, dtype=torch.long)
        self.position_ids = torch.zeros((len(bins), width), dtype=torch.long)
        self.labels = torch.full((len(bins), width), IGNORE, dtype=torch.long)
        fill = []
        for r, members in enumerate(bins):
            at = 0
            for i in members:
                n = len(ids[i])
                self.input_ids[r, at : at + n] = torch.as_tensor(ids[i], dtype=torch.long)
                self.position_ids[r, at : at + n] = torch.arange(n)
                self.labels[r, at : at + n] = shifted_labels(ids[i], starts[i], n)
                at += n
            self.position_ids[r, at:] = torch.arange(width - at)  # the tail: a padding "example" of its own
            fill.append(at)
        self.lengths = torch.as_tensor(fill, dtype=torch.long)
        self.examples = len(ids)
        self.collate = ChatCollate()

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = {"input_ids": self.input_ids[i], "position_ids": self.position_ids[i], "lengths": self.lengths[i]}
        return x, self.labels[i]


def pack(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the examples (by index) of each row, longest first; every length <= width."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return rows


def val_prompts(dataset: Dataset, n: int) -> list[tuple[list[int], Row]]:
    """The first `n` examples of a split as (prompt token ids, row): what generation starts from, in the order
    `by_reference` gives them (the exact match scores all `n`; the samples panel shows the first few)."""
    base, indices = unwrap(dataset)
    if not isinstance(base, ChatExamples):
        return []
    order = indices if indices is not None else list(range(len(base)))
    return [(base.prompt_ids(i), base.rows[i]) for i in by_reference(order[:n], base.rows)]


def by_reference(order: list[int], rows: Sequence[Row]) -> list[int]:
    """`order` dealt round-robin over its distinct responses, in order of first appearance: where most references
    are one answer ("no": ham), the first few samples still show the others ("yes"), so the panel tells whether
    the rarer answer is learned. Free-form references all differ: the order is unchanged."""
    piles: dict[str, list[int]] = {}
    for i in order:
        piles.setdefault(rows[i].response, []).append(i)
    dealt: list[int] = []
    for depth in range(max(map(len, piles.values()), default=0)):
        dealt += [pile[depth] for pile in piles.values() if depth < len(pile)]
    return dealt


# -------------------------------------------------------------------------------------------------- builder


def chat_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    """A language model has no classes: its outputs are the vocabulary."""
    return ()


def build_chat(cfg: DataConfig, tokenizer: Any, max_length: int, seed: int, emit: Emit | None = None) -> DataBundle:
    """Train file, plus `val_path` / `test_path` files where given; a split without its own file is cut from the
    train rows by the seeded fractions."""
    path = Path(cfg.path).expanduser()
    pad = pad_id(tokenizer) if tokenizer is not None else 0
    rows = {"path": read_rows(cfg, path, "path")}
    for key in ("val_path", "test_path"):
        if getattr(cfg, key):
            rows[key] = read_rows(cfg, Path(getattr(cfg, key)).expanduser(), key)
    if "val_path" not in rows or ("test_path" not in rows and cfg.test_fraction > 0):
        train, val, test = split_indices(
            np.zeros(len(rows["path"]), dtype=np.int64),
            cfg.val_fraction if "val_path" not in rows else 0.0,
            cfg.test_fraction if "test_path" not in rows else 0.0,
            seed,
        )
        if "val_path" not in rows and len(val) == 0:
            raise DataError(f"{path}: data.val_fraction: too few rows ({len(rows['path'])}) to split off validation")
        whole = rows["path"]
        rows["path"] = [whole[i] for i in train]
        rows.setdefault("val_path", [whole[i] for i in val])
        if len(test):
            rows.setdefault("test_path", [whole[i] for i in test])
    where = {key: str(Path(getattr(cfg, key) or cfg.path).expanduser()) for key in rows}
    encoded = {key: encode_rows(tokenizer, split, max_length, where[key], emit) for key, split in rows.items()}
    ids, starts = encoded["path"]
    train_set: Dataset = (
        PackedChat(ids, starts, max_length, pad)
        if cfg.packing
        else ChatExamples(ids, starts, rows["path"], max_length, pad)
    )
    val_set = ChatExamples(*encoded["val_path"], rows["val_path"], max_length, pad)
    test_set = ChatExamples(*encoded["test_path"], rows["test_path"], max_length, pad) if "test_path" in rows else None
    packed = f", packed into {len(train_set)} rows of {max_length}" if cfg.packing else ""
    counts = f"{len(rows['path'])} train / {len(val_set)} val" + (f" / {len(test_set)} test" if test_set else "")
    return DataBundle(train_set, val_set, test_set, (), f"chat {path.name}: {counts}{packed}")
