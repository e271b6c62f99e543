"""The loader feeds the GPU: the worker count from the cores per process, pinned memory, persistent workers and
`data.prefetch_factor` on CUDA loaders (built, not iterated: there is no GPU here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tuitune.config import load_profile, profile_from_dict
from tuitune.config.declare import ProfileError
from tuitune.engine.data.datasets import DataBundle, TensorImages, make_loaders, resolve_num_workers


def bundle() -> DataBundle:
    images = TensorImages(torch.zeros(16, 3, 8, 8), torch.as_tensor(np.arange(16) % 2))
    return DataBundle(images, images, None, ("a", "b"), "tiny")


@pytest.mark.parametrize(
    ("cores", "local_world", "world", "expected"),
    [
        (16, "", 1, 15),  # one process on 16 cores: all but its own
        (16, "2", 4, 7),  # two ranks on this machine share them (four in all, on two machines)
        (16, "", 4, 3),  # plain world size when torchrun's LOCAL_WORLD_SIZE is not set
        (64, "", 1, 16),  # capped
        (2, "", 1, 1),  # at least one: the GPU waits on the process, so one worker still overlaps
        (2, "4", 4, 1),
    ],
)
def test_auto_workers_come_from_the_cores_per_process(
    monkeypatch: pytest.MonkeyPatch, cores: int, local_world: str, world: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert resolve_num_workers(-1, "cuda", world) == expected
    assert resolve_num_workers(-1, "cpu", world) == 0  # training uses every core on a CPU run
    assert resolve_num_workers(3, "cuda", world) == 3  # as given


def test_cuda_loaders_pin_keep_their_workers_and_prefetch_as_asked() -> None:
    train, val, _ = make_loaders(bundle(), batch_size=4, num_workers=2, device_type="cuda", seed=0, prefetch_factor=6)
    for loader in (train, val):
        assert loader.pin_memory and loader.persistent_workers and loader.prefetch_factor == 6
    cpu, _, _ = make_loaders(bundle(), batch_size=4, num_workers=0, device_type="cpu", seed=0, prefetch_factor=6)
    assert not cpu.pin_memory and not cpu.persistent_workers and cpu.prefetch_factor is None  # no workers: unused
    assert len(list(cpu)) == 4


@pytest.mark.parametrize("value", ["0", "65", "2.5", '"auto"'])
def test_a_bad_prefetch_factor_is_one_line_naming_the_file_and_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[model]\nname = "x"\n[data]\nprefetch_factor = {value}\n')
    with pytest.raises(ProfileError, match=r"p\.toml: data\.prefetch_factor") as err:
        load_profile(path)
    assert "\n" not in str(err.value)


def test_the_profile_carries_the_prefetch_factor() -> None:
    assert profile_from_dict({"model": {"name": "x"}, "data": {"prefetch_factor": 8}}).data.prefetch_factor == 8
    assert profile_from_dict({"model": {"name": "x"}}).data.prefetch_factor == 2


DC = {
    "input_size": (3, 24, 24),
    "interpolation": "bilinear",
    "mean": (0.5, 0.4, 0.3),
    "std": (0.2, 0.25, 0.3),
    "crop_pct": 0.875,
}


def image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def augmented(tmp_path: Path, **aug: object) -> DataBundle:
    from tuitune.config import AugmentConfig, DataConfig
    from tuitune.engine.data.augment import augment_train
    from tuitune.engine.data.kinds import build_datasets

    files = build_datasets(
        DataConfig(kind="image_folder", path=str(image_folder(tmp_path / "imgs"))), task="image", data_config=DC
    )
    return augment_train(files, DC, AugmentConfig(train_transform="timm", auto_augment="rand-m9-mstd0.5", **aug))


def first_batch(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return next(iter(loader))[0]


def test_augmented_images_come_as_pixels_normalised_by_the_loader_as_the_float_path_would(tmp_path: Path) -> None:
    """The same random draws give the same batch: uint8 pixels through the loader, normalised as one batch, equal
    the per-image float transform up to rounding; the split itself still reads as floats (the LR finder's loader)."""
    from torch.utils.data import DataLoader

    from tuitune.engine.data.pixels import NormalizingLoader

    b = augmented(tmp_path)
    train, _, _ = make_loaders(b, batch_size=4, num_workers=0, device_type="cpu", seed=0)
    assert isinstance(train, NormalizingLoader)
    fast = first_batch(train)
    slow = first_batch(DataLoader(b.train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert fast.dtype == slow.dtype == torch.float32 and fast.shape == slow.shape == (4, 3, 24, 24)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert b.train[0][0].dtype == torch.float32
    # on a GPU run, onto the run's GPU (not merely the current one) from pinned memory
    gpu, _, _ = make_loaders(b, batch_size=4, num_workers=2, device_type="cuda", seed=0, device=torch.device("cuda", 1))
    assert isinstance(gpu, NormalizingLoader) and gpu.device == torch.device("cuda", 1) and gpu.pin_memory


def test_random_erasing_keeps_the_float_path(tmp_path: Path) -> None:
    """timm erases on normalised floats; its prefetcher form would move those draws out of the workers."""
    from tuitune.engine.data.pixels import NormalizingLoader

    train, _, _ = make_loaders(augmented(tmp_path, re_prob=0.5), batch_size=4, num_workers=0, device_type="cpu", seed=0)
    assert not isinstance(train, NormalizingLoader) and next(iter(train))[0].dtype == torch.float32
