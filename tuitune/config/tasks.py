"""What each `model.task` accepts in a profile: the profile side of the task table.

The engine's table (`tuitune.engine.train.tasks.TASKS`) says how a task's model is built, trained, scored and
exported; this one says which profiles make sense for it, so a profile that does not is refused at the edge with one
line naming the key, before anything is built: which data kinds the task reads, which model sources build it, which
metrics its runs report (what `checkpoint_metric`, early stopping and the plateau trigger may watch), and which keys
it has no use for (refused unless left at their defaults: a key is used or refused, never silently ignored). A new
task is one entry here and one in the engine's table (a test keeps their names in step).

Imported by the picker: it must stay free of torch, timm and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMON_METRICS = ("val_score", "val_loss", "train_loss", "train_score")


@dataclass(frozen=True)
class TaskRules:
    data_kinds: tuple[str, ...]  # the `data.kind`s it reads
    sources: tuple[str, ...]  # the `model.source`s that build it
    metrics: tuple[str, ...]  # the metrics its runs report, beyond COMMON_METRICS
    unused: tuple[str, ...] = ()  # dotted keys it does not read: refused unless at their defaults
    about: str = ""  # one line for the key's documentation
    needs: tuple[tuple[str, str], ...] = ()  # (metric, the dotted key that must be > 0 for the task to report it)


TASK_RULES: dict[str, TaskRules] = {
    "classify": TaskRules(
        data_kinds=("digits", "image_folder", "text", "hf", "synthetic"),
        sources=("timm", "hf"),
        metrics=("val_macro_f1",),
        unused=(
            "model.gguf_file",
            "data.prompt_column",
            "data.response_column",
            "data.messages_column",
            "data.packing",
            "generate.samples",
            "generate.exact_match",
            "generate.max_new_tokens",
        ),
        about="a classifier (or regressor, multi-label tagger: `loss.kind`) on images or texts",
    ),
    "causal_lm": TaskRules(
        data_kinds=("chat",),
        sources=("hf",),
        metrics=("val_exact_match",),
        needs=(("val_exact_match", "generate.exact_match"),),
        unused=(
            "model.weights",
            "model.keep_head",
            "model.img_size",
            "model.pooling",
            "data.text_column",
            "data.label_column",
            "data.classes",
            "data.source_classes",
            "loss.kind",
            "loss.class_weights",
            "loss.balance_classes",
            "regularization.drop_rate",
            "distill.teacher",
            "compress.sparsity",
            "compress.quantize",
        ),
        about="supervised fine-tuning of a causal language model (`AutoModelForCausalLM`) on chat data: the loss "
        "covers the responses only; next-token accuracy, perplexity and greedy samples",
    ),
}

TASKS = tuple(TASK_RULES)
METRICS = COMMON_METRICS + tuple(dict.fromkeys(m for rules in TASK_RULES.values() for m in rules.metrics))
