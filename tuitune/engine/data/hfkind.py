"""`data.kind = "hf"`: a Hugging Face dataset (loaded by `hfload`) made into the same datasets the other kinds make,
so the feature cache, dynamic padding, length grouping, DDP sharding and sweeps take it unchanged: texts are
tokenized once into `TokenizedText` (as a CSV's are), images are read lazily as `ImageFiles` (which the image cache
decodes into memory as it does an image folder's), and a split the dataset does not have is carved from the train
split as a `Subset`, seeded and stratified by class (`data.val_fraction`, `data.test_fraction`).

Splits are named (`split`, `val_split`, `test_split`). Columns are named (`text_column`, `image_column`,
`label_column`) or found by their feature type: the label is the `ClassLabel` column (its names are the classes, in
its order), else a column named `label` or `labels`; the image is the one `Image` column; the text is the one string
column besides the label. Whether the model reads images or text is the data's to say (an image column or not).
A split or column that is not there is one line naming the key and listing what is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tuitune.config import DataConfig
from tuitune.engine.data.datasets import DataBundle, ImageFiles, carve_missing, eval_transform, split_counts
from tuitune.engine.data.hfload import Emit, load_splits, source
from tuitune.engine.data.text import tokenize
from tuitune.engine.data.textfiles import MULTI_SEP, Row, encode_targets, strata, target_classes
from tuitune.errors import DataError

STRINGS = ("string", "large_string")
LABEL_NAMES = ("label", "labels")


@dataclass(frozen=True)
class Columns:
    label: str
    text: str = ""
    image: str = ""


# ------------------------------------------------------------------------------------------------ the kind's table


def prepare(cfg: DataConfig, emit: Emit | None) -> None:
    """Load (download, prepare) the dataset now, while the run's setup shows progress."""
    load_splits(cfg, emit)


def hf_task(cfg: DataConfig) -> str:
    """ "image" when the data has an image column (named, or an `Image` feature), else "text"."""
    if cfg.image_column or cfg.text_column:
        return "image" if cfg.image_column else "text"
    table = _split(cfg, "split", cfg.split)
    return "image" if any(_kind(f) == "Image" for f in table.features.values()) else "text"


def hf_classes(cfg: DataConfig, target: str = "class") -> tuple[str, ...]:
    table = _split(cfg, "split", cfg.split)
    where = source(cfg).where
    return _classes(table, _label_column(table, cfg, where), target, where)


def build_hf(
    cfg: DataConfig,
    task: str,
    data_config: dict,
    tokenizer: Any,
    max_length: int,
    seed: int,
    target: str = "class",
    emit: Emit | None = None,
) -> DataBundle:
    """Train, val and test datasets for the model's task (see the module; the arguments: `kinds.BuildInputs`)."""
    splits = load_splits(cfg, emit)
    where = source(cfg).where
    table = _pick(splits, "split", cfg.split, where)
    cols = _columns(table, cfg, task, where)
    classes = _classes(table, cols.label, target, where)
    if task == "image" and target != "class":
        raise DataError(f"loss.kind: {where}: images here have one class per example (cross_entropy or focal)")
    if task == "text":
        make = _text_maker(cols, classes, where, tokenizer, max_length, target, emit)
    else:
        make = _image_maker(cols, classes, where, eval_transform(data_config))
    train, labels = make(table, cfg.split)
    named = (("val_split", cfg.val_split), ("test_split", cfg.test_split))
    given = [make(_pick(splits, key, name, where), name)[0] if name else None for key, name in named]
    train, val, test = carve_missing(train, labels, cfg, given[0], given[1], seed, where)
    noun = {"value": "target", "multi": "labels"}.get(target, "classes")
    return DataBundle(train, val, test, classes, f"hf {where}: {len(classes)} {noun}, {split_counts(train, val, test)}")


