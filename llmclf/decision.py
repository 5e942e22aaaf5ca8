"""Labels that follow their scores: the one rule every backend uses to turn scores into labels.

- single-label: the top score (ties go to the earlier label of the task);
- binary: the positive label when its score is at or above the threshold (0.5 unless the task,
  or a calibrator, sets its own);
- multi-label: every label whose score is at or above the threshold (0.5 by default).

A threshold other than 0.5 is returned with the decision, so an answer whose label is not its
top score says why (`Prediction.threshold`).

Example:
    >>> from llmclf.types import Label, Task
    >>> t = Task(name="s", kind="binary", positive_label="pos",
    ...          labels=[Label(name="neg"), Label(name="pos")], threshold=0.34)
    >>> decide(t, {"neg": 0.575, "pos": 0.425})
    Decision(labels=('pos',), abstained=False, threshold=0.34)
    >>> decide(t, {"neg": 0.575, "pos": 0.425}, threshold=0.5).labels
    ('neg',)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmclf.types import Task

__all__ = ["DEFAULT_THRESHOLD", "Decision", "decide", "threshold_for"]

#: The threshold on calibrated probabilities that maximises expected accuracy.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Decision:
    """The labels chosen from scores, whether the answer abstains, and the threshold used
    (None when it is the default 0.5 or when the task has none: single-label multiclass)."""

    labels: tuple[str, ...]
    abstained: bool = False
    threshold: float | None = None


def threshold_for(task: Task, threshold: float | None = None) -> float | None:
    """The threshold a decision uses: ``threshold`` when given, else the task's; None for a
    multiclass task (argmax needs none)."""
    if task.kind == "multiclass":
        return None
    return task.threshold if threshold is None else threshold


def decide(
    task: Task,
    scores: Mapping[str, float],
    *,
    threshold: float | None = None,
    abstain_score: float | None = None,
) -> Decision:
    """Choose labels from ``scores`` (one per label of ``task``).

    ``threshold`` overrides the task's own (a calibrator sets 0.5: its scores are
    probabilities). ``abstain_score``, when the task allows abstaining, abstains when it is
    above every label's score.
    """
    names = task.label_names
    vals = {n: float(scores.get(n, 0.0)) for n in names}
    top = max(names, key=lambda n: vals[n])  # max keeps the first of equal scores
    if abstain_score is not None and abstain_score > vals[top]:
        return Decision(labels=(), abstained=True)
    t = threshold_for(task, threshold)
    shown = None if t is None or t == DEFAULT_THRESHOLD else t
    if task.kind == "multilabel":
        assert t is not None
        return Decision(labels=tuple(n for n in names if vals[n] >= t), threshold=shown)
    if task.kind == "binary":
        assert t is not None and task.positive_label is not None
        assert task.negative_label is not None
        pos = vals[task.positive_label] >= t
        return Decision(
            labels=(task.positive_label if pos else task.negative_label,), threshold=shown
        )
    return Decision(labels=(top,))
