"""SMS spam (`../shared/data/sms_spam`) recast as instructions for a chat model, as JSON Lines the `chat` data kind
reads: {"prompt": "Is this message spam? Answer yes or no.\\n\\n<the message>", "response": "yes" | "no", "label"}.

A seeded, stratified subset (each split keeps its spam share), without the messages longer than `--max-chars`
(so every row fits `model.max_length`: the chat kind refuses a row whose response would be cut off). Prints what it
wrote, as one JSON line. The profile `profiles/smollm2-sms.toml` reads the files it writes by default.

    python benchmarks/sms_instruct.py                     # 160 train, 60 val, messages up to 160 characters
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sms_spam"
if not DATA.is_dir():  # a worktree: /work/wt/NAME -> /work/shared
    DATA = ROOT.parents[1] / "shared" / "data" / "sms_spam"
INSTRUCTION = "Is this message spam? Answer yes or no."


def subset(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """`n` rows (all when 0), each label in its share of the split, in a seeded order."""
    if not n or n >= len(rows):
        return rng.sample(rows, len(rows))
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    chosen = []
    for label in sorted(by_label):
        group = by_label[label]
        chosen += rng.sample(group, max(1, round(n * len(group) / len(rows))))
    return rng.sample(chosen, len(chosen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=160, help="training examples (0 = all)")
    ap.add_argument("--val", type=int, default=60, help="validation examples (0 = all)")
    ap.add_argument("--max-chars", type=int, default=160, help="leave out longer messages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "sms-instruct")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    for split, n in (("train", args.train), ("val", args.val)):
        with open(args.data / f"{split}.csv", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if len(r["text"]) <= args.max_chars]
        chosen = subset(rows, n, rng)
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in chosen:
                answer = "yes" if r["label"] == "spam" else "no"
                prompt = f"{INSTRUCTION}\n\n{r['text']}"
                f.write(json.dumps({"prompt": prompt, "response": answer, "label": r["label"]}) + "\n")
        report[split] = {"rows": len(chosen), "spam": sum(r["label"] == "spam" for r in chosen), "of": len(rows)}
    print(json.dumps({"out": str(args.out), "max_chars": args.max_chars, "seed": args.seed, **report}))


if __name__ == "__main__":
    main()
