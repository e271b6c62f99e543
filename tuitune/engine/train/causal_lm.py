"""The causal-LM task's objective and export (`model.task = "causal_lm"`; the model is `engine/model/causal_lm.py`,
the data `engine/data/chat.py`).

What a step minimises: the mean cross-entropy of the next token over the response tokens (the labels come shifted
and masked: -100 is not scored). How a run is scored: next-token accuracy on the response tokens (the task's score,
`token_acc`), the loss and its perplexity, and with `[generate] exact_match = N` the exact match of greedy
generations with the references on the first N validation examples (`val_exact_match`). At every evaluation the
first `[generate] samples` of them are generated (the same generations: no second pass) and told as a
`SamplesGenerated` event; `GenerateSamples` (the `g` key) asks for them at once.

The export is `save_pretrained` of the model (LoRA already merged by the caller) and of its tokenizer (its chat
template with it), and `generations.json`: validation prompts and the exported model's greedy tokens, which a fresh
process with transformers alone must reproduce.
"""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.data.batches import to_device
from tuitune.engine.data.chat import IGNORE, Row, pad_id, val_prompts
from tuitune.engine.data.kinds import build_datasets
from tuitune.engine.events import SAMPLE_CHARS, Event, SamplesGenerated
from tuitune.engine.model.causal_lm import CausalLM, generation_eos, greedy
from tuitune.engine.model.hf import _quiet_transformers
from tuitune.engine.train.regularize import Penalty, build_ema
from tuitune.engine.train.scoring import Scorer
from tuitune.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tuitune.config import RunProfile
    from tuitune.engine.model.groups import Backbone
    from tuitune.engine.train.parts import RunParts

__all__ = ["CausalLMLoss", "CausalObjective", "exact_match", "normalize_answer", "write_causal_export"]

EXPORT_SAMPLES = 4  # generations written with an export made right after training
MAX_EXPORT_SAMPLES = 32  # ... and at most, whatever `tuitune export --sample` asks (each is a generation)


class CausalLMLoss(nn.Module):
    """Cross-entropy of the next token over the scored positions (labels already shifted, -100 not scored)."""

    def __init__(self, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.smoothing, self.reduction = smoothing, reduction

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float().flatten(0, -2),
            y.flatten(),
            ignore_index=IGNORE,
            label_smoothing=self.smoothing,
            reduction=self.reduction,
        )


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(output: str, reference: str) -> bool:
    return normalize_answer(output) == normalize_answer(reference)


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


class CausalObjective:
    """The causal-LM task's objective (the methods of `tasks.TaskObjective`)."""

    def __init__(self, profile: RunProfile, parts: RunParts, emit: Callable[[Event], None] | None = None) -> None:
        self.profile, self.device, self.dist = profile, parts.device, parts.dist
        self.scorer = Scorer("token")
        self.train_loss = CausalLMLoss(profile.loss.label_smoothing)
        self.eval_loss = CausalLMLoss(reduction="sum")
        self.penalty = Penalty(profile.regularization, parts.model, parts.groups)
        self.ema = build_ema(parts.model, profile.train.ema_decay)
        self.model = parts.model
        assert isinstance(self.model, CausalLM), "the causal-LM task builds a CausalLM"
        tokenizer = parts.backbone.tokenizer
        self.tokenizer, self.pad, self.eos = tokenizer, pad_id(tokenizer), generation_eos(self.model, tokenizer)
        self.gen = profile.generate
        self.prompts = val_prompts(parts.bundle.val, max(self.gen.exact_match, self.gen.samples))
        self.autocast = parts.autocast
        self._fresh: tuple[dict[str, Any], ...] = ()  # this evaluation's samples, told after its EpochEnded
        self._last: tuple[dict[str, Any], ...] = ()

    # ------------------------------------------------------------------------------------------------ a step
    def targets(self, x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return x, y

    def forward(self, model: nn.Module, x: Any) -> tuple[torch.Tensor, Any]:
        return model(x), None

    def loss(self, out: torch.Tensor, y: torch.Tensor, x: Any, aux: Any) -> torch.Tensor:
        total = self.train_loss(out, y)
        if self.penalty.active:
            total = total + self.penalty()
        return total

    def after_step(self, model: nn.Module, global_step: int) -> None:
        if self.ema is not None:
            self.ema.update(model, step=global_step)

    def window_tensors(self) -> list[torch.Tensor]:
        return []

    def window_extra(self, values: list[float]) -> dict[str, float]:
        return {}

    # ----------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: Any, parts: RunParts, *, thumbs: bool = True, sharded: bool = False
    ) -> dict[str, Any]:
        """Token-weighted loss (its perplexity in `extra`) and next-token accuracy over the response tokens; one
        host sync. Leaves the model in eval mode, as the classifier's does."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        sums = torch.zeros(self.scorer.width, device=self.device)  # correct, scored tokens
        for x, y in loader:
            x, y = to_device(x, self.device), y.to(self.device, non_blocking=True)
            with parts.autocast():
                out = model(x)
            loss_sum += self.eval_loss(out, y)
            sums += self.scorer.batch_sums(out, y)
        head = torch.cat([loss_sum.reshape(1), sums]).double()
        if sharded:
            head = self.dist.sum(head)
        loss_total, correct, count = head.tolist()
        loss = loss_total / count if count else math.nan
        return {
            "loss": loss,
            "score": correct / count if count else math.nan,
            "extra": {"perplexity": math.exp(min(loss, 700.0)) if count else math.nan},
            "per_class": {},
            "report": {},
        }

    def epoch_extras(self, val: dict[str, Any], parts: RunParts) -> dict[str, float]:
        """val_perplexity, the EMA model's val metrics, and (the generations) val_exact_match."""
        out = {f"val_{k}": v for k, v in val.get("extra", {}).items()}
        if self.ema is not None:
            ema = self.evaluate(self.ema.module, parts.val_loader, parts, sharded=parts.dist.active)
            out.update(ema_val_loss=ema["loss"], ema_val_score=ema["score"])
        samples = self.generate(len(self.prompts))
        n = self.gen.exact_match
        if n:
            scored = samples[:n]
            out["val_exact_match"] = sum(s["match"] for s in scored) / len(scored) if scored else math.nan
        self._fresh = tuple(samples[: self.gen.samples])
        return out

    def generate(self, n: int) -> list[dict[str, Any]]:
        """Greedy generations for the first `n` fixed validation prompts, beside their references."""
        chosen = self.prompts[:n]
        if not chosen:
            return []
        outputs = greedy(self.model, [p for p, _ in chosen], self.gen.max_new_tokens, self.pad, self.eos)
        return [
            _sample(row, self.tokenizer.decode(ids, skip_special_tokens=True)) for (_, row), ids in zip(chosen, outputs)
        ]

    def epoch_events(self, epoch: int, global_step: int) -> list[Event]:
        if not self._fresh:
            return []
        self._last, self._fresh = self._fresh, ()
        return [SamplesGenerated(samples=self._last, epoch=epoch, global_step=global_step)]

    def generate_now(self, parts: RunParts, epoch: int, global_step: int) -> tuple[str, Event | None]:
        if not self.gen.samples:
            return "nothing to generate: generate.samples = 0", None
        if not self.prompts:
            return "nothing to generate: the validation set is empty", None
        self._last = tuple(self.generate(self.gen.samples))
        hits = sum(s["match"] for s in self._last)
        detail = f"{len(self._last)} samples, {hits} matching their reference"
        return detail, SamplesGenerated(samples=self._last, epoch=epoch, global_step=global_step, reason="asked")

    def last_samples(self) -> tuple[dict[str, Any], ...]:
        return self._last


