"""Build ``eval_sets/sst2/unlabeled.jsonl``: SST-2 train texts, labels dropped, for distillation.

The texts are a seeded sample (seed 0) of the SST-2 train split in ``../shared/datasets`` that
leaves out the eval set's few-shot pool, cases and static examples. Only ``id`` and ``text`` are
kept: the teacher labels them, and gold labels are never used for training.

SST-2's train rows are phrases cut from the parse trees of train sentences (median 7 words,
many fragments such as ", and motorcycles"), while the eval cases are whole sentences (median
19). Training texts should look like the traffic the student will serve, so only sentence-like
rows are kept: at least ``--min-words`` words, and not contained in a longer candidate (a phrase
of a sentence that is itself a candidate). That leaves about 4,100 texts, median 18 words.

    python scripts/build_unlabeled.py [--n 2000] [--min-words 10] [--datasets ../shared/datasets]
                                      [--out eval_sets/sst2/unlabeled.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _drop_sub_phrases(candidates: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Keep one row per sentence: drop texts that occur inside a longer (kept) candidate."""
    kept: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, text in sorted(candidates, key=lambda c: (-len(c[1]), c[0])):
        if text in seen or any(text in longer for _, longer in kept):
            continue
        seen.add(text)
        kept.append((i, text))
    return sorted(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="texts to sample (at most all)")
    ap.add_argument("--min-words", type=int, default=10, help="0 keeps every row")
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, help="default: eval_sets/sst2/unlabeled.jsonl")
    args = ap.parse_args()
    es = REPO / "eval_sets" / "sst2"
    out = args.out or es / "unlabeled.jsonl"
    exclude = {json.loads(line)["text"] for line in (es / "pool.jsonl").open()}
    exclude |= {json.loads(line)["text"] for line in (es / "cases.jsonl").open()}
    task = yaml.safe_load((es / "task.yaml").read_text())
    exclude |= {ex["text"] for ex in task.get("examples", [])}
    rows = [json.loads(line) for line in (args.datasets / "sst2" / "train.jsonl").open()]
    candidates = [
        (i, r["text"])
        for i, r in enumerate(rows)
        if r["text"] not in exclude and len(r["text"].split()) >= args.min_words
    ]
    if args.min_words:
        candidates = _drop_sub_phrases(candidates)
    picked = sorted(random.Random(0).sample(candidates, min(args.n, len(candidates))))
    with out.open("w") as f:
        for i, text in picked:
            f.write(json.dumps({"id": f"sst2-train-{i:05d}", "text": text}) + "\n")
    print(f"wrote {len(picked)} texts to {out}")


if __name__ == "__main__":
    main()