def describe(cfg: DataConfig, emit: Emit | None = None) -> tuple[str, ...]:
    """What the dataset holds, for the composing screen: its splits and their sizes, its columns and their types,
    and what a run reads (the columns found, the classes), or why it could not (one line)."""
    splits = load_splits(cfg, emit)
    where = source(cfg).where
    lines = ["splits: " + " · ".join(f"{name} {len(table):,}" for name, table in splits.items())]
    table = splits[cfg.split] if cfg.split in splits else next(iter(splits.values()), None)
    if table is None:
        return (*lines, f"{where}: no split")
    lines.append(f"columns: {_describe(table)}")
    try:
        task = hf_task(cfg)
        cols = _columns(_pick(splits, "split", cfg.split, where), cfg, task, where)
        classes = _classes(table, cols.label, "class", where)
    except DataError as e:
        return (*lines, str(e))
    shown = ", ".join(classes[:6]) + (", …" if len(classes) > 6 else "")
    lines.append(f"reads {task}: {cols.text or cols.image} → {cols.label} ({len(classes)} classes: {shown})")
    return tuple(lines)


# ------------------------------------------------------------------------------------------------ splits and columns


def _split(cfg: DataConfig, key: str, name: str) -> Any:
    return _pick(load_splits(cfg), key, name, source(cfg).where)


def _pick(splits: dict[str, Any], key: str, name: str, where: str) -> Any:
    if name not in splits:
        raise DataError(f"{where}: data.{key}: no split {name!r} (splits: {', '.join(splits) or 'none'})")
    if len(splits[name]) == 0:
        raise DataError(f"{where}: data.{key}: split {name!r} has no rows")
    return splits[name]


def _kind(feature: Any) -> str:
    """A feature's type in a word: a Value's dtype (`string`, `int64`), `ClassLabel`, `Image`, `list of ...`."""
    if isinstance(feature, (list, tuple)):
        return f"list of {_kind(feature[0])}" if feature else "list"
    name = type(feature).__name__
    if name == "Value":
        return str(feature.dtype)
    if hasattr(feature, "feature") and name in ("List", "LargeList", "Sequence"):
        return f"list of {_kind(feature.feature)}"
    return name


def _names(feature: Any) -> list[str] | None:
    """The class names of a `ClassLabel` column (or of a list of them), else None."""
    inner = feature[0] if isinstance(feature, (list, tuple)) and feature else getattr(feature, "feature", feature)
    for f in (feature, inner):
        if type(f).__name__ == "ClassLabel":
            return list(f.names)
    return None


def _describe(table: Any) -> str:
    return ", ".join(f"{name} ({_kind(f)})" for name, f in table.features.items())


def _named(table: Any, key: str, column: str, want: Callable[[str], bool], what: str, where: str) -> str:
    if column not in table.features:
        raise DataError(f"{where}: data.{key}: no column {column!r} (columns: {_describe(table)})")
    if not want(_kind(table.features[column])):
        raise DataError(f"{where}: data.{key}: {column!r} is not {what} (columns: {_describe(table)})")
    return column


def _label_column(table: Any, cfg: DataConfig, where: str) -> str:
    if cfg.label_column:
        return _named(table, "label_column", cfg.label_column, lambda k: True, "", where)
    by_type = [n for n, f in table.features.items() if _names(f) is not None]
    found = by_type or [n for n in LABEL_NAMES if n in table.features]
    if not found:
        raise DataError(
            f"{where}: data.label_column: no ClassLabel column and none named label; name one "
            f"(columns: {_describe(table)})"
        )
    return found[0]


def _one(table: Any, key: str, found: list[str], what: str, where: str) -> str:
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{where}: data.{key}: no {what} column (columns: {_describe(table)})")
    raise DataError(f"{where}: data.{key}: several {what} columns ({', '.join(found)}): name one")


