"""The head-only mode: a logistic-regression head on a frozen body's embeddings.

Balanced class weights; one-vs-rest sigmoids for multi-label tasks; the head's C is chosen by
3-fold cross-validation.

Example:
    >>> head, c = fit_head(np.eye(4), [["a"], ["b"], ["a"], ["b"]], task)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmclf.backends.setfit import Head
from llmclf.errors import DistillError
from llmclf.types import Task

__all__ = ["fit_head"]


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    return clf.fit(x, y)


def _choose_c(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """C by 3-fold stratified cross-validation (balanced accuracy), or 1.0 with too few rows."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    counts = Counter(y.tolist())
    if min(counts.values()) < 3 or len(y) < 30:
        return 1.0
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    best_c, best = 1.0, -1.0
    for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0):
        scores = []
        for tr, te in folds.split(x, y):
            clf = _fit_lr(x[tr], y[tr], c, seed)
            scores.append(balanced_accuracy_score(y[te], clf.predict(x[te])))
        s = float(np.mean(scores))
        if s > best + 1e-9:
            best_c, best = c, s
    return best_c


def fit_head(
    embeddings: np.ndarray,
    label_sets: Sequence[Sequence[str]],
    task: Task,
    *,
    c: float | None = None,
    seed: int = 0,
) -> tuple[Head, float | None]:
    """A logistic-regression head with balanced class weights over the task's labels.

    Single-label: softmax rows (a label with no examples gets a score near 0). Multi-label:
    one independent sigmoid per label (a label always/never present gets its smoothed rate).
    ``c`` is chosen by cross-validation when None (single-label; 1.0 for multi-label).

    Example:
        >>> head, c = fit_head(np.eye(4), [["a"], ["b"], ["a"], ["b"]], task)  # doctest: +SKIP
    """
    names = list(task.label_names)
    dim = embeddings.shape[1]
    coef = np.zeros((len(names), dim))
    intercept = np.zeros(len(names))
    if task.is_multilabel:
        n = len(label_sets)
        used_c = 1.0 if c is None else c
        for j, name in enumerate(names):
            y = np.asarray([name in ls for ls in label_sets], dtype=int)
            if y.min() == y.max():
                rate = (y.sum() + 0.5) / (n + 1.0)
                intercept[j] = float(np.log(rate / (1 - rate)))
                continue
            clf = _fit_lr(embeddings, y, used_c, seed)
            coef[j] = clf.coef_[0]
            intercept[j] = clf.intercept_[0]
        return Head("sigmoid", coef, intercept), used_c
    y = np.asarray([names.index(ls[0]) for ls in label_sets])
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        only = names[present[0]] if present else "nothing"
        raise DistillError(
            f"the training set has only one label ({only}); a classifier needs at least two "
            "(label more texts, lower --min-confidence or add gold rows)"
        )
    used_c = _choose_c(embeddings, y, seed) if c is None else c
    clf = _fit_lr(embeddings, y, used_c, seed)
    classes = list(clf.classes_)
    if len(classes) == 2:
        # sklearn's binary model: p(classes[1]) = sigmoid(w.x + b) = softmax([0, w.x + b])[1]
        coef[classes[1]] = clf.coef_[0]
        intercept[classes[1]] = clf.intercept_[0]
    else:
        for row, cls in enumerate(classes):
            coef[cls] = clf.coef_[row]
            intercept[cls] = clf.intercept_[row]
    absent = [i for i in range(len(names)) if i not in present]
    if absent:
        floor = float(intercept[present].min()) - 50.0
        intercept[absent] = floor
    return Head("softmax", coef, intercept), used_c
