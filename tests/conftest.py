"""Shared test setup. Textual renders monochrome under NO_COLOR, which would break the UI snapshots.

One OpenMP thread (here and in the subprocesses tests start): the models are tiny, so a second thread buys little,
and spinning threads make runs many times slower whenever anything else shares the 2 cores. The hub stays off
(tuitune downloads missing pretrained weights when it is on) except in the tests that serve a stand-in hub on
127.0.0.1."""

from __future__ import annotations

import os

os.environ.pop("NO_COLOR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the internet; the hub tests serve a local stand-in
os.environ.setdefault("OMP_NUM_THREADS", "1")