def _columns(table: Any, cfg: DataConfig, task: str, where: str) -> Columns:
    label = _label_column(table, cfg, where)
    if task == "image":
        if cfg.image_column:
            return Columns(label, image=_named(table, "image_column", cfg.image_column, "Image".__eq__, "Image", where))
        images = [n for n, f in table.features.items() if _kind(f) == "Image"]
        return Columns(label, image=_one(table, "image_column", images, "Image", where))
    if cfg.text_column:
        return Columns(label, text=_named(table, "text_column", cfg.text_column, STRINGS.__contains__, "text", where))
    texts = [n for n, f in table.features.items() if _kind(f) in STRINGS and n != label]
    if len(texts) > 1 and "text" in texts:
        texts = ["text"]
    return Columns(label, text=_one(table, "text_column", texts, "text (string)", where))


# ------------------------------------------------------------------------------------------------ labels and rows


def _labels(table: Any, column: str, where: str) -> list[str]:
    """Every row's label as a string, as text files have them: a `ClassLabel` by its name, a list joined by `|`."""
    names = _names(table.features[column])
    out = []
    for i, value in enumerate(table[column]):
        items = value if isinstance(value, list) else [value]
        if value is None or any(v is None or (names is not None and not 0 <= v < len(names)) for v in items):
            raise DataError(f"{where}: row {i}: {column!r} has no label ({value!r})")
        parts = [names[v] if names is not None else str(v).strip() for v in items]
        out.append(MULTI_SEP.join(parts))
    return out


def _classes(table: Any, column: str, target: str, where: str) -> tuple[str, ...]:
    names = _names(table.features[column])
    if target != "value" and names is not None:
        return tuple(names)
    return target_classes([(i, "", label) for i, label in enumerate(_labels(table, column, where))], target)


def _texts(table: Any, column: str, where: str) -> list[str]:
    texts = list(table[column])
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: row {i}: {column!r} must be non-empty text, got {t!r}")
    return texts


Maker = Callable[[Any, str], tuple[Dataset, np.ndarray]]


def _text_maker(
    cols: Columns,
    classes: tuple[str, ...],
    where: str,
    tokenizer: Any,
    max_length: int,
    target: str,
    emit: Emit | None,
) -> Maker:
    def make(table: Any, split: str) -> tuple[Dataset, np.ndarray]:
        at = f"{where} [{split}]"
        texts = _texts(table, cols.text, at)
        rows: list[Row] = [(i, t, label) for i, (t, label) in enumerate(zip(texts, _labels(table, cols.label, at)))]
        targets = encode_targets(rows, target, classes, at)
        data = tokenize(tokenizer, texts, targets, max_length, emit, f"{where.split('/')[-1]} {split}")
        return data, strata(data.labels)

    return make


def _image_maker(cols: Columns, classes: tuple[str, ...], where: str, transform: Any) -> Maker:
    def make(table: Any, split: str) -> tuple[Dataset, np.ndarray]:
        at = f"{where} [{split}]"
        rows: list[Row] = [(i, "", label) for i, label in enumerate(_labels(table, cols.label, at))]
        labels = encode_targets(rows, "class", classes, at).numpy()
        samples = list(zip(range(len(labels)), labels.tolist()))
        return ImageFiles(samples, transform, read=HfImages(table, cols.image, at)), labels

    return make


class HfImages:
    """Row i's image of one column, as RGB: the `read` of an `ImageFiles` over a Hugging Face dataset (picklable,
    for DataLoader workers: a `datasets.Dataset` pickles as a reference to its cached Arrow files)."""

    def __init__(self, table: Any, column: str, where: str) -> None:
        self.table, self.column, self.where = table.select_columns([column]), column, where

    def __call__(self, i: int) -> Image.Image:
        try:
            image = self.table[int(i)][self.column]
            if not isinstance(image, Image.Image):
                raise ValueError(f"not an image: {type(image).__name__}")
            return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise DataError(f"{self.where}: row {i}: cannot read image: {reason}") from None
