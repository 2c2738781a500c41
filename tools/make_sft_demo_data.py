"""Write a synthetic instruction task for the fine-tuning demo (docs/finetune_demo.md).

    python tools/make_sft_demo_data.py data/sft_demo                 # reverse task, seed 0
    python tools/make_sft_demo_data.py data/sft_demo --task sort --train 4000 --heldout 200

Tasks (words are random lowercase strings, so nothing is memorised from pretraining):

* ``reverse``: ``"reverse: <word>"`` -> the word reversed (4-7 letters, no palindromes);
* ``sort``: ``"sort: <w1> <w2> ..."`` -> the 3-5 words in alphabetical order.

The held-out words never occur in a training example (disjoint vocabularies), so a
correct held-out answer is the learned rule, not recall. Writes, into OUT_DIR:
``train.jsonl`` / ``heldout.jsonl`` as ``{"prompt", "response"}`` rows and
``train_messages.jsonl`` / ``heldout_messages.jsonl`` with the same examples as
``{"messages": [...]}`` rows (a system message, the user prompt, the answer).
Everything is seeded: the same arguments write the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path

SYSTEM = "Follow the instruction exactly. Answer with the result only."


def random_words(rng: random.Random, n: int, min_len: int, max_len: int, taken: set[str]) -> list[str]:
    """``n`` distinct new lowercase words (no palindromes), none of them in ``taken``."""
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))
        if w != w[::-1] and w not in taken:
            taken.add(w)
            words.append(w)
    return words


def examples(task: str, rng: random.Random, words: list[str], n: int) -> list[dict[str, str]]:
    if task == "reverse":
        picked = rng.sample(words, n) if n <= len(words) else [rng.choice(words) for _ in range(n)]
        return [{"prompt": f"reverse: {w}", "response": w[::-1]} for w in picked]
    rows = []
    for _ in range(n):
        ws = rng.sample(words, rng.randint(3, 5))
        rows.append({"prompt": "sort: " + " ".join(ws), "response": " ".join(sorted(ws))})
    return rows


def as_messages(row: dict[str, str]) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]},
                         {"role": "assistant", "content": row["response"]}]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="folder for train.jsonl, heldout.jsonl and their *_messages.jsonl variants")
    p.add_argument("--task", default="reverse", choices=["reverse", "sort"])
    p.add_argument("--train", type=int, default=4000, help="training examples")
    p.add_argument("--heldout", type=int, default=200, help="held-out examples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.train < 1 or args.heldout < 1:
        p.error("--train and --heldout must be >= 1")
    rng = random.Random(args.seed)
    min_len, max_len = (4, 7) if args.task == "reverse" else (3, 6)
    taken: set[str] = set()
    # reverse: one held-out word per example; sort: a pool of words the training never sees
    n_held_words = args.heldout if args.task == "reverse" else max(20, args.heldout // 2)
    held_words = random_words(rng, n_held_words, min_len, max_len, taken)
    n_train_words = args.train if args.task == "reverse" else max(50, args.train // 4)
    train_words = random_words(rng, n_train_words, min_len, max_len, taken)
    train_rows = examples(args.task, rng, train_words, args.train)
    held_rows = examples(args.task, rng, held_words, args.heldout)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("heldout", held_rows)):
        write_jsonl(out / f"{name}.jsonl", rows)
        write_jsonl(out / f"{name}_messages.jsonl", [as_messages(r) for r in rows])
    print(f"{args.task}: {len(train_rows)} train / {len(held_rows)} held-out examples "
          f"({len(train_words)} / {len(held_words)} disjoint words) -> {out}/{{train,heldout}}{{,_messages}}.jsonl")
    print(f"  e.g. {json.dumps(held_rows[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
