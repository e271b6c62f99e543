"""Data at full speed: text batches at their real length (`data.group_by_length`), decoded images kept in memory
(`data.cache_images`), and progress events for tokenization, folder scans and decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.conftest import of_type
from tests.engine.hf_fixtures import make_tiny_hf_dir
from tuitune.config import AugmentConfig, DataConfig, ModelConfig, apply_overrides, profile_from_dict
from tuitune.engine.data import image_cache
from tuitune.engine.data.augment import augment_train
from tuitune.engine.data.datasets import ImageFiles, TensorImages, make_loaders
from tuitune.engine.data.kinds import build_datasets
from tuitune.engine.events import SetupProgressed
from tuitune.engine.tools.lr_find import find_lr_for_profile

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "rug",
    "good",
    "bad",
    "great",
    "awful",
    "movie",
    "film",
    "plot",
    "actor",
    "love",
]
DC = {
    "input_size": (3, 16, 16),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("hf"), "bert")


@pytest.fixture(scope="module")
def tokenizer(bert_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_dir))


def write_texts(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Texts of 1 to 20 words, so lengths differ a lot between examples."""
    rng = np.random.default_rng(seed)
    rows = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(1, 21)))) + f",{'pos' if i % 2 else 'neg'}" for i in range(n)
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def text_bundle(tokenizer, path: Path, emit=None, max_length: int = 32):
    return build_datasets(
        DataConfig(kind="text", path=str(path), val_fraction=0.25),
        task="text",
        data_config={},
        tokenizer=tokenizer,
        max_length=max_length,
        seed=0,
        emit=emit,
    )


def test_batches_are_cut_to_their_longest_text_and_tokenized_once(tokenizer, tmp_path: Path) -> None:
    calls = []
    counting = lambda *a, **k: calls.append(1) or tokenizer(*a, **k)  # noqa: E731
    counting.padding_side = "right"  # type: ignore[attr-defined]
    events: list = []
    bundle = text_bundle(counting, write_texts(tmp_path / "t.csv"), events.append)
    assert len(calls) == 1
    train, val, _ = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0)
    widths = set()
    for _ in range(2):  # two epochs: no tokenizer call, every batch only as wide as its longest text
        for loader in (train, val):
            for x, _y in loader:
                longest = int(x["attention_mask"].sum(1).max())
                assert x["input_ids"].shape[1] == x["attention_mask"].shape[1] == longest <= 32
                assert bool((x["attention_mask"][:, :longest].sum(1) > 0).all())
                widths.add(longest)
    assert len(calls) == 1 and len(widths) > 1
    padded = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, pad_to_max_length=True)
    assert {x["input_ids"].shape[1] for loader in padded[:2] for x, _y in loader} == {32}  # the old baseline
    done = [e for e in of_type(events, SetupProgressed) if e.task == "tokenize" and e.finished]
    assert [(e.detail, e.done, e.total, e.unit) for e in done] == [("t.csv", 48, 48, "texts")]


def test_trimmed_batch_gives_the_same_logits_as_full_padding(bert_dir: Path, tokenizer, tmp_path: Path) -> None:
    from tuitune.engine.model.backbone import build_backbone

    model = build_backbone(ModelConfig(source="hf", name=str(bert_dir)), 2, task="text").model.eval()
    bundle = text_bundle(tokenizer, write_texts(tmp_path / "t.csv"))
    x, _ = next(iter(make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0)[1]))
    full = torch.utils.data.default_collate([bundle.val[i] for i in range(len(x["input_ids"]))])[0]
    assert full["input_ids"].shape[1] == 32 > x["input_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(full), atol=1e-5, rtol=1e-5)


def test_a_left_padding_tokenizer_keeps_the_end_of_each_text_when_batches_are_trimmed(
    bert_dir: Path, tmp_path: Path
) -> None:
    """Padded on the left (as decoder tokenizers are), a text's tokens are the last columns: a trimmed batch is
    the last columns of the padded one, every real token kept (the final [SEP] included) and only padding cut."""
    from transformers import AutoTokenizer

    left = AutoTokenizer.from_pretrained(str(bert_dir), padding_side="left")
    bundle = text_bundle(left, write_texts(tmp_path / "t.csv"))
    sep = left.sep_token_id
    for loader, data in zip(
        make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0)[:2], (bundle.train, bundle.val)
    ):
        loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=loader.collate_fn)  # in order
        for i, (x, _y) in enumerate(loader):
            full = torch.utils.data.default_collate([data[j] for j in range(8 * i, min(8 * i + 8, len(data)))])[0]
            width = x["input_ids"].shape[1]
            assert width < 32 and width == int(full["attention_mask"].sum(1).max())
            assert torch.equal(x["input_ids"], full["input_ids"][:, -width:])
            assert torch.equal(x["attention_mask"].sum(1), full["attention_mask"].sum(1))  # no real token lost
            assert bool((x["input_ids"][:, -1] == sep).all())  # every text still ends with its [SEP]


