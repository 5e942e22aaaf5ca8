"""In-process fake backends, for tests and offline demos: real `Backend`s whose answers you set.

`FunctionBackend` turns a Python function ``text -> scores`` into a backend (as pydantic-ai's
``FunctionModel`` does for models); `KeywordStudent` is a binary "student" whose P(positive)
comes from substring rules. Both record every batch they are given, can be told to fail or to
be slow, and decide labels from their scores the way a real backend does. Pair them with
`llmclf.testing.FakeProvider` (an LLM on loopback) to drive a router without a network.

Example:
    >>> from llmclf.types import Task
    >>> task = Task.from_yaml_text("name: t\\nkind: binary\\npositive_label: pos\\n"
    ...                            "labels: {neg: bad, pos: good}")
    >>> student = KeywordStudent(task, {"great": 0.97}, default=0.3)
    >>> p = student.predict_batch(["a great film"])[0]
    >>> p.label, p.scores["pos"], student.batches
    ('pos', 0.97, [['a great film']])
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.errors import BackendError
from llmclf.types import Prediction, Task

__all__ = ["FunctionBackend", "KeywordStudent"]

ScoreFunction = Callable[[str], Mapping[str, float]]


class FunctionBackend(Backend):
    """A backend whose scores come from ``score(text)``; the label is the top-scored one.

    It answers a batch in one pass, as a student does (``capabilities.batches``).

    ``fail_on`` makes any batch holding that substring raise `BackendError`; ``delay_s`` sleeps
    before answering; ``batches`` records every batch received (thread-safe).

    Example:
        >>> from llmclf.types import Task
        >>> task = Task.from_yaml_text("name: t\\nkind: multiclass\\nlabels: {a: A, b: B}")
        >>> b = FunctionBackend(task, lambda t: {"a": 0.2, "b": 0.8})
        >>> b.predict_batch(["x"])[0].label
        'b'
    """

    capabilities: ClassVar[Capabilities] = Capabilities(batches=True)

    def __init__(
        self,
        task: Task,
        score: ScoreFunction,
        *,
        name: str = "function",
        fail_on: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.task = task
        self.name = name
        self.score = score
        self.fail_on = fail_on
        self.crash_message = f"{name} crashed"
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def decide(self, scores: Mapping[str, float]) -> tuple[str, ...]:
        """The labels these scores give: the top label (per-label 0.5 for a multi-label task)."""
        if self.task.is_multilabel:
            return tuple(n for n in self.task.label_names if scores.get(n, 0.0) >= 0.5)
        return (max(self.task.label_names, key=lambda n: scores.get(n, 0.0)),)

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        with self._lock:
            self.batches.append(list(texts))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise BackendError(self.crash_message, backend=self.name)
        out = []
        for t in texts:
            scores = {n: float(v) for n, v in self.score(t).items()}
            out.append(
                Prediction(
                    labels=self.decide(scores),
                    scores=scores,
                    score_source="model",
                    backend=self.name,
                )
            )
        return out


class KeywordStudent(FunctionBackend):
    """A binary student: the first rule whose word is in the text gives P(positive).

    ``escalation_threshold`` plays the part of a distilled student's calibrated threshold (a
    router uses it as its default cascade threshold).
    """

    def __init__(
        self,
        task: Task,
        rules: dict[str, float],
        *,
        default: float = 0.5,
        escalation_threshold: float | dict[str, float] | None = None,
        fail_on: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        if task.positive_label is None or task.negative_label is None:
            raise ValueError("KeywordStudent needs a binary task")
        super().__init__(
            task, self._scores, name="keyword-student", fail_on=fail_on, delay_s=delay_s
        )
        self.crash_message = "student crashed"
        self.rules = rules
        self.default = default
        self.escalation_threshold = escalation_threshold

    def p_positive(self, text: str) -> float:
        """P(positive) for ``text``: the first matching rule's value, else ``default``."""
        for word, p in self.rules.items():
            if word in text.lower():
                return p
        return self.default

    def _scores(self, text: str) -> dict[str, float]:
        p = self.p_positive(text)
        assert self.task.positive_label is not None and self.task.negative_label is not None
        return {self.task.negative_label: round(1 - p, 6), self.task.positive_label: p}

    def decide(self, scores: Mapping[str, float]) -> tuple[str, ...]:
        pos, neg = self.task.positive_label, self.task.negative_label
        assert pos is not None and neg is not None
        return (pos if scores[pos] >= 0.5 else neg,)
