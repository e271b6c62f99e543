"""Shared test setup. Textual renders monochrome under NO_COLOR, which would break the UI snapshots.

One OpenMP thread (here and in the subprocesses tests start): the models are tiny, so a second thread buys little,
and spinning threads make runs many times slower whenever anything else shares the 2 cores. The hub stays off
(tuitune downloads missing pretrained weights when it is on) except in the tests that serve a stand-in hub on
127.0.0.1."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

os.environ.pop("NO_COLOR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the internet; the hub tests serve a local stand-in
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The modules whose tests start processes (8-20 s each). Run first: xdist hands tests out in collection order, and a
# long test handed out last keeps one core busy while the other has nothing left to do.
STARTS_PROCESSES = (
    "tests/engine/test_ddp.py",
    "tests/remote/test_queue.py",
    "tests/engine/test_hub.py",
    "tests/remote/test_dashboard.py",
    "tests/remote/test_processes.py",
    "tests/engine/test_interrupts.py",
    "tests/test_checks.py",
    "tests/sweep/test_sweep.py",
    "tests/engine/test_lora.py",
    "tests/remote/test_multirank.py",
    "tests/engine/test_export.py",
    "tests/sweep/test_sweep_storage.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {path: i for i, path in enumerate(STARTS_PROCESSES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def frozen_import_heap() -> Iterator[None]:
    """The heap as the test modules' imports left it (torch, timm, transformers, textual: ~0.5M objects) frozen once
    per test process. Each training run collects the garbage before it starts; with this heap frozen that
    collection skips it (~0.3 s a run otherwise). A run leaves a heap frozen by its caller as it found it
    (tuitune/engine/train/loop.py), so this freeze holds for the whole session."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def pytest_xdist_auto_num_workers(config: object) -> int:
    """`-n auto`: one worker more than cores, since a worker waiting on the processes its test started leaves
    its core to the others."""
    return (os.cpu_count() or 1) + 1
