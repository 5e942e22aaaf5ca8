#!/usr/bin/env python
"""Build the shipped eval sets from the offline dataset copies, reproducibly (seed 0).

For each dataset ``<name>`` under the datasets directory (default ``../shared/datasets`` relative
to the repository root) it writes:

- ``eval_sets/<name>/cases.jsonl``: about 200 cases sampled from ``test.jsonl``.
  Single-label sets: a stratified sample with every label present when the size allows it
  (at least one case per label, the rest allocated in proportion to the test distribution,
  largest remainder first). Multi-label sets: a seeded sample that first covers the rarest
  labels (at most a quarter of the cases), then fills at random. Ids are
  ``<name>-test-NNNNNN`` (the row index in ``test.jsonl``), rows are in shuffled order.
- ``eval_sets/<name>/pool.jsonl``: a label-balanced few-shot pool drawn from ``train.jsonl``
  only: up to 16 rows per label, at most about 600 rows (the per-label count shrinks for sets
  with many labels), ids ``<name>-train-NNNNN``. Texts that occur among the cases or as
  static examples in ``task.yaml`` are left out.

Texts and labels are copied from the data unchanged; exact-duplicate texts are sampled once.
If ``eval_sets/<name>/task.yaml`` exists the output is checked against it with `load_eval_set`.

Usage:
    python scripts/build_eval_sets.py                    # all eight sets
    python scripts/build_eval_sets.py sst2 trec --size 100
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = REPO / "eval_sets"
ALL_SETS = (
    "sst2",
    "sms_spam",
    "ag_news",
    "trec",
    "banking77",
    "clinc150",
    "goemotions",
    "reuters21578",
)

Row = dict[str, Any]


def read_split(path: Path) -> list[Row]:
    """Rows of a split, each with its 0-based source index under ``_idx``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                row["_idx"] = i
                rows.append(row)
    return rows


def gold(row: Row) -> list[str]:
    return list(row["labels"]) if "labels" in row else [row["label"]]


def unique_texts(rows: list[Row], exclude: Iterable[str] = ()) -> list[Row]:
    """Keep the first row of each exact text, dropping texts in ``exclude``."""
    seen = set(exclude)
    out = []
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            out.append(r)
    return out


