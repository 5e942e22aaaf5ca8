"""Selection stage: which teacher labels the student is trained on.

Teacher labels whose confidence is below ``min_confidence`` are dropped. Unless given, the
threshold is chosen on the eval set (`choose_min_confidence`): the lowest threshold at which the
teacher's kept labels halve its error rate on the eval set, never dropping more than half the
eval cases (0 when the teacher's confidence does not separate right from wrong, or without an
eval set). Single-label classes are then capped at ``balance_ratio`` times the smallest class
(and ``max_per_label``); a label with fewer than ``min_per_label`` examples is named in a
warning. Human gold rows (``include_labelled`` files, reviewed rows of the review queue) are
added as they are.

Example:
    >>> sel = select_training_set(labels.rows, task, min_confidence=0.7)  # doctest: +SKIP
    >>> sel.counts
    {'negative': 412, 'positive': 530}
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmclf.datasets import load_cases
from llmclf.distill.config import DEFAULT_BALANCE_RATIO, DEFAULT_MIN_PER_LABEL
from llmclf.distill.teacher import TeacherRow, decided_at, label_certainty
from llmclf.errors import ConfigError
from llmclf.store import Store, open_store
from llmclf.types import Task

if TYPE_CHECKING:
    from llmclf.evaluate import EvalRun

__all__ = [
    "Selection",
    "choose_min_confidence",
    "gold_rows",
    "min_confidence_from_eval",
    "select_training_set",
]


@dataclass
class Selection:
    """The training set chosen from the teacher labels (plus gold rows)."""

    rows: list[TeacherRow]
    min_confidence: float
    counts: dict[str, int]
    teacher_counts: dict[str, int]
    n_low_confidence: int
    n_capped: int
    n_gold: int
    warnings: list[str] = field(default_factory=list)
    #: How ``min_confidence`` was chosen (given, or on which eval set and why).
    min_confidence_source: str = "given"


def choose_min_confidence(
    confidences: Sequence[float], correct: Sequence[bool], *, min_keep: float = 0.5
) -> tuple[float, str]:
    """The confidence threshold for teacher labels, from the teacher's answers on an eval set.

    The lowest threshold whose kept answers halve the teacher's error rate, keeping at least
    ``min_keep`` of the cases; failing that, the threshold with the best kept accuracy, when it
    beats keeping everything; else 0. Returns (threshold, how it was chosen).

    Example:
        >>> choose_min_confidence([0.6, 0.7, 0.9, 0.95], [False, True, True, True])
        (0.7, 'kept accuracy 1.000 >= target 0.875 (75% of eval cases kept)')
    """
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return 0.0, "no eval cases"
    base = float(ok.mean())
    target = base + (1.0 - base) / 2
    best: tuple[float, float, float] | None = None  # (accuracy, threshold, kept)
    for t in sorted(set(conf.tolist())):
        kept = conf >= t
        frac = float(kept.mean())
        if frac < min_keep:
            break
        acc = float(ok[kept].mean())
        if acc >= target:
            return float(t), (
                f"kept accuracy {acc:.3f} >= target {target:.3f} ({frac:.0%} of eval cases kept)"
            )
        if best is None or acc > best[0]:
            best = (acc, t, frac)
    if best is not None and best[0] > base:
        return float(best[1]), (
            f"best kept accuracy {best[0]:.3f} (target {target:.3f} not reached; "
            f"{best[2]:.0%} of eval cases kept)"
        )
    return 0.0, f"teacher confidence does not separate right from wrong (accuracy {base:.3f})"


def select_training_set(
    rows: Sequence[TeacherRow],
    task: Task,
    *,
    min_confidence: float = 0.0,
    balance_ratio: float | None = DEFAULT_BALANCE_RATIO,
    max_per_label: int | None = None,
    min_per_label: int = DEFAULT_MIN_PER_LABEL,
    gold: Sequence[TeacherRow] = (),
    seed: int = 0,
) -> Selection:
    """Keep confident teacher labels, balance single-label classes, add gold rows.

    Example:
        >>> sel = select_training_set(labels.rows, task, min_confidence=0.7)  # doctest: +SKIP
        >>> sel.counts
        {'negative': 412, 'positive': 530}
    """
    labelled = [r for r in rows if not r.abstained]
    teacher_counts = Counter(lab for r in labelled for lab in r.labels)
    kept = [r for r in labelled if r.confidence >= min_confidence]
    n_low = len(labelled) - len(kept)
    n_capped = 0
    if not task.is_multilabel and kept:
        by_label: dict[str, list[TeacherRow]] = {}
        for r in kept:
            by_label.setdefault(r.labels[0], []).append(r)
        smallest = min(len(v) for v in by_label.values())
        cap = None
        if balance_ratio is not None and balance_ratio > 0:
            cap = max(1, int(balance_ratio * smallest))
        if max_per_label is not None:
            cap = max_per_label if cap is None else min(cap, max_per_label)
        if cap is not None:
            rng = random.Random(seed)
            chosen: set[str] = set()
            for members in by_label.values():
                pick = members if len(members) <= cap else rng.sample(members, cap)
                chosen.update(r.key for r in pick)
            n_capped = len(kept) - len(chosen)
            kept = [r for r in kept if r.key in chosen]
    final = kept + list(gold)
    counts = Counter(lab for r in final for lab in r.labels)
    notes: list[str] = []
    few = [n for n in task.label_names if counts.get(n, 0) < min_per_label]
    if few:
        listed = ", ".join(f"{n} ({counts.get(n, 0)})" for n in few)
        notes.append(
            f"label(s) with fewer than {min_per_label} training examples: {listed}; the student "
            "will rarely predict them (label more texts, lower --min-confidence or add gold rows)"
        )
    return Selection(
        rows=final,
        min_confidence=min_confidence,
        counts={n: counts.get(n, 0) for n in task.label_names},
        teacher_counts={n: teacher_counts.get(n, 0) for n in task.label_names},
        n_low_confidence=n_low,
        n_capped=n_capped,
        n_gold=len(gold),
        warnings=notes,
    )


def gold_rows(
    task: Task,
    *,
    include_labelled: Sequence[str | Path] = (),
    include_reviewed: bool = False,
    store: Store | None = None,
) -> list[TeacherRow]:
    """Human-labelled rows: cases files (checked against the task; errors name file and line)
    and, with ``include_reviewed``, the review queue's labelled rows for this task."""
    out: list[TeacherRow] = []
    for path in include_labelled:
        for case in load_cases(path, task):
            out.append(
                TeacherRow(
                    key=f"gold:{path}:{case.id}",
                    position=-1,
                    text=case.text,
                    labels=case.labels,
                    scores={n: float(n in case.labels) for n in task.label_names},
                    confidence=1.0,
                    id=case.id,
                    line=case.line,
                    source="gold",
                )
            )
    if include_reviewed:
        store = store or open_store()
        for item in store.review_list(task=task.name, status="labelled", limit=1_000_000):
            labels = tuple(item.get("gold") or ())
            unknown = [x for x in labels if x not in task.label_names]
            if unknown or (not task.is_multilabel and len(labels) != 1):
                raise ConfigError(
                    f"review item {item['id']}: gold {list(labels)} does not fit task "
                    f"{task.name!r} (labels: {', '.join(task.label_names)})"
                )
            out.append(
                TeacherRow(
                    key=f"review:{item['id']}",
                    position=-1,
                    text=item["text"],
                    labels=labels,
                    scores={n: float(n in labels) for n in task.label_names},
                    confidence=1.0,
                    id=f"review-{item['id']}",
                    source="review",
                )
            )
    return out


def min_confidence_from_eval(task: Task, teacher_run: EvalRun) -> tuple[float, str]:
    """`choose_min_confidence` on the teacher's eval run: its certainty on each answered case
    (0 when it abstained) against whether the answer was right.

    Example:
        >>> min_confidence_from_eval(task, teacher_run)                 # doctest: +SKIP
        (0.7, 'kept accuracy 1.000 >= target 0.875 (75% of eval cases kept)')
    """
    pairs = [
        (
            0.0
            if p.abstained
            else label_certainty(task, p.labels, p.scores, decided_at(task, p)),
            p.matches(c.labels),
        )
        for p, c in zip(teacher_run.predictions, teacher_run.cases, strict=True)
        if p is not None
    ]
    return choose_min_confidence([a for a, _ in pairs], [b for _, b in pairs])
