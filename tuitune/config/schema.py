"""The profile schema: every key of a run profile, declared once with its default, its documentation and its rules.

`tuitune.config.parse` walks a TOML table against these declarations (so nothing downstream sees an unvalidated
value) and `profiles/README.md` is generated from them (`python -m tuitune.profile_docs --update
profiles/README.md`; a test keeps the two in step). Adding a key is one `opt(...)` line (`tuitune/config/declare.py`)
in its section: here, or for the training loop's sections in `tuitune/config/loop.py`.

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tuitune.config.declare import field_default, opt
from tuitune.config.loop import EarlyStoppingConfig, StrategyConfig, TrainConfig
from tuitune.config.outputs import NotifyConfig, ReportConfig
from tuitune.config.tasks import TASK_RULES


@dataclass(frozen=True)
class ModelConfig:
    task: str = opt(
        "classify",
        "What the model learns: "
        + "; ".join(f"`{name}`: {rules.about}" for name, rules in TASK_RULES.items())
        + ". Each task has its own model, objective, metrics, layer groups and export.",
        choices=tuple(TASK_RULES),
    )
    source: str = opt(
        "timm", "Where the backbone comes from: `timm` or `hf` (Hugging Face transformers).", choices=("timm", "hf")
    )
    name: str = opt(
        "",
        "timm model name (e.g. `resnet18`), or for `hf` a local directory or a hub id; a causal LM's folder may "
        "also be the folder of an installed Python package, `python:PACKAGE` (a model shipped as a wheel).",
    )
    gguf_file: str = opt(
        "",
        "`causal_lm`: a GGUF checkpoint file in the `name` folder, loaded through transformers' own GGUF support "
        "(dequantized to float32; needs the `gguf` package). Its config and tokenizer (chat template included) "
        "come from the file.",
    )
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
        "Text models: the most tokens per example (longer ones are truncated; a chat row whose prompt and "
        "response do not fit is refused, naming the row); each batch is padded only to its own longest text "
        "(`data.packing`: the length of a packed row).",
        min=1,
    )
    trust_remote_code: bool = opt(False, "Allow a Hugging Face checkpoint to run its own Python code.")


@dataclass(frozen=True)
class DataConfig:
    kind: str = opt(
        "digits",
        "`digits` (the UCI handwritten digits shipped with tuitune), `image_folder`, "
        "`text` (CSV or JSONL), `chat` (`causal_lm`: CSV or JSONL rows of a prompt and its response, or of chat "
        "messages), `hf` (a Hugging Face dataset: a hub id or a local folder or file, read with `datasets`; "
        "`pip install 'tuitune[hf]'`) or `synthetic` (random, for tests).",
        choices=("digits", "image_folder", "text", "chat", "hf", "synthetic"),
    )
    path: str = opt(
        "",
        "`image_folder`: a root with `train/`, `val/` (and `test/`) folders, or one folder of "
        "class subfolders to split. `text`, `chat`: the training file. `hf` (instead of `name`): a "
        "`save_to_disk` folder, a folder of data files, or one parquet, arrow, csv or json file.",
        path=True,
    )
    name: str = opt(
        "",
        "`hf`: the dataset's hub id (`org/name`), downloaded into the Hugging Face cache with "
        "progress (not with `--offline`: then the cache only).",
    )
    config: str = opt("", "`hf`: the dataset's configuration (subset), when it has several.")
    revision: str = opt("", "`hf`: a branch, tag or commit of the hub dataset; empty = `main`.")
    split: str = opt("train", "`hf`: the split to train on.")
    val_split: str = opt("", "`hf`: the validation split; empty = `val_fraction` of `split`, stratified by class.")
    test_split: str = opt("", "`hf`: an optional test split; empty = `test_fraction` of `split`.")
    val_path: str = opt("", "`text`, `chat`: a separate validation file (else `val_fraction` of `path`).", path=True)
    test_path: str = opt("", "`text`, `chat`: an optional test file, evaluated once at the end.", path=True)
    val_fraction: float = opt(0.2, "Fraction held out for validation when there is no separate split.", gt=0.0, max=0.9)
    test_fraction: float = opt(0.0, "Fraction held out as a test split (evaluated once at the end).", min=0.0, max=0.9)
    classes: list = opt([], "`digits`: the subset of classes to use (e.g. `[5, 6, 7, 8, 9]`); empty = all.")
    source_classes: list = opt(
        [],
        "`digits`: the pretraining task's classes, in its head's order (the demo: "
        "`[0, 1, 2, 3, 4]`). Their val accuracy, scored with the weights file's own head, "
        "is tracked every epoch, so forgetting shows as it happens.",
    )
    text_column: str = opt(
        "",
        "The column holding the text. `text`: the CSV column or JSONL field (empty = `text`). "
        "`hf`: empty = the dataset's one string column.",
    )
    label_column: str = opt(
        "",
        "The column holding the label. `text`: empty = `label`. `hf`: empty = the dataset's "
        "`ClassLabel` column (its names are the classes), else a column named `label` or `labels`.",
    )
    image_column: str = opt("", "`hf`: the column holding the images; empty = the dataset's one `Image` column.")
    prompt_column: str = opt(
        "prompt", "`chat`: the column (CSV) or field (JSONL) holding the prompt (the user's turn)."
    )
    response_column: str = opt("response", "`chat`: the column or field holding the response the model learns.")
    messages_column: str = opt(
        "",
        "`chat`: a field holding the whole conversation as chat messages (`[{role, content}, ...]`, a JSON string "
        "in CSV) instead of a prompt and a response: the last message, the assistant's, is the response; the "
        'ones before it are the prompt. "" = prompt and response columns.',
    )
    packing: bool = opt(
        False,
        "`chat`: pack several training examples into each row of `model.max_length` tokens (first-fit "
        "decreasing; each keeps its own positions and attends only to itself), so no step computes padding.",
    )
    num_samples: int = opt(256, "`synthetic`: number of examples.", min=8)
    num_classes: int = opt(4, "`synthetic`: number of classes.", min=2)
    batch_size: int | str = opt(
        32,
        'Examples per training step, or `"auto"`: the largest batch whose every phase fits in memory (CUDA: '
        "probed with real steps; CPU: by the memory plan, under `train.memory_gb`).",
        min=1,
        words=("auto",),
    )
    batch_scope: str = opt(
        "rank",
        "Several ranks (`--nproc`, torchrun): `rank` = `batch_size` examples per rank "
        "per step (the global batch grows with the world size, as in PyTorch's DDP); "
        "`global` = `batch_size` examples per step over all ranks (divided among them; "
        "the run then sees the same batches as one process). One process: no effect.",
        choices=("rank", "global"),
    )
    num_workers: int = opt(
        -1,
        "DataLoader worker processes; -1 picks from the cores this process may use, shared among the ranks on "
        "this machine, less one for the training process (at most 16; 0 on CPU-only runs, where training uses "
        "every core).",
        min=-1,
    )
    prefetch_factor: int = opt(
        2,
        "Batches each DataLoader worker prepares ahead (torch's `prefetch_factor`); raise it when the step bar "
        "shows data waits that come in bursts. Ignored without workers.",
        min=1,
        max=64,
    )
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
class GenerateConfig:
    samples: int = opt(
        3,
        "`causal_lm`: greedy generations for this many fixed validation prompts, shown beside their references "
        "at every evaluation (and with `g`); 0 = none.",
        min=0,
        max=16,
    )
    exact_match: int = opt(
        0,
        "`causal_lm`: score the greedy generations of the first N validation examples by exact match with their "
        "responses (case, punctuation, articles and spacing ignored, as SQuAD's): `val_exact_match`, which "
        "`train.checkpoint_metric`, early stopping, the plateau trigger and sweeps may watch; 0 = off.",
        min=0,
    )
    max_new_tokens: int = opt(32, "`causal_lm`: the most tokens a generation adds.", min=1, max=1024)


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
    report: ReportConfig = field(default_factory=ReportConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    source_path: str = field(default="", metadata={"internal": True})


SECTIONS: dict[str, type] = {
    f.name: type(field_default(f))
    for f in dataclasses.fields(RunProfile)
    if f.default_factory is not dataclasses.MISSING  # the sections
}
