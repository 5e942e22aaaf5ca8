"""Which answers are worth a person's time: review strategies, a daily budget, per-label quotas,
and k-center greedy selection on embeddings.

A strategy turns one answer's scores into a yes/no "send to review":

- ``threshold``: the top score is below ``threshold`` (what the router always did);
- ``margin``: the top score minus the runner-up is below ``threshold`` (near the boundary);
- ``entropy``: the entropy of the scores, normalised to [0, 1], is above ``threshold``;
- ``disagreement``: the shadow backend (the LLM) gave other labels than the answer.

`ReviewGate` adds a daily ``budget`` (rows per UTC day, per task) and ``min_per_label``: each
label's first N answers of the day are reviewed even when the strategy would not pick them, and
that much of the budget is held back for labels that have not had their N yet, so rare labels
get reviewed too.

`suggest` picks ``k`` texts for a person out of an unlabelled pool: the most uncertain by margin,
spread out by k-center greedy on their embeddings.

Example:
    >>> margin({"a": 0.55, "b": 0.45})
    0.1
    >>> gate = ReviewGate(strategy="margin", threshold=0.2, budget=2)
    >>> [gate.admit(("a",), {"a": s, "b": 1 - s}).admitted for s in (0.55, 0.9, 0.5, 0.52)]
    [True, False, True, False]
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "STRATEGIES",
    "Decision",
    "ReviewGate",
    "Strategy",
    "entropy",
    "k_center_greedy",
    "margin",
    "suggest",
    "utc_day_start",
]

Strategy = Literal["threshold", "margin", "entropy", "disagreement"]
STRATEGIES: tuple[str, ...] = ("threshold", "margin", "entropy", "disagreement")


def margin(scores: Mapping[str, float]) -> float:
    """Top score minus the runner-up (1.0 with a single label): small = near the boundary.

    Example:
        >>> margin({"a": 0.7, "b": 0.2, "c": 0.1})
        0.5
    """
    top = sorted((float(v) for v in scores.values()), reverse=True)
    if not top:
        return 0.0
    if len(top) == 1:
        return 1.0
    return round(top[0] - top[1], 12)


def entropy(scores: Mapping[str, float]) -> float:
    """Shannon entropy of the scores (renormalised), divided by log(#labels): 0 = sure, 1 = flat.

    Example:
        >>> entropy({"a": 0.5, "b": 0.5})
        1.0
    """
    values = [max(0.0, float(v)) for v in scores.values()]
    total = sum(values)
    if len(values) < 2 or total <= 0:
        return 0.0
    h = -sum((v / total) * math.log(v / total) for v in values if v > 0)
    return round(h / math.log(len(values)), 12)


def utc_day_start(now: float) -> float:
    """The epoch second at which ``now``'s UTC day began."""
    return float(math.floor(now / 86400.0) * 86400)


@dataclass(frozen=True)
class Decision:
    """Whether one answer goes to review, and why (stored with the row, shown on the page)."""

    admitted: bool
    reason: str


class ReviewGate:
    """Decides which answers enter the review queue: a strategy, a daily budget, label quotas.

    ``threshold``: the strategy's cut (see the module docstring). ``budget``: most rows a UTC
    day (None: no limit). ``min_per_label``: an int for every label or ``{label: n}``.
    ``history``: called once a day with the day's start; returns the labels of the rows already
    queued that day (so a restart does not reset the budget). ``clock``: for tests.

    Not thread-safe on its own terms beyond one lock around `admit`.

    Example:
        >>> gate = ReviewGate(strategy="threshold", threshold=0.6, budget=1)
        >>> gate.admit(("neg",), {"neg": 0.55, "pos": 0.45}).reason
        'confidence 0.55<0.60'
        >>> gate.admit(("neg",), {"neg": 0.51, "pos": 0.49}).admitted   # budget spent
        False
    """

    def __init__(
        self,
        *,
        strategy: Strategy = "threshold",
        threshold: float | None = None,
        budget: int | None = None,
        min_per_label: int | Mapping[str, int] | None = None,
        labels: Sequence[str] = (),
        history: Callable[[float], Iterable[Sequence[str]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown review strategy {strategy!r}; one of {', '.join(STRATEGIES)}"
            )
        if strategy != "disagreement" and threshold is None:
            raise ValueError(f"strategy {strategy!r} needs a threshold")
        self.strategy: Strategy = strategy
        self.threshold = threshold
        self.budget = budget
        if isinstance(min_per_label, int):
            self.quotas = {lab: min_per_label for lab in labels} if min_per_label else {}
        else:
            self.quotas = {k: int(v) for k, v in (min_per_label or {}).items() if v > 0}
        self.history = history
        self._clock = clock
        self._lock = threading.Lock()
        self._day: float | None = None
        self._used = 0
        self._per_label: dict[str, int] = {}

    # -- the strategy --------------------------------------------------------------------------
    def wants(
        self,
        labels: Sequence[str],
        scores: Mapping[str, float],
        shadow_labels: Sequence[str] | None = None,
        confidence: float | None = None,
    ) -> str | None:
        """Why the strategy picks this answer, or None when it does not.

        ``confidence``: the answer's own (`Prediction.confidence`; default: the top score)."""
        thr = self.threshold
        if self.strategy == "disagreement":
            if shadow_labels is not None and set(shadow_labels) != set(labels):
                return f"shadow disagreement: {','.join(shadow_labels) or '-'}"
            return None
        assert thr is not None
        if self.strategy == "threshold":
            conf = (
                confidence
                if confidence is not None
                else max((float(v) for v in scores.values()), default=0.0)
            )
            return f"confidence {conf:.2f}<{thr:.2f}" if conf < thr else None
        if self.strategy == "margin":
            m = margin(scores)
            return f"margin {m:.2f}<{thr:.2f}" if m < thr else None
        h = entropy(scores)
        return f"entropy {h:.2f}>{thr:.2f}" if h > thr else None

    # -- budget and quotas ---------------------------------------------------------------------
    def _roll(self, now: float) -> None:
        day = utc_day_start(now)
        if self._day == day:
            return
        self._day, self._used, self._per_label = day, 0, {}
        if self.history is not None and (self.budget is not None or self.quotas):
            for labs in self.history(day):
                self._count(labs)

    def _count(self, labels: Sequence[str]) -> None:
        self._used += 1
        for lab in labels:
            self._per_label[lab] = self._per_label.get(lab, 0) + 1

    def _quota_left(self, label: str) -> int:
        return max(0, self.quotas.get(label, 0) - self._per_label.get(label, 0))

    def admit(
        self,
        labels: Sequence[str],
        scores: Mapping[str, float],
        shadow_labels: Sequence[str] | None = None,
        confidence: float | None = None,
    ) -> Decision:
        """Decide for one answer and, when admitted, count it against today's budget."""
        why = self.wants(labels, scores, shadow_labels, confidence)
        with self._lock:
            self._roll(self._clock())
            short = [lab for lab in labels if self._quota_left(lab) > 0]
            if why is None and short:
                why = f"quota: label {short[0]} under {self.quotas[short[0]]} today"
            if why is None:
                return Decision(False, "not picked by the strategy")
            if self.budget is not None:
                left = self.budget - self._used
                if left <= 0:
                    return Decision(False, f"daily budget of {self.budget} spent")
                held = sum(self._quota_left(lab) for lab in self.quotas if lab not in labels)
                if not short and left <= held:
                    return Decision(False, f"budget held for labels under their quota ({held})")
            self._count(labels)
            return Decision(True, why)

    def used_today(self) -> int:
        """Rows admitted today (including those found through ``history``)."""
        with self._lock:
            self._roll(self._clock())
            return self._used


# -- selection for a person: uncertainty + diversity --------------------------------------------
def k_center_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    first: int = 0,
    centers: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> list[int]:
    """Indices of ``k`` rows of ``embeddings``, each the farthest (Euclidean) from those chosen.

    Starts from ``first`` (or, with ``centers``, from the row farthest from them). With
    ``weights``, each next pick maximises distance times weight (a weight of 0: never picked
    after the first).

    Example:
        >>> k_center_greedy(np.array([[0.0], [0.1], [5.0], [10.0]]), 3)
        [0, 3, 2]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    k = min(k, n)
    if k <= 0:
        return []
    if centers is not None and len(centers):
        c = np.asarray(centers, dtype=np.float64)
        dist = np.min(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
        first = int(np.argmax(dist))
    else:
        dist = np.full(n, np.inf)
    chosen: list[int] = []
    nxt = first
    for _ in range(k):
        chosen.append(nxt)
        d = ((x - x[nxt]) ** 2).sum(1)
        dist = np.minimum(dist, d)
        dist[chosen] = -1.0
        nxt = int(np.argmax(dist if weights is None else dist * weights))
    return chosen


def suggest(
    scores: np.ndarray, embeddings: np.ndarray, k: int, *, pool_factor: int = 5
) -> list[int]:
    """Indices of ``k`` texts worth a human label: the ``pool_factor * k`` with the smallest
    margin between their top two scores, then k-center greedy on their embeddings (starting
    from the most uncertain; each next pick maximises distance times ``1 - margin``), so that
    the picks are both unsure and unlike each other.

    Example:
        >>> s = np.array([[0.5, 0.5], [0.51, 0.49], [0.99, 0.01], [0.6, 0.4]])
        >>> e = np.array([[0.0], [0.01], [3.0], [9.0]])
        >>> suggest(s, e, 2, pool_factor=1)
        [0, 1]
        >>> suggest(s, e, 2, pool_factor=2)
        [0, 3]
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if k <= 0 or n == 0:
        return []
    ordered = np.sort(s, axis=1)[:, ::-1]
    margins = ordered[:, 0] - (ordered[:, 1] if s.shape[1] > 1 else 0.0)
    pool = np.argsort(margins, kind="stable")[: min(n, max(k, pool_factor * k))]
    picks = k_center_greedy(np.asarray(embeddings)[pool], k, first=0, weights=1.0 - margins[pool])
    return [int(pool[i]) for i in picks]
