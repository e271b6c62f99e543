"""The profile schema: every key of a run profile, declared once with its default, its documentation and its rules.

`tuitune.config.parse` walks a TOML table against these declarations (so nothing downstream sees an unvalidated
value) and `profiles/README.md` is generated from them (`python -m tuitune.profile_docs --update
profiles/README.md`; a test keeps the two in step). Adding a key is one `opt(...)` line here.

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tuitune.errors import UserError

# What checkpoint_metric, early stopping and the plateau trigger may watch. `val_macro_f1` (classification only):
# the mean of the per-class F1 scores at validation, for imbalanced data where accuracy flatters the majority class.
METRICS = ("val_score", "val_loss", "train_loss", "train_score", "val_macro_f1")


class ProfileError(UserError):
    """A profile that cannot be run; the message is one line naming the file and the dotted key."""


def opt(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] = (),
    min: float | None = None,
    gt: float | None = None,
    max: float | None = None,
    path: bool = False,
) -> Any:
    """Declare a profile key: its default, its user documentation and its validation rules."""
    meta = {"doc": doc, "choices": choices, "min": min, "gt": gt, "max": max, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    source: str = opt(
        "timm", "Where the backbone comes from: `timm` or `hf` (Hugging Face transformers).", choices=("timm", "hf")
    )
    name: str = opt("", "timm model name (e.g. `resnet18`), or for `hf` a local directory or a hub id.")
    pretrained: bool = opt(
        True,
        "Start from pretrained weights: timm's / Hugging Face's, from the standard Hugging "
        "Face cache, downloaded into it first when missing (not with `--offline` or "
        "`HF_HUB_OFFLINE=1`), or a local `hf` folder's own weights. "
        "`false` = random init. Not used when `weights` is set.",
    )
    weights: str = opt(
        "",
        "Local weights file (`.safetensors`, or `.pth`/`.pt` read with `weights_only=True`); "
        "relative to the profile's folder. The classifier head is re-created.",
        path=True,
    )
    keep_head: bool = opt(
        False,
        "With `weights`: also load the file's classifier when its shape fits (to continue "
        "on the same classes). Default: the head is re-created, and the file's head is kept "
        "aside as the *source* head (see `data.source_classes`).",
    )
    kwargs: dict = opt({}, "Extra keyword arguments for `timm.create_model` (e.g. `{ drop_rate = 0.1 }`).")
    img_size: int = opt(0, "Input image size in pixels; 0 uses the backbone's default.", min=0)
    pooling: str = opt(
        "model",
        "Text models: what the head reads. `model` = the model's own (CLS / pooler); "
        "`mean` = the mean over tokens (right for sentence-embedding checkpoints).",
        choices=("model", "mean"),
    )
    max_length: int = opt(
        128,
        "Text models: the most tokens per example (longer ones are truncated); each batch "
        "is padded only to its own longest text.",
        min=1,
    )
    trust_remote_code: bool = opt(False, "Allow a Hugging Face checkpoint to run its own Python code.")


@dataclass(frozen=True)
class DataConfig:
    kind: str = opt(
        "digits",
        "`digits` (the UCI handwritten digits shipped with tuitune), `image_folder`, "
        "`text` (CSV or JSONL) or `synthetic` (random, for tests).",
        choices=("digits", "image_folder", "text", "synthetic"),
    )
    path: str = opt(
        "",
        "`image_folder`: a root with `train/`, `val/` (and `test/`) folders, or one folder of "
        "class subfolders to split. `text`: the training file.",
        path=True,
    )
    val_path: str = opt("", "`text`: a separate validation file (else `val_fraction` of `path`).", path=True)
    test_path: str = opt("", "`text`: an optional test file, evaluated once at the end.", path=True)
    val_fraction: float = opt(0.2, "Fraction held out for validation when there is no separate split.", gt=0.0, max=0.9)
    test_fraction: float = opt(0.0, "Fraction held out as a test split (evaluated once at the end).", min=0.0, max=0.9)
    classes: list = opt([], "`digits`: the subset of classes to use (e.g. `[5, 6, 7, 8, 9]`); empty = all.")
    source_classes: list = opt(
        [],
        "`digits`: the pretraining task's classes, in its head's order (the demo: "
        "`[0, 1, 2, 3, 4]`). Their val accuracy, scored with the weights file's own head, "
        "is tracked every epoch, so forgetting shows as it happens.",
    )
    text_column: str = opt("text", "`text`: the column (CSV) or field (JSONL) holding the text.")
    label_column: str = opt("label", "`text`: the column or field holding the label.")
    num_samples: int = opt(256, "`synthetic`: number of examples.", min=8)
    num_classes: int = opt(4, "`synthetic`: number of classes.", min=2)
    batch_size: int = opt(32, "Examples per training step.", min=1)
    batch_scope: str = opt(
        "rank",
        "Several ranks (`--nproc`, torchrun): `rank` = `batch_size` examples per rank "
        "per step (the global batch grows with the world size, as in PyTorch's DDP); "
        "`global` = `batch_size` examples per step over all ranks (divided among them; "
        "the run then sees the same batches as one process). One process: no effect.",
        choices=("rank", "global"),
    )
    num_workers: int = opt(-1, "DataLoader worker processes; -1 picks from the CPU count (0 on CPU-only runs).", min=-1)
    group_by_length: bool = opt(
        False,
        "Text: batch texts of similar length together (transformers' "
        "`LengthGroupedSampler`: shuffled, then sorted by length within groups of 50 "
        "batches; seeded, and replayed exactly on resume), so batches, which are "
        "always cut to their longest text, carry less padding.",
    )
    pad_to_max_length: bool = opt(
        False,
        "Text: pad every batch to `model.max_length`, as before batches were "
        "cut to their longest text: static shapes (e.g. for `train.compile`), and "
        "the baseline for measuring what dynamic padding saves.",
    )
    cache_images: str = opt(
        "auto",
        "`image_folder`: keep the decoded, resized images in memory so an epoch does "
        "not decode every file again. `auto`: when they fit in a quarter of the free "
        "RAM; `on`: always; `off`: never. A split with random train-time augmentation "
        "is never cached (its transform differs every epoch).",
        choices=("auto", "on", "off"),
    )


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


@dataclass(frozen=True)
class StrategyConfig:
    kind: str = opt(
        "full",
        "`full` (everything trains), `head_only` (linear probe), `groups` (the named "
        "groups train), `progressive` (phases from the head downwards) or `lp_ft` (LP-FT, Kumar "
        "et al. 2022: the head alone until `trigger` fires, then every group at "
        "`ft_lr_scale` times the LR) or `lora` (LoRA adapters through `peft` in every group, the "
        "head in full; base weights frozen).",
        choices=("full", "head_only", "groups", "progressive", "lp_ft", "lora"),
    )
    groups: list = opt([], "`groups`: names of the trainable layer groups (see `tuitune layers`).")
    groups_per_phase: int = opt(1, "`progressive`: layer groups unfrozen at each phase change.", min=1)
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
    freeze_dropout: bool = opt(
        True,
        "Run frozen layer groups without dropout or stochastic depth (their modules "
        "in eval mode): their output is then deterministic, and cacheable.",
    )
    coarse: bool = opt(True, "timm: coarse groups (stem / stages / head) rather than one group per block.")
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
        '`phase_lr = "find"`: steps of each sweep (the LR grows from 1e-7 to 10; '
        "it stops early when the loss diverges).",
        min=10,
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
        "convs `conv_pw`, `conv_pwl`. The head always trains in full; depthwise "
        "convolutions are skipped.",
    )


@dataclass(frozen=True)
class LossConfig:
    kind: str = opt(
        "cross_entropy",
        "`cross_entropy`, `focal` (softmax focal loss), `mse` (regression on numeric "
        "labels: RMSE and MAE are reported instead of accuracy) or `bce` (multi-label: "
        "micro-F1 and mAP are reported).",
        choices=("cross_entropy", "focal", "mse", "bce"),
    )
    label_smoothing: float = opt(0.0, "Label smoothing for `cross_entropy` / `focal` / `bce`.", min=0.0, max=0.5)
    class_weights: list = opt([], "Per-class loss weights, one per class in label order; empty = none.")
    balance_classes: bool = opt(False, "Weight classes by inverse frequency in the training set (N / (K n_c)).")
    focal_gamma: float = opt(2.0, "`focal`: the focusing exponent gamma (0 = cross-entropy).", min=0.0)
    focal_alpha: float = opt(
        0.25, "`focal`: the scale alpha of the paper (1.0 with gamma 0 = cross-entropy).", gt=0.0, max=1.0
    )


@dataclass(frozen=True)
class RegularizationConfig:
    l1: float = opt(0.0, "L1 penalty: lambda * sum |w| over trainable weights (not norms or biases).", min=0.0)
    l2_sp: float = opt(
        0.0,
        "L2-SP (Li et al. 2018): alpha/2 * ||w - w_pretrained||^2 over trainable backbone "
        "weights: decay toward the pretrained weights, against forgetting.",
        min=0.0,
    )
    drop_rate: float = opt(
        0.0, "Dropout before the classifier (timm `drop_rate`; Hugging Face: the classifier dropout).", min=0.0, max=0.9
    )
    drop_path_rate: float = opt(0.0, "Stochastic depth (timm `drop_path_rate`).", min=0.0, max=0.9)
    hidden_dropout: float = opt(
        -1.0,
        "Hugging Face: the hidden-layer dropout (`hidden_dropout_prob` / `dropout`); -1 keeps the checkpoint's.",
        min=-1.0,
        max=0.9,
    )


@dataclass(frozen=True)
class AugmentConfig:
    train_transform: str = opt(
        "eval",
        "Images: `eval` (the deterministic resize + normalise, no augmentation) or "
        "`timm` (timm's `create_transform(is_training=True)`: random resized crop "
        "and the keys below).",
        choices=("eval", "timm"),
    )
    scale_min: float = opt(0.08, "`timm`: the smallest crop area of the random resized crop.", gt=0.0, max=1.0)
    hflip: float = opt(0.5, "`timm`: horizontal flip probability.", min=0.0, max=1.0)
    vflip: float = opt(0.0, "`timm`: vertical flip probability.", min=0.0, max=1.0)
    auto_augment: str = opt("", "`timm`: a RandAugment / AutoAugment string, e.g. `rand-m9-mstd0.5`.")
    color_jitter: float = opt(0.0, "`timm`: color jitter strength.", min=0.0, max=1.0)
    re_prob: float = opt(0.0, "`timm`: random erasing probability.", min=0.0, max=1.0)
    mixup: float = opt(0.0, "Mixup alpha (timm's `Mixup`); 0 = off.", min=0.0)
    cutmix: float = opt(0.0, "CutMix alpha (timm's `Mixup`); 0 = off.", min=0.0)


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = opt(
        "",
        "Knowledge distillation (Hinton et al. 2015): `self` (a frozen copy of the starting "
        "model, against forgetting, as in Learning without Forgetting), a tuitune run directory "
        "(its best checkpoint, same classes), or a timm model name (with `teacher_weights`). "
        "Empty = off.",
    )
    teacher_weights: str = opt("", "With a timm `teacher` name: its weights file, trained on these classes.", path=True)
    alpha: float = opt(0.5, "Loss = (1 - alpha) task + alpha T^2 KL(teacher || student).", min=0.0, max=1.0)
    temperature: float = opt(4.0, "The softmax temperature T (timm uses 4.0).", gt=0.0)


@dataclass(frozen=True)
class CompressConfig:
    sparsity: float = opt(
        0.0,
        "After training: global magnitude pruning of conv / linear weights to this fraction of zeros; 0 = off.",
        min=0.0,
        max=0.99,
    )
    quantize: bool = opt(False, "After training: dynamic int8 quantization of the linear layers (CPU deployment).")
    fine_tune_epochs: int = opt(0, "Epochs of fine-tuning after pruning, masks held.", min=0)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = opt(False, "Stop when `metric` has not improved for `patience` epochs.")
    metric: str = opt("val_loss", "The metric watched.", choices=METRICS)
    patience: int = opt(3, "Epochs without improvement before stopping.", min=1)
    min_delta: float = opt(0.0, "The smallest change that counts as improvement.", min=0.0)


@dataclass(frozen=True)
class RunProfile:
    name: str = opt("", "Run name; defaults to the file name without `.toml`.")
    description: str = opt("", "One line shown in the picker.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    source_path: str = field(default="", metadata={"internal": True})


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A declared key's default (a fresh one where it is made by a factory: lists, tables, sections)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name}: declared without a default")


SECTIONS: dict[str, type] = {
    f.name: type(field_default(f))
    for f in dataclasses.fields(RunProfile)
    if f.default_factory is not dataclasses.MISSING  # the sections
}