def allocate(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many cases per label: at least one each (while size allows), the rest proportional."""
    total = sum(counts.values())
    size = min(size, total)
    quota = {lab: size * c / total for lab, c in counts.items()}
    alloc = {lab: min(counts[lab], max(1, math.floor(q))) for lab, q in quota.items()}
    # too many (more labels than size, or the floor of 1 overshoots): take from the most over
    while sum(alloc.values()) > size:
        lab = max(alloc, key=lambda k: (alloc[k] - quota[k], alloc[k], k))
        alloc[lab] -= 1
    # too few: give to the largest remainders that still have rows
    while sum(alloc.values()) < size:
        open_labels = [k for k in alloc if alloc[k] < counts[k]]
        lab = max(open_labels, key=lambda k: (quota[k] - alloc[k], k))
        alloc[lab] += 1
    return alloc


def sample_single(rows: list[Row], size: int, rng: random.Random) -> list[Row]:
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    alloc = allocate({k: len(v) for k, v in sorted(by_label.items())}, size)
    picked: list[Row] = []
    for lab in sorted(alloc):
        picked.extend(rng.sample(by_label[lab], alloc[lab]))
    rng.shuffle(picked)
    return picked


def sample_multi(rows: list[Row], size: int, rng: random.Random) -> list[Row]:
    freq = Counter(lab for r in rows for lab in r["labels"])
    picked: list[Row] = []
    chosen: set[int] = set()
    covered: set[str] = set()
    for lab in sorted(freq, key=lambda k: (freq[k], k)):  # rarest first
        if len(picked) >= size // 4:
            break
        if lab in covered:
            continue
        r = rng.choice([r for r in rows if lab in r["labels"]])
        picked.append(r)
        chosen.add(r["_idx"])
        covered.update(r["labels"])
    rest = [r for r in rows if r["_idx"] not in chosen]
    picked.extend(rng.sample(rest, min(size - len(picked), len(rest))))
    rng.shuffle(picked)
    return picked


def sample_pool(
    rows: list[Row], labels: list[str], per_label: int, cap: int, rng: random.Random
) -> list[Row]:
    """Up to ``per_label`` rows for each label (fewer when labels x per_label exceeds ``cap``)."""
    k = max(1, min(per_label, cap // len(labels)))
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        for lab in gold(r):
            by_label[lab].append(r)
    have: Counter[str] = Counter()
    picked: list[Row] = []
    chosen: set[int] = set()
    for lab in sorted(labels, key=lambda x: (len(by_label[x]), x)):  # rarest first
        candidates = [r for r in by_label[lab] if r["_idx"] not in chosen]
        rng.shuffle(candidates)
        for r in candidates:
            if have[lab] >= k or len(picked) >= cap:
                break
            picked.append(r)
            chosen.add(r["_idx"])
            have.update(gold(r))
    rng.shuffle(picked)
    return picked


def static_example_texts(task_yaml: Path) -> set[str]:
    if not task_yaml.is_file():
        return set()
    import yaml

    data = yaml.safe_load(task_yaml.read_text(encoding="utf-8")) or {}
    return {ex["text"] for ex in data.get("examples") or [] if isinstance(ex, dict)}


def to_json(row: Row, rid: str, multilabel: bool) -> str:
    out: Row = {"id": rid, "text": row["text"]}
    if multilabel:
        out["labels"] = list(row["labels"])
    else:
        out["label"] = row["label"]
    return json.dumps(out, ensure_ascii=False)


def build(
    name: str, datasets_dir: Path, out_dir: Path, size: int, per_label: int, cap: int, seed: int
) -> dict[str, Any]:
    src = datasets_dir / name
    labels = json.loads((src / "labels.json").read_text(encoding="utf-8"))
    test = read_split(src / "test.jsonl")
    train = read_split(src / "train.jsonl")
    multilabel = "labels" in test[0]
    for split, rows in (("test", test), ("train", train)):
        unknown = {lab for r in rows for lab in gold(r)} - set(labels)
        if unknown:
            raise SystemExit(f"{src}/{split}.jsonl has labels not in labels.json: {unknown}")

    test_rows = unique_texts(test)
    rng = random.Random(seed)
    cases = (sample_multi if multilabel else sample_single)(test_rows, size, rng)
    # the pool leaves out the cases' texts and the task's static examples (no repeats in a prompt)
    exclude = {r["text"] for r in cases} | static_example_texts(out_dir / name / "task.yaml")
    pool_rows = unique_texts(train, exclude=exclude)
    pool = sample_pool(pool_rows, labels, per_label, cap, random.Random(seed))

    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "cases.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for r in cases:
            f.write(to_json(r, f"{name}-test-{r['_idx']:06d}", multilabel) + "\n")
    with open(d / "pool.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for r in pool:
            f.write(to_json(r, f"{name}-train-{r['_idx']:05d}", multilabel) + "\n")

    case_labels = {lab for r in cases for lab in gold(r)}
    pool_labels = {lab for r in pool for lab in gold(r)}
    return {
        "name": name,
        "kind": "multilabel" if multilabel else ("binary" if len(labels) == 2 else "multiclass"),
        "labels": len(labels),
        "cases": len(cases),
        "case_labels": len(case_labels),
        "pool": len(pool),
        "pool_labels": len(pool_labels),
    }


def check(out_dir: Path, name: str) -> str:
    if not (out_dir / name / "task.yaml").is_file():
        return "no task.yaml (not checked)"
    sys.path.insert(0, str(REPO))
    from llmclf.datasets import load_eval_set

    es = load_eval_set(out_dir / name)
    es.load_pool()
    return "ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=list(ALL_SETS), help="sets to build (default all)")
    ap.add_argument("--datasets-dir", type=Path, default=DEFAULT_DATASETS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="eval_sets directory")
    ap.add_argument("--size", type=int, default=200, help="cases per set")
    ap.add_argument("--pool-per-label", type=int, default=16)
    ap.add_argument("--pool-cap", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(
        f"{'set':14} {'kind':10} {'labels':>6} {'cases':>5} {'(labels)':>8} "
        f"{'pool':>5} {'(labels)':>8}  check"
    )
    for name in args.names:
        s = build(
            name,
            args.datasets_dir,
            args.out,
            args.size,
            args.pool_per_label,
            args.pool_cap,
            args.seed,
        )
        print(
            f"{s['name']:14} {s['kind']:10} {s['labels']:>6} {s['cases']:>5} "
            f"{s['case_labels']:>8} {s['pool']:>5} {s['pool_labels']:>8}  "
            f"{check(args.out, name)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
