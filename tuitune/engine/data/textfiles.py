"""Text data files (CSV, TSV, JSON Lines) read into validated `(row, text, label)` triples.

Row numbers in errors are file line numbers (the CSV header is row 1), so a user can jump straight to the bad row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from tuitune.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
MULTI_SEP = "|"  # multi-label rows in CSV: "cat|dog"

Row = tuple[int, str, str]  # (row number in the file, text, label)


def _read_records(path: Path, key: str) -> tuple[list[dict], list[int], list[str]]:
    """Raw records with their row numbers (file lines, CSV header = row 1) and the column names."""
    if not path.is_file():
        raise DataError(f"{path}: data.{key}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: data.{key}: expected a {', '.join(TEXT_SUFFIXES)} file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if suffix in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                records, rows = [], []
                for rec in reader:
                    records.append(rec)
                    rows.append(reader.line_num)
                return records, rows, list(reader.fieldnames or [])
            return _read_json_lines(path, f.read())
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _read_json_lines(path: Path, content: str) -> tuple[list[dict], list[int], list[str]]:
    """JSON Lines (one object per line); a `.json` file holding one array of objects is accepted too."""
    if content.lstrip().startswith("["):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON: {e}") from None
        pairs = list(enumerate(items, start=1))
    else:
        pairs = []
        for n, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    pairs.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {n}: invalid JSON: {e.msg}") from None
    for n, obj in pairs:
        if not isinstance(obj, dict):
            raise DataError(f"{path}: row {n}: expected a JSON object, got {type(obj).__name__}")
    columns = list(pairs[0][1]) if pairs else []
    return [obj for _, obj in pairs], [n for n, _ in pairs], columns


def read_text_file(path: Path, key: str, text_column: str, label_column: str) -> list[Row]:
    """Validated (row, text, label) triples; labels become strings (ints are allowed in JSON). An empty column name
    is the default one (`text`, `label`)."""
    text_column, label_column = text_column or "text", label_column or "label"
    records, rows, columns = _read_records(path, key)
    if not records:
        raise DataError(f"{path}: data.{key}: no rows")
    for col, col_key in ((text_column, "text_column"), (label_column, "label_column")):
        if col not in columns:
            raise DataError(f"{path}: data.{col_key}: no column {col!r} (columns: {', '.join(columns)})")
    out: list[Row] = []
    for rec, n in zip(records, rows):
        text, label = rec.get(text_column), rec.get(label_column)
        for col, value in ((text_column, text), (label_column, label)):
            if value is None:
                raise DataError(f"{path}: row {n}: missing field {col!r}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {n}: {text_column!r} must be non-empty text, got {text!r}")
        if isinstance(label, list) and label and all(isinstance(x, (str, int)) for x in label):
            label = MULTI_SEP.join(str(x).strip() for x in label)  # multi-label rows in JSON
        if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip():
            raise DataError(f"{path}: row {n}: {label_column!r} must be a string or a number, got {label!r}")
        out.append((n, text, str(label).strip()))
    return out


def target_classes(rows: list[Row], target: str) -> tuple[str, ...]:
    """The output names: the class labels; for regression the one value; for multi-label every label seen."""
    if target == "value":
        return ("value",)
    if target == "multi":
        return sorted_labels({part for _, _, label in rows for part in split_multi(label)})
    return sorted_labels({label for _, _, label in rows})


def split_multi(label: str) -> list[str]:
    return [part.strip() for part in label.split(MULTI_SEP) if part.strip()]


def encode_targets(rows: list[Row], target: str, classes: tuple[str, ...], file: Path | str) -> torch.Tensor:
    """Class indices (int64), regression values (float32) or multi-hot vectors (float32 [N, K])."""
    index = {c: k for k, c in enumerate(classes)}
    if target == "value":
        values = []
        for n, _, label in rows:
            try:
                values.append(float(label))
            except ValueError:
                raise DataError(f'{file}: row {n}: label {label!r} is not a number (loss.kind = "mse")') from None
        return torch.tensor(values, dtype=torch.float32)
    if target == "multi":
        hot = torch.zeros(len(rows), len(classes))
        for i, (n, _, label) in enumerate(rows):
            for part in split_multi(label):
                if part not in index:
                    raise DataError(f"{file}: row {n}: label {part!r} is not in the training file's labels")
                hot[i, index[part]] = 1.0
        return hot
    for n, _, label in rows:
        if label not in index:
            raise DataError(f"{file}: row {n}: label {label!r} is not in the training file's classes")
    return torch.tensor([index[label] for _, _, label in rows], dtype=torch.int64)


def strata(targets: torch.Tensor) -> np.ndarray:
    """What a seeded split stratifies on: the class; the first label of a multi-label row; nothing for values."""
    if targets.dtype == torch.int64:
        return targets.numpy()
    if targets.ndim == 2:
        return targets.argmax(-1).numpy()
    return np.zeros(len(targets), dtype=np.int64)


def sorted_labels(labels: set[str]) -> tuple[str, ...]:
    """Numeric order when every label is an integer ("2" before "10"), else alphabetical."""
    try:
        return tuple(sorted(labels, key=int))
    except ValueError:
        return tuple(sorted(labels))
