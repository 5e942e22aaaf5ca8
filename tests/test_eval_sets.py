"""The shipped eval sets (``eval_sets/<name>/``) load, are sound, and match their build script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llmclf.datasets import SHIPPED_EVAL_SETS, list_eval_sets, load_eval_set
from tests.helpers import REPO

SHARED = REPO.parent / "shared" / "datasets"
SINGLE = ["sst2", "sms_spam", "ag_news", "trec", "banking77", "clinc150"]
MULTI = ["goemotions", "reuters21578"]
ALL = SINGLE + MULTI


def test_all_sets_are_shipped() -> None:
    assert SHIPPED_EVAL_SETS == REPO / "eval_sets"
    assert set(ALL) <= set(list_eval_sets(SHIPPED_EVAL_SETS))


@pytest.mark.parametrize("name", ALL)
def test_shipped_eval_set_is_sound(name: str) -> None:
    es = load_eval_set(name)
    task = es.task
    assert es.name == name == task.name
    assert task.is_multilabel == (name in MULTI)
    assert 190 <= len(es.cases) <= 210

    ids = [c.id for c in es.cases]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(rf"{name}-test-\d{{6}}", i) for i in ids)
    assert len({c.text for c in es.cases}) == len(es.cases)
    for c in es.cases:
        assert set(c.labels) <= set(task.label_names)
        if not task.is_multilabel:
            assert len(c.labels) == 1

    # every label has a short, non-empty description
    for lab in task.labels:
        assert lab.description.strip() and len(lab.description) <= 90, lab.name

    assert es.pool_path is not None and es.pool_path.name == "pool.jsonl"
    pool = es.load_pool()
    pool_ids = [c.id for c in pool]
    assert 0 < len(pool) <= 600
    assert len(set(pool_ids)) == len(pool_ids)
    assert all(re.fullmatch(rf"{name}-train-\d{{5}}", i) for i in pool_ids)
    assert not set(pool_ids) & set(ids)
    assert not {c.text for c in pool} & {c.text for c in es.cases}
    # the pool is label-balanced: no label has more than 16 rows (multi-label rows count for
    # each of their labels, so a frequent co-occurring label may exceed it there)
    per_label = Counter(lab for c in pool for lab in c.labels)
    assert set(per_label) == set(task.label_names)
    if not task.is_multilabel:
        assert max(per_label.values()) <= 16


@pytest.mark.parametrize("name", SINGLE)
def test_single_label_cases_cover_most_labels(name: str) -> None:
    es = load_eval_set(name)
    covered = {c.label for c in es.cases}
    assert len(covered) >= 0.9 * len(es.task.labels)


@pytest.mark.parametrize("name", MULTI)
def test_multilabel_cases_cover_many_labels(name: str) -> None:
    es = load_eval_set(name)
    covered = {lab for c in es.cases for lab in c.labels}
    assert len(covered) >= 0.75 * len(es.task.labels)


def test_binary_sets_name_their_positive_label() -> None:
    assert load_eval_set("sst2").task.positive_label == "positive"
    assert load_eval_set("sms_spam").task.positive_label == "spam"


@pytest.mark.parametrize("name", ["sst2", "sms_spam", "ag_news", "trec"])
def test_small_sets_have_static_examples_for_every_label(name: str) -> None:
    task = load_eval_set(name).task
    assert {lab for ex in task.examples for lab in ex.gold} == set(task.label_names)


needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"the offline dataset copies are not at {SHARED}"
)


@needs_shared
@pytest.mark.parametrize("name", ALL)
def test_cases_and_pool_are_real_rows_of_their_split(name: str) -> None:
    """Ids point at the source row: test rows for cases, train rows for the pool and examples."""
    es = load_eval_set(name)
    names = json.loads((SHARED / name / "labels.json").read_text(encoding="utf-8"))
    assert list(es.task.label_names) == names

    def rows(split: str) -> list[dict[str, object]]:
        with open(SHARED / name / f"{split}.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def gold(row: dict[str, object]) -> tuple[str, ...]:
        return tuple(row["labels"]) if "labels" in row else (str(row["label"]),)  # type: ignore[arg-type]

    test, train = rows("test"), rows("train")
    for c in es.cases:
        src = test[int(c.id.rsplit("-", 1)[1])]
        assert (src["text"], gold(src)) == (c.text, c.labels)
    for c in es.load_pool():
        src = train[int(c.id.rsplit("-", 1)[1])]
        assert (src["text"], gold(src)) == (c.text, c.labels)
    train_rows = {(str(r["text"]), gold(r)) for r in train}
    for ex in es.task.examples:
        assert (ex.text, ex.gold) in train_rows


@needs_shared
def test_build_script_reproduces_the_shipped_files(tmp_path: Path) -> None:
    out = tmp_path / "eval_sets"
    for name in ALL:  # task.yaml decides which static examples the pool leaves out
        (out / name).mkdir(parents=True)
        (out / name / "task.yaml").write_bytes(
            (SHIPPED_EVAL_SETS / name / "task.yaml").read_bytes()
        )
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_eval_sets.py"),
            "--out",
            str(out),
            "--datasets-dir",
            str(SHARED),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    for name in ALL:
        for f in ("cases.jsonl", "pool.jsonl"):
            assert (out / name / f).read_bytes() == (SHIPPED_EVAL_SETS / name / f).read_bytes(), (
                f"{name}/{f} differs from a fresh build: run python scripts/build_eval_sets.py"
            )


@needs_shared
def test_unlabelled_sst2_texts_are_sentence_like_train_rows(tmp_path: Path) -> None:
    """``sst2/unlabeled.jsonl`` (for distill) rebuilds byte for byte: real train rows, labels
    dropped, >= 10 words, no row inside another, none of the cases, pool or static examples."""
    out = tmp_path / "unlabeled.jsonl"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_unlabeled.py"), "--out", str(out),
         "--datasets", str(SHARED)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shipped = SHIPPED_EVAL_SETS / "sst2" / "unlabeled.jsonl"
    assert out.read_bytes() == shipped.read_bytes(), "run python scripts/build_unlabeled.py"
    rows = [json.loads(line) for line in shipped.open(encoding="utf-8")]
    with open(SHARED / "sst2" / "train.jsonl", encoding="utf-8") as f:
        train = [json.loads(line) for line in f]
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) == 2000
    for r in rows:
        assert set(r) == {"id", "text"}  # no gold label travels with the text
        assert train[int(r["id"].rsplit("-", 1)[1])]["text"] == r["text"]
        assert len(r["text"].split()) >= 10
    assert not any(a in b for a in texts for b in texts if a != b)
    es = load_eval_set("sst2")
    held_out = {c.text for c in es.cases} | {c.text for c in es.load_pool()}
    held_out |= {ex.text for ex in es.task.examples}
    assert not held_out & set(texts)
