"""Text data files (CSV, TSV, JSON Lines) read into validated `(row, text, label)` triples.

Row numbers in errors are file line numbers (the CSV header is row 1), so a user can jump straight to the bad row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tuitune.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")

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
    """Validated (row, text, label) triples; labels become strings (ints are allowed in JSON)."""
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
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise DataError(f"{path}: row {n}: {label_column!r} must be a string or an integer, got {label!r}")
        out.append((n, text, str(label).strip()))
    return out


def sorted_labels(labels: set[str]) -> tuple[str, ...]:
    """Numeric order when every label is an integer ("2" before "10"), else alphabetical."""
    try:
        return tuple(sorted(labels, key=int))
    except ValueError:
        return tuple(sorted(labels))
