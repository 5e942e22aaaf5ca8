"""Calibrate stage: what the router needs from a distilled student, measured on the eval set.

The escalation threshold is the lowest student confidence at which the student's accuracy on
the cases at or above it is at least the teacher's accuracy on the whole eval set; it is
written to the model's ``router.json`` and read by the router's cascade.

Example:
    >>> calibrate_escalation(student_preds, golds, teacher_preds)["escalation_threshold"]
    0.81                                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmclf.types import Prediction

__all__ = ["agreement", "calibrate_escalation", "no_eval_set"]


def calibrate_escalation(
    student: Sequence[Prediction | None],
    golds: Sequence[Sequence[str]],
    teacher: Sequence[Prediction | None],
) -> dict[str, Any]:
    """The router's escalation threshold: the lowest student confidence ``t`` at which the
    student's accuracy on the cases with confidence >= t is at least the teacher's accuracy on
    all cases. Below it the router asks the teacher. Also reports the student's coverage and the
    accuracy of that cascade on the eval set.

    Example:
        >>> calibrate_escalation(student_preds, golds, teacher_preds)["escalation_threshold"]
        0.81                                                               # doctest: +SKIP
    """
    n = len(golds)
    conf = np.asarray([0.0 if p is None else p.confidence for p in student], dtype=float)
    s_ok = np.asarray([p is not None and p.matches(g) for p, g in zip(student, golds, strict=True)])
    t_ok = np.asarray([p is not None and p.matches(g) for p, g in zip(teacher, golds, strict=True)])
    target = float(t_ok.mean()) if n else 0.0
    chosen: float | None = None
    for t in sorted(set(conf.tolist())):
        kept = conf >= t
        if float(s_ok[kept].mean()) >= target:
            chosen = t
            break
    rule = (
        "lowest student confidence t such that the student's accuracy on eval cases with "
        "confidence >= t is at least the teacher's accuracy on all eval cases"
    )
    if chosen is None:
        return {
            "escalation_threshold": 1.0,
            "teacher_accuracy": target,
            "coverage": 0.0,
            "student_accuracy_above": None,
            "cascade_accuracy": target,
            "n": n,
            "rule": rule + " (never reached: escalate everything)",
        }
    kept = conf >= chosen
    cascade = np.where(kept, s_ok, t_ok)
    return {
        "escalation_threshold": float(chosen),
        "teacher_accuracy": round(target, 6),
        "coverage": round(float(kept.mean()), 6),
        "student_accuracy_above": round(float(s_ok[kept].mean()), 6),
        "student_accuracy": round(float(s_ok.mean()), 6),
        "cascade_accuracy": round(float(cascade.mean()), 6),
        "n": n,
        "rule": rule,
    }


def agreement(a: Sequence[Prediction | None], b: Sequence[Prediction | None]) -> float | None:
    """The share of cases where both answered and gave the same label set."""
    pairs = [
        (x, y)
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not x.abstained and not y.abstained
    ]
    if not pairs:
        return None
    return sum(set(x.labels) == set(y.labels) for x, y in pairs) / len(pairs)


def no_eval_set() -> dict[str, Any]:
    """``router.json`` when no eval set was given: no threshold; the router uses its default."""
    return {
        "escalation_threshold": None,
        "rule": "no eval set was given; the router falls back to its own default",
    }


def calibrate(
    student: Sequence[Prediction | None],
    golds: Sequence[Sequence[str]],
    teacher: Sequence[Prediction | None],
    *,
    eval_set: str,
    runtime: str,
) -> dict[str, Any]:
    """The student's ``router.json``: `calibrate_escalation` on the eval set, with where it was
    calibrated and the runtime that served the student while it was.

    Example:
        >>> esc = calibrate(student_preds, golds, teacher_preds, eval_set="sst2",
        ...                 runtime="int8")                              # doctest: +SKIP
        >>> esc["escalation_threshold"], esc["calibrated_on"]
        (0.81, 'sst2')
    """
    escalation = calibrate_escalation(student, golds, teacher)
    escalation["calibrated_on"] = eval_set
    escalation["runtime"] = runtime
    return escalation
