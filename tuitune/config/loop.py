"""The training loop's profile sections: `[train]`, `[strategy]` and `[early_stopping]`, and the metrics they watch.

These three decide how long and how fast the loop runs, which layer groups train when, and by which metric (`METRICS`)
it saves the best checkpoint, moves to the next phase and stops early. The other sections and the whole profile
(`RunProfile`) are in `tuitune/config/schema.py`; each key is declared with `opt(...)` (`tuitune/config/declare.py`).

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

from tuitune.config.declare import opt

# What checkpoint_metric, early stopping and the plateau trigger may watch (`METRICS`): the metrics every task reports,
# and each task's own (`tuitune.config.tasks`). `val_macro_f1` (classification only): the mean of the per-class F1
# scores at validation, for imbalanced data where accuracy flatters the majority class.
from tuitune.config.tasks import METRICS

# Metric names from before `*_acc` became `*_score` (they carried RMSE or F1 too, whatever the name said).
OLD_VALUES = {"val_acc": "val_score", "train_acc": "train_score"}


@overload
def metric_name(name: str) -> str: ...
@overload
def metric_name(name: object) -> object: ...
def metric_name(name: object) -> object:
    """A metric's name as it is now: an old one (`val_acc`, or the EMA model's `ema_val_acc`) as its new name, any
    other unchanged (a non-string too, for the caller's own check to refuse). Every place that reads a metric's name,
    from a person (a profile key, `--set`, a sweep's metric) or from a record (a summary's best metric, a study's),
    reads it through here, so the old names keep working everywhere."""
    if not isinstance(name, str):
        return name
    prefix = "ema_" if name.startswith("ema_") else ""
    return prefix + OLD_VALUES.get(name[len(prefix) :], name[len(prefix) :])


def recorded_checkpoint_metric(profile: Mapping[str, Any]) -> str:
    """The metric that chose a recorded run's `best` checkpoint, from its profile as `RunStarted` carries it (a
    table), under today's name; the schema's default where the record has none."""
    train = profile.get("train")
    name = train.get("checkpoint_metric") if isinstance(train, Mapping) else None
    return str(metric_name(name if isinstance(name, str) else TrainConfig.checkpoint_metric))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(10, "Epochs to train (all phases together).", min=1)
    lr: float = opt(1e-3, "Base learning rate (the head's; deeper groups get less with `strategy.lr_decay`).", gt=0.0)
    optimizer: str = opt(
        "adamw",
        "Any optimizer name timm's `create_optimizer_v2` knows: `sgd`, `momentum`, "
        "`adagrad`, `rmsprop`, `adam`, `adamw`, ...",
    )
    weight_decay: float = opt(0.01, "Weight decay.", min=0.0)
    momentum: float = opt(0.9, "Momentum for `sgd`/`momentum`/`rmsprop`.", min=0.0, max=1.0)
    schedule: str = opt(
        "cosine",
        "Learning-rate schedule over the run (timm's / torch's shapes, applied as a "
        "multiplier on each group's own LR): `constant`, `step`, `cosine`, `onecycle` or "
        "`plateau` (reduce when the val loss stalls).",
        choices=("constant", "step", "cosine", "onecycle", "plateau"),
    )
    warmup_steps: int = opt(0, "Linear warm-up steps at the start of the run (`onecycle`: its rising part).", min=0)
    decay_epochs: int = opt(3, "`step` schedule: epochs between LR decays.", min=1)
    decay_rate: float = opt(0.1, "`step` / `plateau` schedules: the factor applied at each decay.", gt=0.0, max=1.0)
    lr_patience: int = opt(2, "`plateau` schedule: epochs without val-loss improvement before a decay.", min=0)
    min_lr_ratio: float = opt(
        0.0, "`cosine` / `plateau`: the floor, as a fraction of each group's LR.", min=0.0, max=1.0
    )
    unfreeze_warmup_steps: int = opt(
        0,
        "Warm up each newly unfrozen group's LR on its own over this many steps (0 = it starts at its full LR).",
        min=0,
    )
    channels_last: bool = opt(
        True,
        "CUDA: keep convolutional models and their inputs in channels-last memory "
        "layout (faster tensor-core convolutions); ignored on CPU.",
    )
    compile: bool = opt(False, "Train through `torch.compile(model)` (a slow first step, faster ones after).")
    system_every_s: float = opt(
        5.0,
        "Seconds between samples of the machine under the run (each GPU's utilisation, memory, "
        "temperature and power; the run's CPU, RAM and DataLoader workers): the dashboard's "
        "system panel (`m`). 0 = off.",
        min=0.0,
    )
    feature_cache: bool = opt(
        True,
        "While the lowest layer groups stay frozen and deterministic (no BatchNorm in "
        "train mode, no dropout, no random augmentation), compute their output once and "
        "train only the groups above it on the stored activations (a head-only phase "
        "trains on cached features); rebuilt at each unfreeze. timm ResNet / ConvNeXt / "
        "ViT / EfficientNet / MobileNet families and Hugging Face encoders; an event "
        "says why when it is not used.",
    )
    cache_memory_gb: float = opt(
        0.0,
        "Most memory the feature cache may take (train + val activations, float32); "
        "0 = half of the memory available when it is built (device memory on CUDA, "
        "host memory otherwise). A cache that would not fit is not built.",
        min=0.0,
    )
    memory_gb: float = opt(
        0.0,
        "CPU runs: the most memory the run may use, in GB; the memory plan (each phase's peak, shown before the "
        'first step) is checked against it, and `data.batch_size = "auto"` picks the largest batch under it. '
        "0 = the RAM available when the run starts. CUDA runs plan against the GPU's free memory instead.",
        min=0.0,
    )
    gradient_checkpointing: bool = opt(
        False,
        "Recompute activations in the backward instead of keeping them (timm's `set_grad_checkpointing`, "
        "Hugging Face's activation checkpointing): much less activation memory for ~30% more compute per step. "
        "A model that does not support it trains without, said in one line at the start.",
    )
    domain_shift: bool = opt(
        True,
        "Measure how far the target data is from what each layer group expects "
        "(BatchNorm statistics, or the source data's outputs) on 4 val batches at the "
        "start and after every epoch: the layer table's shift column. Off: only after "
        "AdaBN (`b`).",
    )
    ema_decay: float = opt(
        0.0,
        "Keep an EMA of the weights (timm's ModelEmaV3) with this decay, e.g. 0.999, and "
        "evaluate it each epoch too; 0 = off.",
        min=0.0,
        max=0.99999,
    )
    ema_for_best: bool = opt(
        False,
        "With `ema_decay`: the `best` checkpoint (and so the test figures and the "
        "export) holds the EMA weights, chosen by the EMA model's `checkpoint_metric` "
        "(`ema_val_score` / `ema_val_loss`).",
    )
    accumulate_steps: int = opt(
        1,
        "Gradient accumulation: one optimizer step every this many batches of "
        "`data.batch_size` (the loss is scaled to match one big batch); steps, the LR "
        "schedule, `log_every` and `max_steps_per_epoch` count optimizer steps.",
        min=1,
    )
    grad_clip: float = opt(0.0, "Clip the gradient norm to this value; 0 = no clipping.", min=0.0)
    seed: int = opt(0, "Random seed (data split, shuffling, initialisation).")
    device: str = opt("auto", "`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.")
    sync_bn: bool = opt(
        False,
        "Several ranks on CUDA: convert BatchNorm to SyncBatchNorm, so training batches "
        "are normalised over all ranks' examples (frozen BatchNorm stays in eval).",
    )
    dist_timeout_s: int = opt(
        120,
        "Several ranks: seconds a rank waits for the others in a collective before the "
        "run fails (a dead rank is noticed at once; this bounds a hung one).",
        min=10,
    )
    log_every: int = opt(10, "Steps between metric reads (the only host syncs in the loop).", min=1)
    max_steps_per_epoch: int = opt(0, "Cap on steps per epoch; 0 = the whole training set.", min=0)
    checkpoint_metric: str = opt(
        "val_score",
        "Metric that decides the `best` checkpoint (`*_score`: the task's "
        "score, accuracy, RMSE or micro-F1; `val_acc`/`train_acc` still read; "
        "`val_macro_f1`: classification's macro-F1, for imbalanced classes).",
        choices=METRICS,
    )
    on_nonfinite: str = opt(
        "stop",
        "A NaN or infinite loss, found at the next metric read: `stop` ends the run "
        "(checkpoints already saved stay as they were); `skip` drops the gradients of "
        "such steps (and of steps with non-finite gradients) on the device and goes on.",
        choices=("stop", "skip"),
    )
    max_skipped: int = opt(10, '`on_nonfinite = "skip"`: the run stops once more steps than this were skipped.', min=0)
    restart: str = opt(
        "run",
        "`run`: one `schedule` shape over the whole run; `phase`: the shape starts again at each phase change "
        "(a warm restart at each unfreeze, as SGDR), over the phase's planned length (`every_epochs` with the "
        "`epochs` trigger, else the epochs left). `cosine` and `onecycle` schedules.",
        choices=("run", "phase"),
    )


@dataclass(frozen=True)
class StrategyConfig:
    kind: str = opt(
        "full",
        "`full` (everything trains), `head_only` (linear probe), `groups` (the named "
        "groups train), `progressive` (phases from the head downwards) or `lp_ft` (LP-FT, Kumar "
        "et al. 2022: the head alone until `trigger` fires, then every group at "
        "`ft_lr_scale` times the LR), `lora` (LoRA adapters through `peft` in every group, the "
        "head in full for a classifier; base weights frozen) or `auto_rgn` (every group trains; at each epoch's "
        "first step each group's LR is scaled by its relative gradient norm |g|/|w| over the largest group's, which "
        "keeps the full LR: Auto-RGN of surgical fine-tuning, Lee et al. 2023).",
        choices=("full", "head_only", "groups", "progressive", "lp_ft", "lora", "auto_rgn"),
    )
    groups: list = opt([], "`groups`: names of the trainable layer groups (see `tuitune layers`).")
    groups_per_phase: int = opt(1, "`progressive`: layer groups unfrozen at each phase change.", min=1)
    order: str = opt(
        "top_down",
        "`progressive`: which groups unfreeze after the head: `top_down` (the group below the trained ones, as "
        "ULMFiT) or `shift` (the most shifted first, by the domain-shift measurement of the pretrained model on "
        "the val data, as surgical fine-tuning: Lee et al. 2023). Groups it cannot measure come last, top down; "
        "a model with no BatchNorm and no `data.source_classes` keeps `top_down`, with a warning.",
        choices=("top_down", "shift"),
    )
    restore_best_phase: bool = opt(
        False,
        "At each phase change, first put back the weights of the ending phase's best epoch (by "
        "`train.checkpoint_metric`), as Lightning's finetuning-scheduler does: a phase that got worse after its "
        "best hands on its best. Each phase's best is kept as `checkpoints/phase-N.safetensors` (the current "
        "phase's and the one before's), which the `r` key (`RollBackPhase`) also rolls back to.",
    )
    trigger: str = opt(
        "epochs",
        "`progressive`: what starts the next phase: `manual` (the `u` key), `epochs` "
        "(every `every_epochs`) or `plateau` (of `plateau_metric`).",
        choices=("manual", "epochs", "plateau"),
    )
    fallback: str = opt(
        "plateau",
        "Headless runs have nobody to press `u` or answer the plateau question: with "
        '`trigger = "manual"` or `"plateau"` this trigger is used instead '
        "(`epochs`, `plateau`: move on by itself when the metric stalls, or `none`).",
        choices=("epochs", "plateau", "none"),
    )
    every_epochs: int = opt(2, "`epochs` trigger: epochs per phase.", min=1)
    plateau_metric: str = opt("val_loss", "`plateau` trigger: the metric watched.", choices=METRICS)
    plateau_patience: int = opt(2, "`plateau` trigger: epochs without improvement before the next phase.", min=1)
    plateau_min_delta: float = opt(0.0, "`plateau` trigger: the smallest change that counts as improvement.", min=0.0)
    plateau_wait: bool = opt(
        False,
        "`plateau` trigger in the dashboard: pause at the question until it is "
        "answered (the demo does; after `n` it asks again `plateau_patience` flat "
        "epochs later); otherwise training goes on while it is asked.",
    )
    lr_decay: float = opt(
        1.0,
        "Discriminative LR: each group one step further from the head gets this times "
        "the LR of the one above (ULMFiT: 0.385 = 1/2.6; 1.0 = the same LR everywhere).",
        gt=0.0,
        max=1.0,
    )
    freeze_bn: bool = opt(True, "Keep BatchNorm layers of frozen groups in eval mode (running stats untouched).")
    train_bn: bool = opt(
        False,
        "The norm layers of frozen groups keep training, as fastai does by default: their affine weights and "
        "biases train (at their group's LR) and BatchNorm normalises with batch statistics, updating its running "
        "ones; the rest of the group stays frozen. Norm layers are fastai's: BatchNorm, InstanceNorm, LayerNorm. "
        "The frozen part then computes no fixed function: the feature cache stops below the first norm layer "
        "(for most backbones: no cache).",
    )
    adabn: str = opt(
        "",
        "AdaBN (Li et al. 2016): re-estimate every BatchNorm layer's running statistics on `adabn_batches` "
        "training batches at the run's start (`start`) or at the start and at every phase change (`phase`); "
        '"" = never (the `b` key still does it by hand).',
        choices=("", "start", "phase"),
    )
    adabn_batches: int = opt(20, "`adabn`: training batches the statistics are re-estimated on.", min=1)
    freeze_dropout: bool = opt(
        True,
        "Run frozen layer groups without dropout or stochastic depth (their modules "
        "in eval mode): their output is then deterministic, and cacheable.",
    )
    coarse: bool = opt(
        True,
        "timm: coarse groups (stem / stages / head) rather than one group per block; causal LMs: their blocks in "
        "about 6 groups (`layer.0-4`, ...) rather than one group per block.",
    )
    ft_lr_scale: float = opt(0.1, "`lp_ft`: every group's LR is scaled by this once all groups train.", gt=0.0, max=1.0)
    phase_lr: str = opt(
        "profile",
        "The LR at the start of each phase: `profile` (`train.lr`, with `lr_decay` "
        "below the head) or `find` (the LR finder sweeps the groups about to train, from "
        "a snapshot restored after, and its suggestion becomes the head's LR, the deeper "
        "groups keeping their `lr_decay` ratios). In the dashboard the curve is shown and "
        "`a` accepts or a value overrides it within `phase_lr_wait_s`; headless applies at "
        "once.",
        choices=("profile", "find"),
    )
    phase_lr_steps: int = opt(
        100,
        '`phase_lr = "find"`: the most steps of each sweep (the LR grows from 1e-7 to 10; '
        "it stops early when the loss diverges); fewer under `phase_lr_budget`.",
        min=10,
    )
    phase_lr_budget: float = opt(
        0.1,
        '`phase_lr = "find"`: the most a sweep may cost, as a share of its phase\'s planned steps (a head '
        "training on cached features sweeps its full `phase_lr_steps`: its steps cost almost nothing); a sweep "
        "that would be shorter than 10 steps is not run (the rule's fallback applies). 0 = no limit. Sweeps "
        "run on the feature cache where the phase has one.",
        min=0.0,
    )
    phase_lr_rule: str = opt(
        "new_groups",
        "`phase_lr = \"find\"`: what a sweep sets. `new_groups`: the first phase's answer is the head's LR; "
        "a later phase keeps the LRs of the groups already training and sweeps the groups it adds alone, "
        "whose LR becomes the answer (no sweep or no answer: the profile's LR for them, `train.lr` with "
        "`lr_decay`), never above the deepest trained group's. `head`: every phase's answer becomes the head's "
        "LR, the deeper groups keeping their ratios (each valley lower than the last, as measured on real data).",
        choices=("new_groups", "head"),
    )
    phase_lr_wait_s: float = opt(
        10.0,
        '`phase_lr = "find"`, dashboard: seconds the curve waits for an answer '
        "before the suggestion applies itself (the engine waits 30 s longer for a "
        "typed value, then applies it anyway).",
        min=0.0,
    )
    adapters: str = opt(
        "",
        "`lora`: unfreezing a group (any strategy, e.g. `progressive`) turns on its LoRA "
        'adapters instead of its weights; "" = the weights themselves.',
        choices=("", "lora"),
    )
    lora_rank: int = opt(8, "LoRA rank r of each adapter.", min=1)
    lora_alpha: float = opt(16.0, "LoRA alpha: the adapter's output is scaled by alpha / r.", gt=0.0)
    lora_dropout: float = opt(0.0, "Dropout on the LoRA branch's input.", min=0.0, max=0.9)
    lora_targets: list = opt(
        [],
        "Module-name suffixes to adapt; empty = the family's default: timm ViT "
        "`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`; ConvNeXt / MLP blocks `mlp.fc1`, "
        "`mlp.fc2`; BERT-like `query`, `value`; EfficientNet / MobileNet blocks their 1x1 "
        "convs `conv_pw`, `conv_pwl`; causal LMs the attention and MLP projections "
        "(`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`; GPT-2 `c_attn`, `c_proj`, "
        "`c_fc`). A classifier's head always trains in full (a causal LM's pretrained LM head does not: it is "
        "frozen unless targeted); depthwise convolutions are skipped.",
    )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = opt(False, "Stop when `metric` has not improved for `patience` epochs.")
    metric: str = opt("val_loss", "The metric watched.", choices=METRICS)
    patience: int = opt(3, "Epochs without improvement before stopping.", min=1)
    min_delta: float = opt(0.0, "The smallest change that counts as improvement.", min=0.0)
