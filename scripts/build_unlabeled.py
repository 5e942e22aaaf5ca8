"""Build ``eval_sets/sst2/unlabeled.jsonl``: SST-2 train texts, labels dropped, for distillation.

The texts are a seeded sample (seed 0) of the SST-2 train split in ``../shared/datasets`` that
leaves out the eval set's few-shot pool and static examples. Only ``id`` and ``text`` are kept:
the teacher labels them, and gold labels are never used for training.

    python scripts/build_unlabeled.py [--n 2000] [--datasets ../shared/datasets]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    args = ap.parse_args()
    es = REPO / "eval_sets" / "sst2"
    exclude = {json.loads(line)["text"] for line in (es / "pool.jsonl").open()}
    exclude |= {json.loads(line)["text"] for line in (es / "cases.jsonl").open()}
    task = yaml.safe_load((es / "task.yaml").read_text())
    exclude |= {ex["text"] for ex in task.get("examples", [])}
    rows = [json.loads(line) for line in (args.datasets / "sst2" / "train.jsonl").open()]
    candidates = [(i, r["text"]) for i, r in enumerate(rows) if r["text"] not in exclude]
    picked = sorted(random.Random(0).sample(candidates, args.n))
    with (es / "unlabeled.jsonl").open("w") as f:
        for i, text in picked:
            f.write(json.dumps({"id": f"sst2-train-{i:05d}", "text": text}) + "\n")
    print(f"wrote {len(picked)} texts to {es / 'unlabeled.jsonl'}")


if __name__ == "__main__":
    main()
