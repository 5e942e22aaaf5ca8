"""`suggest_for_review`: the unlabelled texts most worth a human label, for ``llmclf review
suggest``.

The student scores and embeds every text in one pass; `llmclf.review_strategies.suggest` then
takes the most uncertain by margin and spreads the picks out by k-center greedy on the
embeddings. The picks go to the review queue (idempotently: a text suggested twice is queued
once) or to a JSONL file.

Example:
    >>> student = SetFitBackend.load("models/sst2")                     # doctest: +SKIP
    >>> picks = suggest_for_review(texts, student, k=100)
    >>> enqueue(picks, student.task, open_store())
    100
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmclf.review_strategies import margin, suggest
from llmclf.store import Store
from llmclf.types import Prediction, Task

__all__ = ["Suggestion", "enqueue", "suggest_for_review", "write_suggestions"]


class _Student(Protocol):
    task: Task

    def predict_and_embed(self, texts: Sequence[str]) -> tuple[list[Prediction], np.ndarray]: ...


@dataclass(frozen=True)
class Suggestion:
    """One text picked for a person: the student's answer, its margin and the pick's rank."""

    rank: int
    id: str | None
    text: str
    prediction: Prediction
    margin: float


def suggest_for_review(
    texts: Sequence[str],
    student: _Student,
    k: int,
    *,
    ids: Sequence[str | None] | None = None,
    pool_factor: int = 5,
    batch_size: int = 256,
) -> list[Suggestion]:
    """The ``k`` texts of ``texts`` worth a human label, best first (see the module doc)."""
    preds: list[Prediction] = []
    chunks: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        p, e = student.predict_and_embed(list(texts[i : i + batch_size]))
        preds.extend(p)
        chunks.append(np.asarray(e, dtype=np.float32))
    if not preds:
        return []
    names = student.task.label_names
    scores = np.array([[p.scores.get(n, 0.0) for n in names] for p in preds])
    picks = suggest(scores, np.concatenate(chunks), k, pool_factor=pool_factor)
    return [
        Suggestion(
            rank=r + 1,
            id=ids[i] if ids is not None else None,
            text=texts[i],
            prediction=preds[i],
            margin=margin(preds[i].scores),
        )
        for r, i in enumerate(picks)
    ]


def _record(s: Suggestion, task: Task) -> dict[str, Any]:
    return {
        **s.prediction.to_json_dict(),
        "task": {"name": task.name, "kind": task.kind, "labels": list(task.label_names)},
        "review_strategy": "suggest",
        "review_reason": f"suggest: margin {s.margin:.2f}, pick {s.rank}",
    }


def enqueue(suggestions: Sequence[Suggestion], task: Task, store: Store) -> int:
    """Put the suggestions in the review queue; returns how many were new."""
    added = 0
    for s in suggestions:
        key = hashlib.sha256(f"{task.name}\0{s.text}".encode()).hexdigest()[:24]
        if store.review_add(task.name, s.text, _record(s, task), request_id=f"suggest:{key}"):
            added += 1
    return added


def write_suggestions(suggestions: Sequence[Suggestion], task: Task, out: Path) -> None:
    """Write the suggestions as JSONL (``id``, ``text``, ``rank``, ``margin``, ``prediction``),
    atomically. There is no ``label`` field: these are not gold yet."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for s in suggestions:
            row = {"id": s.id, "text": s.text, "rank": s.rank, "margin": round(s.margin, 6),
                   "prediction": _record(s, task)}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
