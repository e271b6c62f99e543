"""`data.kind = "hf"`: Hugging Face datasets through the real `datasets` library, from a stand-in hub on 127.0.0.1
(`dataset_hub.DatasetHub`, serving a text and an image parquet repo) and from local folders and files. In process:
`dataset_hub.point_at` aims huggingface_hub and `datasets` at the stand-in and at fresh caches under tmp_path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.conftest import of_type
from tests.engine.dataset_hub import IMAGE_REPO, TEXT_REPO, DatasetHub, image_repo, point_at, text_repo
from tests.engine.hf_fixtures import make_tiny_hf_dir  # (sets HF_HUB_OFFLINE=1 unless set: before the fixtures)
from tests.engine.test_data import DC, WORDS
from tuitune.config import DataConfig, ModelConfig, profile_from_dict
from tuitune.config.declare import ProfileError
from tuitune.engine import hubnet
from tuitune.engine.data import hfload
from tuitune.engine.data.augment import augment_train
from tuitune.engine.data.datasets import ImageFiles, TensorImages
from tuitune.engine.data.image_cache import cache_images
from tuitune.engine.data.kinds import build_datasets, class_names, input_task, prepare_data
from tuitune.engine.events import SetupProgressed
from tuitune.errors import DataError


@pytest.fixture(scope="module")
def repos() -> dict[str, dict[str, bytes]]:
    return {TEXT_REPO: text_repo(), IMAGE_REPO: image_repo()}


@pytest.fixture
def hub(repos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stand-in hub serving both repos, with the hub switched on and empty caches; nothing loaded before."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hfload.forget()
    with DatasetHub(repos) as stand_in:
        point_at(stand_in, tmp_path / "cache", monkeypatch.setattr)
        yield stand_in
    hfload.forget()


@pytest.fixture(autouse=True)
def _nothing_kept():
    hfload.forget()
    yield
    hfload.forget()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    extra = ["hate", "sad", "happy", "fun", "nice"]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *extra]) + "\n")
    return BertTokenizer(vocab=str(vocab))


def text(tokenizer, seed: int = 0, emit=None, **kw) -> object:
    return build_datasets(
        DataConfig(kind="hf", **kw), task="text", data_config={}, tokenizer=tokenizer, seed=seed, emit=emit
    )


COLUMNS = "sentence (string), label (ClassLabel), idx (int32)"
EITHER = (
    'p.toml: data.name: data.kind = "hf" reads a hub id (data.name, e.g. "stanfordnlp/imdb") or a local folder or '
    "file (data.path)"
)


def labels_of(ds) -> list[int]:
    return [int(ds[i][1]) for i in range(len(ds))]


# ------------------------------------------------------------------------------------------------ the hub


def test_hub_text_dataset_downloads_with_progress_then_loads_offline_from_the_cache(hub, tokenizer) -> None:
    events: list = []
    bundle = text(tokenizer, emit=events.append, name=TEXT_REPO, test_split="test")
    assert bundle.classes == ("neg", "pos")  # the ClassLabel's names, in its order
    assert bundle.source == f"hf {TEXT_REPO}: 2 classes, 32 train / 8 val / 10 test"
    x, y = bundle.train[0]
    assert set(x) == {"input_ids", "attention_mask"} and y.dtype == torch.int64
    progress = of_type(events, SetupProgressed)
    downloads = [e for e in progress if e.task == "download"]
    size = len(text_repo()["data/train-00000-of-00001.parquet"]) * 1e-6
    train_file = [e for e in downloads if e.detail == "train-00000-of-00001.parquet"]
    assert (
        train_file[-1].finished and train_file[-1].done == pytest.approx(size, abs=1e-3) and train_file[-1].unit == "MB"
    )
    assert {e.detail for e in downloads} >= {"train-00000-of-00001.parquet", "test-00000-of-00001.parquet"}
    prepared = [e for e in progress if e.task == "prepare" and e.finished]
    assert {(e.detail, e.done) for e in prepared} == {("train split", 40), ("test split", 10)}
    assert {e.task for e in progress} == {"download", "prepare", "tokenize"}
    # the text column was found by type: `sentence`, the one string column; `idx` (int32) is not read
    texts = [tokenizer.decode(bundle.test[i][0]["input_ids"], skip_special_tokens=True) for i in range(2)]
    assert texts == ["the movie was very sad", "the film was very nice"]
    # --offline: the same data from the cache, and not one request to the hub
    hfload.forget()
    before = len(hub.requests)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HF_HUB_OFFLINE", "1")
        again = text(tokenizer, name=TEXT_REPO, test_split="test")
    assert hub.requests[before:] == []
    assert labels_of(again.test) == labels_of(bundle.test) and len(again.train) == len(bundle.train)


def test_hub_image_dataset_reads_images_lazily_caches_and_augments(hub) -> None:
    cfg = DataConfig(kind="hf", name=IMAGE_REPO, val_fraction=0.25)
    prepare_data(cfg)
    assert input_task(cfg, ModelConfig(source="hf", name="some/text-model")) == "image"  # the data says so
    assert class_names(cfg) == ("light", "dark")  # the ClassLabel's names in its order, not sorted
    bundle = build_datasets(cfg, task="image", data_config=DC, seed=0)
    assert isinstance(bundle.train.dataset, ImageFiles) and len(bundle.train) == 18 and len(bundle.val) == 6
    for i in range(len(bundle.val)):  # dark (1) is dark: the image and its label travel together
        x, y = bundle.val[i]
        assert x.shape == (3, 32, 32) and (x.mean() < 0) == bool(y)
    cached, note = cache_images(bundle, "on")
    assert note == "" and isinstance(cached.val, TensorImages)
    assert torch.allclose(cached.val[3][0], bundle.val[3][0], atol=1e-6)
    aug = augment_train(bundle, DC, dataclasses.replace(profile_from_dict(_profile()).augment, train_transform="timm"))
    assert aug.train.dataset.random and aug.train[0][0].shape == (3, 32, 32)


def test_bad_hub_names_splits_and_configs_are_one_line_each(hub, tokenizer) -> None:
    cases = [
        ({"name": "tuitune-tests/nothing"}, "data.name: no dataset 'tuitune-tests/nothing' on the hub"),
        (
            {"name": TEXT_REPO, "val_split": "validation"},
            f"{TEXT_REPO}: data.val_split: no split 'validation' (splits: train, test)",
        ),
        ({"name": TEXT_REPO, "split": "dev"}, f"{TEXT_REPO}: data.split: no split 'dev' (splits: train, test)"),
        (
            {"name": TEXT_REPO, "text_column": "review"},
            f"{TEXT_REPO}: data.text_column: no column 'review' (columns: {COLUMNS})",
        ),
        (
            {"name": TEXT_REPO, "text_column": "idx"},
            f"{TEXT_REPO}: data.text_column: 'idx' is not text (columns: {COLUMNS})",
        ),
        (
            {"name": TEXT_REPO, "label_column": "stars"},
            f"{TEXT_REPO}: data.label_column: no column 'stars' (columns: sentence",
        ),
        (
            {"name": TEXT_REPO, "config": "nope"},
            f"{TEXT_REPO} (nope): data.config: no configuration 'nope' (configurations: default)",
        ),
    ]
    for kw, line in cases:
        with pytest.raises(DataError) as e:
            text(tokenizer, **kw)
        assert str(e.value).startswith(line), str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(
        DataError,
        match=rf"^{IMAGE_REPO}: data.text_column: no text \(string\) column \(columns: image \(Image\), label",
    ):
        text(tokenizer, name=IMAGE_REPO, label_column="label")


def test_offline_or_unreachable_and_not_cached_is_one_line_without_waiting(hub, monkeypatch, tokenizer) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        text(tokenizer, name=TEXT_REPO)
    assert hub.requests == []
    assert str(e.value) == (
        f"data.name: Hugging Face dataset '{TEXT_REPO}' is not in the local cache and the hub is off (--offline "
        "(HF_HUB_OFFLINE=1)); load it once with the network, or set data.path to a local copy"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.__exit__()  # the network goes away
    monkeypatch.setattr(hubnet, "NET_WAIT_S", 0.0)
    with pytest.raises(
        DataError, match=r"is not in the local cache and the hub is off \(cannot reach http://127.0.0.1:\d+ "
    ):
        text(tokenizer, name=TEXT_REPO)


# ------------------------------------------------------------------------------------------------ local paths


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, Path]:
    """The text repo as a `save_to_disk` DatasetDict folder (with a validation split), a one-split `save_to_disk`
    folder, a parquet file and a csv file (string labels: no ClassLabel)."""
    import datasets

    root = tmp_path_factory.mktemp("local")
    files = text_repo()
    for name in ("train", "test"):
        (root / f"{name}.parquet").write_bytes(files[f"data/{name}-00000-of-00001.parquet"])
    full = datasets.load_dataset("parquet", data_files={s: str(root / f"{s}.parquet") for s in ("train", "test")})
    parts = full["train"].train_test_split(test_size=0.25, seed=0, stratify_by_column="label")
    datasets.DatasetDict(train=parts["train"], validation=parts["test"], test=full["test"]).save_to_disk(root / "dict")
    full["train"].save_to_disk(root / "one")
    csv = root / "reviews.csv"
    csv.write_text(
        "body,label\n"
        + "".join(
            f"the film was {w},{'up' if w in ('good', 'great') else 'down'}\n"
            for w in ["good", "bad", "great", "awful"] * 5
        )
    )
    return {"dict": root / "dict", "one": root / "one", "parquet": root / "train.parquet", "csv": csv}


def test_local_save_to_disk_folders_parquet_and_csv(local, tokenizer) -> None:
    b = text(tokenizer, path=str(local["dict"]), val_split="validation", test_split="test")
    assert b.classes == ("neg", "pos") and (len(b.train), len(b.val), len(b.test)) == (30, 10, 10)
    assert b.source == f"hf {local['dict']}: 2 classes, 30 train / 10 val / 10 test"
    one = text(tokenizer, path=str(local["one"]))  # one Dataset saved: its split is train
    assert (len(one.train), len(one.val), one.test) == (32, 8, None)
    pq = text(tokenizer, path=str(local["parquet"]))  # the features (ClassLabel) travel in the parquet file
    assert pq.classes == ("neg", "pos") and len(pq.train) + len(pq.val) == 40
    csv = text(tokenizer, path=str(local["csv"]), test_fraction=0.2)  # no ClassLabel: the `label` column by name
    assert csv.classes == ("down", "up") and (len(csv.train), len(csv.val), len(csv.test)) == (12, 4, 4)
    # with the label named and the text found: the one string column besides it
    assert text(tokenizer, path=str(local["csv"]), label_column="label").classes == ("down", "up")


def test_val_fraction_is_seeded_and_stratified(local, tokenizer) -> None:
    def split(seed: int) -> tuple[list[int], list[int]]:
        b = text(tokenizer, seed=seed, path=str(local["parquet"]), val_fraction=0.25, test_fraction=0.25)
        return list(b.val.indices), labels_of(b.val) + labels_of(b.test)

    (val0, labels0), (again, _), (val1, _) = split(0), split(0), split(1)
    assert val0 == again and val0 != val1  # seeded
    assert sorted(labels0) == [0] * 10 + [1] * 10  # each class in proportion, in val and in test alike
    b = text(tokenizer, path=str(local["parquet"]), val_fraction=0.25, test_fraction=0.25)
    assert sorted(labels_of(b.val)) == [0] * 5 + [1] * 5 and sorted(labels_of(b.test)) == [0] * 5 + [1] * 5
    assert not set(b.train.indices) & set(b.val.indices) and not set(b.val.indices) & set(b.test.indices)


def test_ranks_share_an_hf_dataset_as_they_share_a_csv(local, tokenizer) -> None:
    """DDP sharding and length grouping read the same dataset objects: two ranks' slices of every global batch
    are disjoint and make up what one process reads with twice the batch."""
    from tuitune.engine.data.datasets import make_loaders

    b = text(tokenizer, path=str(local["parquet"]))
    common = {"num_workers": 0, "device_type": "cpu", "seed": 0, "group_by_length": True}

    def batches(loader) -> list[list[tuple[int, int]]]:  # (label, length) of each example, batch by batch
        return [sorted(zip(y.tolist(), x["attention_mask"].sum(1).tolist())) for x, y in loader]

    one = batches(make_loaders(b, batch_size=8, **common)[0])
    ranks = [batches(make_loaders(b, batch_size=4, rank=r, world=2, **common)[0]) for r in (0, 1)]
    assert [sorted(r0 + r1) for r0, r1 in zip(*ranks)] == one and len(one) == 4
    widths = [x["input_ids"].shape[1] for x, _ in make_loaders(b, batch_size=4, rank=0, world=2, **common)[0]]
    assert max(widths) < 12  # batches cut to their longest text (dynamic padding), not the cap of 128


def test_bad_local_paths_and_columns_are_one_line_each(local, tokenizer, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        ({"path": str(tmp_path / "missing")}, f"{tmp_path / 'missing'}: data.path: no such folder or file"),
        ({"path": str(tmp_path / "notes.txt")}, f"{tmp_path / 'notes.txt'}: data.path: expected a save_to_disk folder"),
        (
            {"path": str(local["dict"]), "val_split": "val"},
            f"{local['dict']}: data.val_split: no split 'val' (splits: train, validation, test)",
        ),
        (
            {"path": str(local["parquet"]), "label_column": "sentence"},
            f"{local['parquet']}: data.text_column: no text (string) column (columns: {COLUMNS})",
        ),
    ]
    for kw, line in cases:
        with pytest.raises(DataError) as e:
            text(tokenizer, **kw)
        assert str(e.value).startswith(line), str(e.value)
    import datasets

    unlabelled = tmp_path / "unlabelled"
    datasets.Dataset.from_dict({"a": ["x y", "y z"], "b": ["p q", "q r"]}).save_to_disk(unlabelled)
    with pytest.raises(
        DataError,
        match=r"data.label_column: no ClassLabel column and none named label; name one "
        r"\(columns: a \(string\), b \(string\)\)$",
    ):
        text(tokenizer, path=str(unlabelled))
    with pytest.raises(DataError, match=r"data.text_column: several text \(string\) columns \(a, b\): name one$"):
        text(tokenizer, path=str(_three_columns(tmp_path)))


def _three_columns(tmp_path: Path) -> Path:
    import datasets

    folder = tmp_path / "three"
    datasets.Dataset.from_dict({"a": ["x"] * 4, "b": ["y"] * 4, "label": [0, 1, 0, 1]}).save_to_disk(folder)
    return folder


# ------------------------------------------------------------------------------------------------ profiles


def _profile(**data) -> dict:
    return {
        "model": {"source": "hf", "name": "x"},
        "data": {"kind": "hf", "name": TEXT_REPO, **data},
    }


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            {"path": "x.csv"},
            EITHER + ", not both",
        ),
        (
            {"name": ""},
            EITHER + ", one of them",
        ),
        ({"name": "a/b/c"}, "p.toml: data.name: 'a/b/c' is not a hub dataset id (org/name)"),
        ({"val_split": "train"}, "p.toml: data.val_split: 'train' is data.split already"),
        ({"split": ""}, "p.toml: data.split: required (the split to train on, e.g. train)"),
        ({"kind": "text", "path": "x.csv", "name": ""}, None),
        (
            {"kind": "text", "path": "x.csv", "name": "", "val_split": "v"},
            'p.toml: data.val_split: only for data.kind = "hf"',
        ),
        (
            {"name": "", "path": "folder", "revision": "v1"},
            "p.toml: data.revision: only for a hub dataset (data.name), not a local data.path",
        ),
        ({"split": 3}, "p.toml: data.split: expected a string, got an integer 3"),
    ],
)
def test_profile_keys_are_checked_where_they_enter(data, line) -> None:
    table = _profile(**data)
    if line is None:
        assert profile_from_dict(table, "p.toml").data.kind == "text"
        return
    with pytest.raises(ProfileError) as e:
        profile_from_dict(table, "p.toml")
    assert str(e.value) == line


# ------------------------------------------------------------------------------------------------ a run


def test_a_run_on_a_hub_dataset_downloads_then_trains(hub, tmp_path) -> None:
    """Through the engine: the download's progress comes before the run starts, and the run trains on the data, a
    head-only run on the feature cache."""
    from tuitune.engine.commands import Control
    from tuitune.engine.events import EpochEnded, FeatureCacheChanged, RunFinished, RunStarted
    from tuitune.engine.session import run_training

    folder = make_tiny_hf_dir(tmp_path, "bert")
    table = {
        "name": "hub-data",
        "model": {"source": "hf", "name": str(folder), "max_length": 12},
        "data": {"kind": "hf", "name": TEXT_REPO, "test_split": "test", "batch_size": 8},
        "train": {"epochs": 1, "lr": 0.01, "log_every": 2, "seed": 0},
        "strategy": {"kind": "head_only"},
    }
    events: list = []
    end = run_training(
        profile_from_dict(table, "hub.toml"), tmp_path / "run", events.append, Control(), interactive=False
    )
    assert isinstance(end, RunFinished), end
    started = next(i for i, e in enumerate(events) if isinstance(e, RunStarted))
    downloads = [i for i, e in enumerate(events) if isinstance(e, SetupProgressed) and e.task == "download"]
    assert downloads and max(downloads) < started
    assert events[started].classes == ("neg", "pos")
    assert [e.active for e in of_type(events, FeatureCacheChanged)][:1] == [True]  # head-only on cached features
    assert of_type(events, EpochEnded)[-1].val_score is not None
    assert np.isfinite(of_type(events, EpochEnded)[-1].val_loss)