def _sample(row: Row, output: str) -> dict[str, Any]:
    return {
        "prompt": _cut(row.prompt[-1]["content"]),
        "reference": _cut(row.response),
        "output": _cut(output),
        "match": exact_match(output, row.response),
    }


# ------------------------------------------------------------------------------------------------------ export


def write_causal_export(
    backbone: Backbone, profile: RunProfile, classes: tuple[str, ...], out_dir: Path, sample: int
) -> dict[str, Any]:
    """`save_pretrained` of the model and its tokenizer (with its chat template), the profile, and the greedy
    generations of `sample` validation prompts (`EXPORT_SAMPLES` when 0, at most `MAX_EXPORT_SAMPLES`)."""
    model = backbone.model
    assert isinstance(model, CausalLM), "the causal-LM task exports a CausalLM"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)), encoding="utf-8")
    with _quiet_transformers():  # no progress bars over a dashboard
        model.hf.save_pretrained(str(out_dir))
        backbone.tokenizer.save_pretrained(str(out_dir))
    path = str(out_dir.resolve())
    return {
        "dir": path,
        "source": profile.model.source,
        "task": "causal_lm",
        "classes": [],
        "load": f'transformers.AutoModelForCausalLM.from_pretrained("{path}"), AutoTokenizer.from_pretrained(same)',
        "sample": _write_generations(backbone, profile, out_dir, min(sample or EXPORT_SAMPLES, MAX_EXPORT_SAMPLES)),
    }


def _write_generations(backbone: Backbone, profile: RunProfile, out_dir: Path, n: int) -> dict[str, Any]:
    """`generations.json`: validation prompts and the exported model's greedy tokens (and what stops them), for a
    fresh-process check; skipped, with the reason, when the run's data is no longer readable."""
    model, tokenizer = backbone.model, backbone.tokenizer
    assert isinstance(model, CausalLM)
    try:
        bundle = build_datasets(
            profile.data,
            task="text",
            data_config={},
            tokenizer=tokenizer,
            max_length=profile.model.max_length,
            seed=profile.train.seed,
        )
    except UserError as e:
        return {"written": False, "reason": str(e)}
    chosen = val_prompts(bundle.val, n)
    pad, eos = pad_id(tokenizer), generation_eos(model, tokenizer)
    was = model.training
    outputs = greedy(model, [p for p, _ in chosen], profile.generate.max_new_tokens, pad, eos)
    model.train(was)
    examples = []
    for (prompt, row), ids in zip(chosen, outputs):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        examples.append(
            {"prompt_ids": prompt, "output_ids": ids, "output": text, "reference": row.response, "row": row.number}
        )
    record = {
        "max_new_tokens": profile.generate.max_new_tokens,
        "pad_token_id": pad,
        "eos_token_ids": eos,
        "examples": examples,
    }
    (out_dir / "generations.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    hits = sum(exact_match(e["output"], e["reference"]) for e in examples)
    return {
        "written": True,
        "file": "generations.json",
        "examples": len(examples),
        "exact_match": hits / len(examples) if examples else math.nan,
    }
