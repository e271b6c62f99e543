"""Everything a run needs before its first step: device, data, backbone, layer groups, phases, loaders."""

from __future__ import annotations

import atexit
import dataclasses
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuitune.config import ModelConfig, RunProfile
from tuitune.engine.data.augment import augment_train
from tuitune.engine.data.datasets import DataBundle, make_loaders
from tuitune.engine.data.image_cache import cache_images
from tuitune.engine.data.kinds import build_datasets, input_task, prepare_data, target_kind
from tuitune.engine.events import Event
from tuitune.engine.model.groups import Backbone, LayerGroup
from tuitune.engine.rebuild import Builder, profile_backbone
from tuitune.engine.train import strategy
from tuitune.engine.train.distributed import LOCAL, DistContext
from tuitune.engine.train.domain_shift import shift_plan
from tuitune.errors import UserError


@dataclass
class RunParts:
    """The fixed parts of a run; `TrainerState` holds what changes."""

    backbone: Backbone
    device: torch.device
    bundle: DataBundle
    train_loader: Any
    val_loader: Any
    test_loader: Any
    plan: strategy.PhasePlan  # the phases and each one's LR scale
    steps_per_epoch: int  # optimizer steps
    micro_per_epoch: int  # batches per epoch: `steps_per_epoch` x `train.accumulate_steps`, the last step short
    warnings: tuple[str, ...]
    source_loader: Any = None  # the pretraining task's val set (`data.source_classes`), scored by the source head
    forward: Any = None  # what the training step calls: the model, or `torch.compile(model)` (`train.compile`)
    channels_last: bool = False  # image batches go to the device in channels-last layout (CUDA conv nets)
    dist: DistContext = LOCAL  # this process's rank among the run's ranks (one process: LOCAL)
    compiled: bool = False  # `train.compile`: `forward` is compiled (again after each DDP re-wrap)
    ddp_target: Any = None  # what DDP wraps when not the model itself (`distill.PreLogitsStudent`)

    def end_workers(self) -> None:
        """End the loaders' persistent workers with the run, while their queues are intact. Left to the garbage
        collector, a loader's reference cycle is torn down in any order: its workers never get their stop signal,
        and the next collection (the next run's start, in a dashboard or a test process) waits 5 s per worker on
        each, then sends SIGTERM, which they ignore (`_ignore_interrupts`)."""
        for loader in (self.train_loader, self.val_loader, self.test_loader, self.source_loader):
            iterator = getattr(loader, "_iterator", None)  # torch keeps one for `persistent_workers`
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def rewrap(self) -> None:
        """Several ranks: a new DDP wrapper for the parameters trainable now (call on every rank at the same step,
        after the trainable set changed). `train.compile`: the graphs compiled for the old trainable set are
        dropped (`compile_watch.drop_graphs`: each phase compiles once, never past dynamo's recompile limit)."""
        if self.compiled:
            from tuitune.engine.train.compile_watch import drop_graphs

            drop_graphs()
        if self.dist.active:
            wrapped = self.dist.wrap(self.model if self.ddp_target is None else self.ddp_target, self.device)
            self.forward = torch.compile(wrapped) if self.compiled else wrapped

    def batch_share(self, index: int) -> float:
        """How this rank's mean loss of train batch `index` weighs in the global batch (1.0 but for an uneven
        last global batch; see `shards.GlobalBatchSampler.share`)."""
        share = getattr(self.train_loader.batch_sampler, "share", None)
        return share(index) if self.dist.active and share is not None else 1.0

    @property
    def phases(self) -> tuple[tuple[str, ...], ...]:
        return self.plan.phases

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        return self.backbone.groups

    @property
    def device_label(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)}, bf16)"
        return str(self.device)

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA; full precision on CPU, where bf16 is slower than fp32 for small models."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def trainable_params(self) -> Iterator[torch.nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def next_groups(self, phase: int) -> tuple[str, ...]:
        if phase + 1 >= len(self.phases):
            return ()
        return tuple(g for g in self.phases[phase + 1] if g not in self.phases[phase])


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"train.device: {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device: {spec!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers share the terminal's process group, so Ctrl+C reaches them too. They must not die of it:
    the main process stops gracefully at the next step and may still need them (a worker dead of SIGINT turns
    that clean stop into "DataLoader worker exited unexpectedly"). So must SIGTERM and SIGUSR1, which a scheduler
    may send to every process of the job: they preempt the run, and the main process ends the workers itself."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def _end_workers() -> None:
    """At exit, end the workers of any loader still iterating. Python's own exit hook would `terminate()` them
    (SIGTERM), which they ignore (above), then wait for them forever: a preempted run that saved everything would
    hang instead of exiting 75. torch's SIGCHLD handler would raise in the middle of this ("DataLoader worker ...
    is killed by signal"): it goes first."""
    import multiprocessing
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


