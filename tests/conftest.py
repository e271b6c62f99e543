"""Shared test setup. Textual renders monochrome under NO_COLOR, which would break the UI snapshots.

One OpenMP thread (here and in the subprocesses tests start): the models are tiny, so a second thread buys little,
and spinning threads make runs many times slower whenever anything else shares the 2 cores."""

from __future__ import annotations

import os

os.environ.pop("NO_COLOR", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")
