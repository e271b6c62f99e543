"""A causal-LM export (`RUN/export`, or `tuitune export RUN`) reloaded in this fresh process with transformers alone:
greedy generation for the prompts of its `generations.json`, compared token by token with what the run's model
generated when it was exported. One JSON line; exit 1 when any generation differs.

    python benchmarks/export_check.py runs/RUN/export
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(sys.argv[1])
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    record = json.loads((folder / "generations.json").read_text(encoding="utf-8"))
    stops = record["eos_token_ids"]
    config = GenerationConfig(
        max_new_tokens=record["max_new_tokens"],
        do_sample=False,
        pad_token_id=record["pad_token_id"],
        eos_token_id=stops,
    )
    same, shown = 0, []
    for example in record["examples"]:
        with torch.no_grad():
            out = model.generate(torch.tensor([example["prompt_ids"]]), generation_config=config)[0]
        new = out[len(example["prompt_ids"]) :].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
        same += new == example["output_ids"]
        shown.append({"run": example["output"], "here": tokenizer.decode(new, skip_special_tokens=True)})
    result = {
        "export": str(folder),
        "same_tokens": f"{same}/{len(record['examples'])}",
        "chat_template": bool(tokenizer.chat_template),
        "modules": sorted({type(m).__name__ for m in model.modules() if "lora" in type(m).__name__.lower()}),
        "seconds": round(time.perf_counter() - t0, 1),
        "generations": shown[:4],
    }
    print(json.dumps(result))
    return 0 if same == len(record["examples"]) else 1


if __name__ == "__main__":
    sys.exit(main())