def _shield_workers(*loaders: Any) -> None:
    shielded = False
    for loader in loaders:
        if loader is not None and loader.num_workers > 0 and loader.worker_init_fn is None:
            loader.worker_init_fn = _ignore_interrupts
            shielded = True
    if shielded:
        import multiprocessing.util  # noqa: F401  (registers its exit hook now, if the loaders have not yet: ours,
        # registered after it, runs before it: atexit runs the last registered first)

        atexit.unregister(_end_workers)
        atexit.register(_end_workers)


def seed_everything(seed: int) -> None:
    """Python's, torch's and numpy's global RNGs (timm's `Mixup` draws from numpy's)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_length(profile: RunProfile, batches: int) -> tuple[int, int]:
    """(batches, optimizer steps) of an epoch: `max_steps_per_epoch` counts optimizer steps, each of which takes
    `accumulate_steps` batches, the epoch's remainder making one more."""
    k = profile.train.accumulate_steps
    micro = min(batches, profile.train.max_steps_per_epoch * k) if profile.train.max_steps_per_epoch else batches
    return micro, -(-micro // k)


def build_parts(
    profile: RunProfile,
    run_dir: Path,
    emit: Callable[[Event], None] | None = None,
    dist: DistContext = LOCAL,
    build: Builder = profile_backbone,
) -> RunParts:
    """Build everything before the first step; `emit` gets `SetupProgressed` for the long parts (a download, an
    image folder scan, tokenization), so no setup step runs silently. `dist`: this process's rank of a
    multi-rank run (its device, its share of the data). `build`: the model builder of the profile's task
    (`tasks.task_of(profile).build`; a classifier's by default)."""
    seed_everything(profile.train.seed)  # the same on every rank: same init, same shuffle generator
    prepare_data(profile.data, emit)  # a hub dataset's download, before anything asks the data a question
    device = dist.device(profile.train.device) or resolve_device(profile.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    target = target_kind(profile.loss.kind)
    if profile.data.group_by_length and input_task(profile.data, profile.model) != "text":
        raise UserError("data.group_by_length: only for text data (images all have the same size)")
    backbone, _, warnings = build(profile, model_config(profile), emit=emit)
    if profile.train.gradient_checkpointing:
        from tuitune.engine.model.checkpointing import enable_checkpointing

        warnings += [note] if (note := enable_checkpointing(backbone.model)) else []
    _sync_bn(profile, backbone, device, dist)
    backbone.model.to(device)
    channels_last = _channels_last(profile, backbone, device)
    if channels_last:
        backbone.model.to(memory_format=torch.channels_last)
    bundle = build_datasets(
        profile.data,
        task=backbone.task,
        data_config=backbone.data_config,
        tokenizer=backbone.tokenizer,
        max_length=profile.model.max_length,
        seed=profile.train.seed,
        target=target,
        emit=emit,
    )
    if backbone.task == "image":
        bundle = augment_train(bundle, backbone.data_config, profile.augment)
        bundle, note = cache_images(bundle, profile.data.cache_images, emit)
        warnings += [note] if note else []
    train_loader, val_loader, test_loader = run_loaders(profile, bundle, device, dist)
    micro, steps = _epoch_length(profile, len(train_loader))
    plan = strategy.from_first_trainable(
        strategy.plan_phases([g.name for g in backbone.groups], profile.strategy),
        {g.name for g in backbone.groups if g.trained},
    )
    if profile.model.trust_remote_code:
        warnings.append("model.trust_remote_code is on: this checkpoint's own Python code runs in this process")
    parts = RunParts(
        backbone=backbone,
        device=device,
        bundle=bundle,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        plan=plan,
        steps_per_epoch=steps,
        micro_per_epoch=micro,
        warnings=tuple(warnings),
        source_loader=source_loader(profile, backbone, device, dist),
        forward=torch.compile(backbone.model) if profile.train.compile else backbone.model,
        channels_last=channels_last,
        dist=dist,
        compiled=profile.train.compile,
    )
    note = shift_plan(parts, profile)
    parts.warnings += (note,) if note else ()
    return parts


def run_loaders(profile: RunProfile, bundle: DataBundle, device: torch.device, dist: DistContext) -> tuple[Any, ...]:
    """The train, val and test loaders at the profile's batch size (`data.batch_size = "auto"`: a few examples
    until the size is chosen, see `set_batch_size`)."""
    loaders = make_loaders(
        bundle,
        batch_size=rank_batch_size(profile, dist),
        num_workers=profile.data.num_workers,
        device_type=device.type,
        seed=profile.train.seed,
        group_by_length=profile.data.group_by_length,
        pad_to_max_length=profile.data.pad_to_max_length,
        rank=dist.rank,
        world=dist.world,
        prefetch_factor=profile.data.prefetch_factor,
        device=device,
    )
    _shield_workers(*loaders)
    return loaders


def set_batch_size(parts: RunParts, profile: RunProfile, size: int) -> RunProfile:
    """`data.batch_size = "auto"` chosen: the profile with `size` in its place (what the run records and resumes
    with), and the parts' loaders and epoch lengths made anew at that size."""
    profile = dataclasses.replace(profile, data=dataclasses.replace(profile.data, batch_size=size))
    parts.train_loader, parts.val_loader, parts.test_loader = run_loaders(
        profile, parts.bundle, parts.device, parts.dist
    )
    parts.micro_per_epoch, parts.steps_per_epoch = _epoch_length(profile, len(parts.train_loader))
    return profile


AUTO_PROBE = 8  # `data.batch_size = "auto"`: examples per batch until the size is chosen (and measured at)


def rank_batch_size(profile: RunProfile, dist: DistContext) -> int:
    """Examples per step on this rank: `data.batch_size`, or its share of it with `data.batch_scope = "global"`."""
    size = profile.data.batch_size
    if not isinstance(size, int):  # "auto", not chosen yet
        return AUTO_PROBE
    if not dist.active or profile.data.batch_scope == "rank":
        return size
    if size % dist.world:
        raise UserError(
            f"data.batch_size: {size} does not divide among {dist.world} ranks "
            f'(data.batch_scope = "global"); use a multiple of {dist.world}'
        )
    return size // dist.world


def _sync_bn(profile: RunProfile, backbone: Backbone, device: torch.device, dist: DistContext) -> None:
    """`train.sync_bn`: BatchNorm layers become SyncBatchNorm (same parameter names, so the layer groups hold)."""
    if not profile.train.sync_bn or not dist.active:
        return
    if dist.backend != "nccl":
        raise UserError(
            "train.sync_bn: SyncBatchNorm needs CUDA ranks (torch has no CPU implementation); on CPU "
            "each rank normalises over its own batch"
        )
    backbone.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(backbone.model)


def _channels_last(profile: RunProfile, backbone: Backbone, device: torch.device) -> bool:
    """Channels-last pays on CUDA for convolutional models (tensor cores read NHWC); not on CPU, not for ViTs."""
    if not profile.train.channels_last or device.type != "cuda" or backbone.task != "image":
        return False
    return any(isinstance(m, torch.nn.Conv2d) for m in backbone.model.modules())


def model_config(profile: RunProfile) -> ModelConfig:
    """The model section with the regularization keys folded into the builder's arguments: timm's `drop_rate` /
    `drop_path_rate`, a transformers config's dropouts (see `hf.apply_config_overrides`)."""
    reg, extra = profile.regularization, {}
    if profile.model.source == "timm":
        extra = {k: getattr(reg, k) for k in ("drop_rate", "drop_path_rate") if getattr(reg, k)}
    else:
        if reg.drop_path_rate:
            raise UserError("regularization.drop_path_rate: stochastic depth is for timm models")
        if reg.hidden_dropout >= 0:
            extra["hidden_dropout"] = reg.hidden_dropout
        if reg.drop_rate:
            extra["classifier_dropout"] = reg.drop_rate
    return dataclasses.replace(profile.model, kwargs={**extra, **profile.model.kwargs})


def source_loader(profile: RunProfile, backbone: Backbone, device: torch.device, dist: DistContext = LOCAL) -> Any:
    """The val split of the pretraining classes (digits), for the source-retention check."""
    classes = profile.data.source_classes
    if not classes:
        return None
    from tuitune.engine.model.heads import splittable

    if not backbone.source_head or not splittable(backbone.model):
        raise UserError(
            "data.source_classes: needs model.weights with the pretraining classifier in it (a timm "
            "model), to score the source task with"
        )
    cfg = dataclasses.replace(profile.data, classes=classes, test_fraction=0.0)
    bundle = build_datasets(cfg, task="image", data_config=backbone.data_config, seed=profile.train.seed)
    return make_loaders(
        bundle,
        batch_size=rank_batch_size(profile, LOCAL),
        num_workers=0,
        device_type=device.type,
        seed=profile.train.seed,
        rank=dist.rank,
        world=dist.world,
    )[1]