def test_group_by_length_batches_similar_lengths_seeded_and_replayable(tokenizer, tmp_path: Path) -> None:
    bundle = text_bundle(tokenizer, write_texts(tmp_path / "t.csv", n=400))

    def padding(loader) -> int:
        return sum(int(x["attention_mask"].numel() - x["attention_mask"].sum()) for x, _y in loader)

    plain = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0)[0]
    grouped = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, group_by_length=True)[0]
    assert padding(grouped) * 3 < padding(plain)  # far less padding
    # every example once per epoch, shuffled (not sorted), from the loader's own seeded generator
    first = list(grouped.sampler)
    assert sorted(first) == list(range(len(bundle.train))) and first != sorted(first)
    again = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, group_by_length=True)[0]
    assert list(again.sampler) == list(
        make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, group_by_length=True)[0].sampler
    )
    # resume replays an epoch by restoring the generator's state: the same order follows
    state = grouped.generator.get_state()
    one = [y.tolist() for _x, y in grouped]
    grouped.generator.set_state(state)
    assert [y.tolist() for _x, y in grouped] == one
    assert [y.tolist() for _x, y in grouped] != one  # and the next epoch is another shuffle


def test_group_by_length_on_two_ranks_slices_the_one_process_batches(tokenizer, tmp_path: Path) -> None:
    """Each rank's loader (world 2, batch 8) reads its slice of the length-grouped batches one process reads with
    batch 16, epoch after epoch (both derive the order from the seed alike); the padding stays low."""
    bundle = text_bundle(tokenizer, write_texts(tmp_path / "t.csv", n=400))
    one = make_loaders(bundle, batch_size=16, num_workers=0, device_type="cpu", seed=0, group_by_length=True)[0]
    ranks = [
        make_loaders(
            bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, group_by_length=True, rank=r, world=2
        )[0]
        for r in range(2)
    ]
    for _ in range(2):
        for loader in (one, *ranks):  # what a DataLoader draws first (its workers' base seed)
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        expected = [sorted(b) for b in one.batch_sampler]
        got = [sorted(a + b) for a, b in zip(*[list(r.batch_sampler) for r in ranks])]
        assert got == expected[: len(got)] and len(got) == len(expected)
    plain = make_loaders(bundle, batch_size=8, num_workers=0, device_type="cpu", seed=0, rank=0, world=2)[0]
    pads = [
        sum(int(x["attention_mask"].numel() - x["attention_mask"].sum()) for x, _y in loader)
        for loader in (ranks[0], plain)
    ]
    assert pads[0] * 3 < pads[1]


def test_lr_finder_runs_on_variable_length_batches(bert_dir: Path, tmp_path: Path) -> None:
    write_texts(tmp_path / "t.csv")
    table = {
        "name": "t",
        "model": {"source": "hf", "name": str(bert_dir), "max_length": 32},
        "data": {"kind": "text", "path": str(tmp_path / "t.csv"), "batch_size": 8, "group_by_length": True},
        "strategy": {"kind": "full"},
        "train": {"seed": 0},
    }
    curve, csv_path = find_lr_for_profile(
        profile_from_dict(apply_overrides(table, []), file="t.toml"), tmp_path / "lr", steps=8
    )
    assert len(curve.lrs) == 8 and all(np.isfinite(curve.losses)) and csv_path.is_file()


# ------------------------------------------------------------------------------------------------ images


def write_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_cache_images_decodes_once_with_the_same_pixels(tmp_path: Path) -> None:
    events: list = []
    cfg = DataConfig(kind="image_folder", path=str(write_folder(tmp_path / "imgs")))
    files = build_datasets(cfg, task="image", data_config=DC, emit=events.append)
    assert isinstance(files.train, ImageFiles)
    cached, note = image_cache.cache_images(files, "on", events.append)
    assert note == "" and isinstance(cached.train, TensorImages) and isinstance(cached.val, TensorImages)
    for a, b in ((files.train, cached.train), (files.val, cached.val)):
        for i in range(len(a)):
            torch.testing.assert_close(a[i][0], b[i][0], atol=1e-6, rtol=0)
            assert int(a[i][1]) == int(b[i][1])
    tasks = [(e.task, e.detail, e.done) for e in of_type(events, SetupProgressed) if e.finished]
    assert tasks == [
        ("scan", "train (12 images)", 2),
        ("scan", "val (12 images)", 2),
        ("decode", "train images", 12),
        ("decode", "val images", 12),
    ]


def test_cache_images_skips_random_augmentation_off_and_too_big(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = build_datasets(
        DataConfig(kind="image_folder", path=str(write_folder(tmp_path / "imgs"))), task="image", data_config=DC
    )
    augmented = augment_train(files, DC, AugmentConfig(train_transform="timm"))
    cached, _ = image_cache.cache_images(augmented, "on")
    assert isinstance(cached.train, ImageFiles) and cached.train.random and isinstance(cached.val, TensorImages)
    assert image_cache.cache_images(files, "off")[0] is files
    monkeypatch.setattr(image_cache, "available_memory", lambda: 10_000)  # 24 images of 16x16x3 = 18 KB
    same, note = image_cache.cache_images(files, "auto")
    assert same is files and note.startswith("data.cache_images: the decoded images (0 MB) would not fit")
    monkeypatch.setattr(image_cache, "available_memory", lambda: 10**9)
    assert isinstance(image_cache.cache_images(files, "auto")[0].train, TensorImages)
