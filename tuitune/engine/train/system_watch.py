"""Which machine parts a run's system samples cover: every rank says where it trains (host, process, GPU), and rank
0 samples the ranks on its own host (`tuitune/engine/record/system.py`). Ranks on other hosts are not sampled: NVML
and psutil see only the machine they run on."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch

from tuitune.engine.events import SystemSampled
from tuitune.engine.record.system import NvmlReader, ProcessReader, SystemSampler
from tuitune.engine.train.distributed import DistContext


def where_i_train(dist: DistContext, device: torch.device) -> dict[str, Any]:
    """This rank's host, process and GPU (NVML's UUID and PCI bus id; empty on CPU)."""
    uuid = pci = ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        uuid = str(getattr(props, "uuid", ""))
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) or not uuid else f"GPU-{uuid}"
        pci = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    return {"rank": dist.rank, "host": socket.gethostname(), "pid": os.getpid(), "uuid": uuid, "pci": pci}


def watch_system(
    dist: DistContext,
    device: torch.device,
    every_s: float,
    emit: Callable[[SystemSampled], bool],
    nvml: Any = None,
) -> SystemSampler | None:
    """A started sampler on rank 0 (None on the others, or with `every_s` 0). A collective: every rank calls it at
    the same point of the run."""
    ranks = dist.gather_objects(where_i_train(dist, device))
    if not dist.is_main or every_s <= 0:
        return None
    here = [r for r in ranks if r["host"] == ranks[0]["host"]]
    gpus = NvmlReader.open([(r["rank"], r["uuid"], r["pci"]) for r in here if r["uuid"] or r["pci"]], nvml)
    try:
        processes = ProcessReader([(r["rank"], r["pid"]) for r in here])
    except ImportError:  # psutil is a dependency; a broken install loses the panel, not the run
        return None
    sampler = SystemSampler(emit, processes, gpus, every_s)
    sampler.start()
    return sampler
