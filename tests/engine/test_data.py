"""Data kinds, splits, errors and loaders, on CPU with files written into tmp_path (no network)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuitune.config import DataConfig, ModelConfig
from tuitune.engine.data.datasets import (
    DataBundle,
    DataError,
    TensorImages,
    eval_transform,
    load_digits_array,
    make_loaders,
    resolve_num_workers,
    split_indices,
)
from tuitune.engine.data.kinds import build_datasets
from tuitune.errors import UserError

DC = {
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "movie",
    "film",
    "the",
    "was",
    "very",
    "plot",
    "fun",
    "boring",
    "nice",
    "sad",
    "happy",
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "fish",
    "tree",
    "sun",
    "moon",
]


def indices(ds) -> list[int]:
    return list(ds.indices)


def labels_of(ds) -> list[int]:
    return [int(ds[i][1]) for i in range(len(ds))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizer(vocab=str(vocab))  # vocab_file= is silently ignored in transformers 5.x


def digits(seed: int = 0, **kw) -> DataBundle:
    return build_datasets(DataConfig(**kw), task="image", data_config=DC, seed=seed)


# ------------------------------------------------------------------------------------------------ digits


def test_digits_all_classes_cover_1797_images():
    b = digits()
    assert b.classes == tuple("0123456789")
    assert len(b.train) + len(b.val) == 1797 and b.test is None
    assert b.source == f"digits 0-9: {len(b.train)} train / {len(b.val)} val"
    assert abs(len(b.val) / 1797 - 0.2) < 0.01


def test_digits_subset_reindexes_labels_in_given_order():
    _, raw = load_digits_array()
    b = digits(classes=(5, 6, 7, 8, 9))
    assert b.classes == ("5", "6", "7", "8", "9")
    assert len(b.train) + len(b.val) == int(np.isin(raw, [5, 6, 7, 8, 9]).sum())
    assert set(labels_of(b.val)) == {0, 1, 2, 3, 4}
    assert b.source.startswith("digits 5-9: ")
    b = digits(classes=(9, 3))
    assert b.classes == ("9", "3") and b.source.startswith("digits 9,3: ")
    keep = np.flatnonzero(np.isin(raw, [9, 3]))
    full = b.train.dataset
    assert all(raw[keep[i]] == (9, 3)[int(full.labels[i])] for i in range(len(keep)))


def test_digits_match_sklearn_copy():
    images, labels = load_digits_array()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and int(images.max()) == 16
    assert labels.shape == (1797,) and labels.dtype == np.int64
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ref = sklearn_datasets.load_digits()
    assert np.array_equal(images[0], ref.images[0]) and np.array_equal(labels, ref.target)


def test_digits_items_equal_the_timm_transform_of_the_rgb_image():
    images, _ = load_digits_array()
    b = digits()
    x, y = b.train.dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and y.ndim == 0
    pil = Image.fromarray(np.rint(images[0].astype(np.float64) * 255 / 16).astype(np.uint8)).convert("RGB")
    assert torch.allclose(x, eval_transform(DC, crop_pct=1.0)(pil), atol=1e-6)
    assert float(x.min()) == -1.0 and 0.5 < float(x.max()) <= 1.0


def test_digits_pixels_are_stored_once_as_uint8_grey():
    full = digits().train.dataset
    assert isinstance(full, TensorImages) and full.images.dtype == torch.uint8
    assert tuple(full.images.shape) == (1797, 1, 32, 32)


def test_digits_split_is_deterministic_disjoint_and_stratified():
    a, b, c = digits(seed=1, test_fraction=0.1), digits(seed=1, test_fraction=0.1), digits(seed=2, test_fraction=0.1)
    assert indices(a.train) == indices(b.train) and indices(a.val) == indices(b.val)
    assert indices(a.train) != indices(c.train)
    tr, va, te = set(indices(a.train)), set(indices(a.val)), set(indices(a.test))
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == 1797
    assert set(labels_of(a.test)) == set(range(10)) and a.source.endswith(" test")


@pytest.mark.parametrize("classes", [(5,), (5, 5), (3, 12)])
def test_digits_bad_classes(classes):
    with pytest.raises(DataError, match="data.classes"):
        digits(classes=classes)


def test_split_indices_keep_a_val_example_per_class():
    train, val, test = split_indices(np.array([0, 0, 1, 1, 1]), 0.2, 0.0, seed=0)
    assert len(val) == 2 and len(train) == 3 and len(test) == 0


# ------------------------------------------------------------------------------------------------ image folder


def png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def folder(root: Path, classes=("cat", "dog"), n: int = 5) -> Path:
    for k, name in enumerate(classes):
        for i in range(n):
            png(root / name / f"{i}.png", 40 + 80 * k)
    return root


def image_folder(path: Path, **kw) -> DataBundle:
    return build_datasets(DataConfig(kind="image_folder", path=str(path), **kw), task="image", data_config=DC)


def test_image_folder_with_train_val_test_folders(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        folder(tmp_path / split, n=n)
    b = image_folder(tmp_path)
    assert b.classes == ("cat", "dog") and (len(b.train), len(b.val), len(b.test)) == (8, 4, 2)
    x, y = b.val[3]
    assert x.shape == (3, 32, 32) and int(y) == 1 and x.mean() > b.val[0][0].mean()  # dog is the brighter class
    assert b.source == f"image_folder {tmp_path.name}: 2 classes, 8 train / 4 val / 2 test"


def test_image_folder_of_classes_is_split_by_seed(tmp_path):
    folder(tmp_path, classes=("a", "b", "c"), n=5)
    b = image_folder(tmp_path, val_fraction=0.4)
    assert b.classes == ("a", "b", "c") and (len(b.train), len(b.val), b.test) == (9, 6, None)
    assert indices(b.val) == indices(image_folder(tmp_path, val_fraction=0.4).val)
    assert sorted(labels_of(b.val)) == [0, 0, 1, 1, 2, 2]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope: data.path: no such folder$"):
        image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="flat: data.path: no class folders"):
        image_folder(tmp_path / "flat")
    folder(tmp_path / "empty")
    (tmp_path / "empty" / "fish").mkdir()
    (tmp_path / "empty" / "fish" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty/fish: data.path: class folder has no images$"):
        image_folder(tmp_path / "empty")


def test_image_folder_class_sets_must_match(tmp_path):
    folder(tmp_path / "train", classes=("a", "b"))
    folder(tmp_path / "val", classes=("a", "c"))
    with pytest.raises(DataError, match=r"val: data.path: class folders differ .*missing: b; extra: c"):
        image_folder(tmp_path)
    (tmp_path / "val").rename(tmp_path / "other")
    with pytest.raises(DataError, match="needs a val/ folder"):
        image_folder(tmp_path)


def test_corrupt_image_fails_at_load_time_naming_the_file(tmp_path):
    folder(tmp_path / "train", n=2)
    folder(tmp_path / "val", n=1)
    (tmp_path / "val" / "dog" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    b = image_folder(tmp_path)
    b.val[0]
    with pytest.raises(DataError, match=r"dog/0.png: cannot read image: ") as err:
        b.val[1]
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ text


def write_csv(path: Path, rows: list[str], header: str = "text,label") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_jsonl(path: Path, objs: list) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def text(tokenizer, path: Path, **kw) -> DataBundle:
    return build_datasets(
        DataConfig(kind="text", path=str(path), **kw), task="text", data_config={}, tokenizer=tokenizer, max_length=8
    )


CSV_ROWS = [
    f"the movie was {w},{lab}"
    for w, lab in [
        ("good", "pos"),
        ("great", "pos"),
        ("fun", "pos"),
        ("bad", "neg"),
        ("awful", "neg"),
        ("boring", "neg"),
    ]
] * 2


def test_text_csv_split_by_fraction(tokenizer, tmp_path):
    b = text(tokenizer, write_csv(tmp_path / "reviews.csv", CSV_ROWS), val_fraction=0.25)
    assert b.classes == ("neg", "pos") and (len(b.train), len(b.val)) == (8, 4)
    x, y = b.train[0]
    assert set(x) == {"input_ids", "attention_mask"} and y.dtype == torch.int64
    assert x["input_ids"].shape == (8,) and x["input_ids"].dtype == torch.int64
    assert tokenizer.unk_token_id not in x["input_ids"].tolist()
    assert b.source == "text reviews.csv: 2 classes, 8 train / 4 val"


def test_text_jsonl_with_separate_val_and_int_labels(tokenizer, tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": f"{w} film", "label": lab} for w, lab in [("good", 10), ("bad", 2), ("nice", 10), ("sad", 2)]],
    )
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "happy film", "label": 10}, "", {"text": "sad", "label": 2}])
    test = write_csv(tmp_path / "test.tsv", ["fun plot\t10"], header="text\tlabel")
    b = text(tokenizer, train, val_path=str(val), test_path=str(test))
    assert b.classes == ("2", "10") and (len(b.train), len(b.val), len(b.test)) == (4, 2, 1)
    assert labels_of(b.val) == [1, 0] and labels_of(b.test) == [1]
    loader = make_loaders(b, batch_size=2, num_workers=0, device_type="cpu", seed=0)[0]
    x, y = next(iter(loader))
    # "[CLS] good film [SEP]": the batch is cut to its longest text (4 tokens), not padded to max_length (8)
    assert x["input_ids"].shape == (2, 4) and x["attention_mask"].shape == (2, 4) and y.shape == (2,)


def test_text_split_missing_from_files_is_cut_from_train(tokenizer, tmp_path):
    train = write_csv(tmp_path / "train.csv", CSV_ROWS)
    other = write_csv(tmp_path / "other.csv", ["good,pos", "bad,neg"])
    b = text(tokenizer, train, val_path=str(other), test_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (8, 2, 4)
    b = text(tokenizer, train, test_path=str(other), val_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 2)
    b = text(tokenizer, train, val_path=str(other), test_path=str(other))
    assert (len(b.train), len(b.val), len(b.test)) == (12, 2, 2)


def test_text_json_array_and_custom_columns(tokenizer, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"t": "good", "y": "a"}, {"t": "bad", "y": "b"}] * 3))
    b = text(tokenizer, path, text_column="t", label_column="y", val_fraction=0.3)
    assert b.classes == ("a", "b") and len(b.train) + len(b.val) == 6


@pytest.mark.parametrize(
    "name, content, kw, message",
    [
        ("a.csv", "text,y\ngood,pos\n", {}, r"a.csv: data.label_column: no column 'label' \(columns: text, y\)$"),
        ("a.csv", "body,label\ngood,pos\n", {}, r"a.csv: data.text_column: no column 'text' \(columns: body, label\)"),
        ("a.csv", "text,label\ngood,pos\nbad\n", {}, r"a.csv: row 3: missing field 'label'$"),
        ("a.csv", "text,label\ngood,pos\n  ,neg\n", {}, r"a.csv: row 3: 'text' must be non-empty text"),
        (
            "a.jsonl",
            '{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n',
            {},
            r"a.jsonl: row 2: invalid JSON",
        ),
        ("a.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad"}\n', {}, r"a.jsonl: row 2: missing field"),
        (
            "a.jsonl",
            '{"text": "good", "label": {"x": 1}}\n',
            {},
            r"a.jsonl: row 1: 'label' must be a string or a number",
        ),
        ("a.jsonl", '["good", "pos"]\n', {}, r"a.jsonl: row 1: expected a JSON object"),
        ("a.csv", "text,label\n", {}, r"a.csv: data.path: no rows"),
        ("a.txt", "good pos\n", {}, r"a.txt: data.path: expected a .csv, .tsv, .jsonl, .json file"),
    ],
)
def test_text_errors(tokenizer, tmp_path, name, content, kw, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        text(tokenizer, path, **kw)
    assert "\n" not in str(err.value)


def test_text_val_label_unknown_and_missing_file(tokenizer, tmp_path):
    train = write_csv(tmp_path / "train.csv", CSV_ROWS)
    val = write_csv(tmp_path / "val.csv", ["good,pos", "meh,neutral"])
    with pytest.raises(DataError, match=r"val.csv: row 3: label 'neutral' is not in the training file's classes"):
        text(tokenizer, train, val_path=str(val))
    with pytest.raises(DataError, match=r"missing.csv: data.test_path: no such file"):
        text(tokenizer, train, val_path=str(train), test_path=str(tmp_path / "missing.csv"))


def test_task_and_kind_must_fit(tokenizer, tmp_path):
    with pytest.raises(UserError, match="does not fit a text model"):
        build_datasets(DataConfig(), task="text", data_config=DC, tokenizer=tokenizer)
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        build_datasets(DataConfig(kind="text", path=str(tmp_path / "a.csv")), task="text", data_config={})


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_images_are_deterministic_and_learnable():
    cfg = DataConfig(kind="synthetic", num_samples=200, num_classes=4, val_fraction=0.25)
    a = build_datasets(cfg, task="image", data_config=DC, seed=3)
    b = build_datasets(cfg, task="image", data_config=DC, seed=3)
    assert torch.equal(a.train.dataset.images, b.train.dataset.images) and indices(a.val) == indices(b.val)
    assert (len(a.train), len(a.val)) == (152, 48) and a.classes == ("c0", "c1", "c2", "c3")
    x_train = torch.stack([a.train[i][0] for i in range(len(a.train))]).flatten(1)
    y_train = torch.tensor(labels_of(a.train))
    centroids = torch.stack([x_train[y_train == k].mean(0) for k in range(4)])
    x_val = torch.stack([a.val[i][0] for i in range(len(a.val))]).flatten(1)
    predicted = torch.cdist(x_val, centroids).argmin(1)
    assert (predicted == torch.tensor(labels_of(a.val))).float().mean() > 0.95
    assert a.train[0][0].shape == (3, 32, 32)


def test_synthetic_text_uses_known_words(tokenizer):
    cfg = DataConfig(kind="synthetic", num_samples=40, num_classes=3, test_fraction=0.1)
    a = build_datasets(cfg, task="text", data_config={}, tokenizer=tokenizer, max_length=12, seed=0)
    b = build_datasets(cfg, task="text", data_config={}, tokenizer=tokenizer, max_length=12, seed=0)
    assert torch.equal(a.train.dataset.input_ids, b.train.dataset.input_ids)
    assert a.classes == ("c0", "c1", "c2") and len(a.train) + len(a.val) + len(a.test) == 40
    assert tokenizer.unk_token_id not in a.train.dataset.input_ids.flatten().tolist()
    assert a.train[0][0]["input_ids"].shape == (12,)


# ------------------------------------------------------------------------------------------------ loaders


def test_loaders_batch_shapes_and_seeded_shuffle():
    bundle = digits(classes=(0, 1, 2), test_fraction=0.1)
    train, val, test = make_loaders(bundle, batch_size=16, num_workers=-1, device_type="cpu", seed=7)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and y.dtype == torch.int64
    assert next(iter(val))[0].shape[0] == 32 and test is not None
    assert train.num_workers == 0 and not train.pin_memory
    assert sum(len(b[1]) for b in train) == len(bundle.train)  # drop_last=False

    def first_labels(seed: int) -> list[int]:
        loader = make_loaders(bundle, batch_size=64, num_workers=0, device_type="cpu", seed=seed)[0]
        return next(y.tolist() for _, y in loader)

    assert first_labels(7) == first_labels(7) != first_labels(8)
    assert [y.tolist() for _, y in val] == [y.tolist() for _, y in val]  # val not shuffled


def test_loaders_cuda_settings_and_no_test():
    bundle = dataclasses.replace(digits(classes=(0, 1)), test=None)
    train, _, test = make_loaders(bundle, batch_size=8, num_workers=2, device_type="cuda", seed=0)
    assert test is None and train.pin_memory and train.persistent_workers and train.num_workers == 2
    assert resolve_num_workers(-1, "cpu") == 0 and resolve_num_workers(3, "cpu") == 3
    assert 0 <= resolve_num_workers(-1, "cuda") <= 8


def test_data_kinds_table_is_the_config_choices_and_names_what_it_builds(tmp_path):
    """One table entry per kind: the config offers exactly these kinds; each kind's `classes` (asked before the
    model exists) are the classes its builder yields; an image kind refuses a text model in one line."""
    from tuitune.engine.data.kinds import KINDS, class_names, input_task

    choices = next(f for f in dataclasses.fields(DataConfig) if f.name == "kind").metadata["choices"]
    assert set(KINDS) == set(choices)
    root = tmp_path / "imgs"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    for cfg in (
        DataConfig(kind="digits", classes=(3, 1)),
        DataConfig(kind="synthetic", num_classes=3),
        DataConfig(kind="image_folder", path=str(root)),
    ):
        assert build_datasets(cfg, task="image", data_config=DC).classes == class_names(cfg)
        assert input_task(cfg, ModelConfig()) == "image"
    assert input_task(DataConfig(kind="text", path="x.csv"), ModelConfig()) == "text"
    with pytest.raises(UserError, match="data.kind: 'digits' data does not fit a text model"):
        build_datasets(DataConfig(kind="digits"), task="text", data_config=DC, tokenizer=object())
    with pytest.raises(UserError, match="data.kind: unknown kind 'video'"):
        class_names(DataConfig(kind="video"))
