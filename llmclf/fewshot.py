"""Dynamic few-shot examples: the k labelled examples nearest to the input, balanced across labels.

The pool is a labelled file (JSONL/CSV/Parquet, the eval-set case format). Its texts are embedded
once; each query takes the most similar examples, at most ``ceil(k / n_labels)`` per label, so a
prompt never shows the model only one label. The most similar example comes last, nearest the input.

Example:
    >>> sel = ExampleSelector.from_file("eval_sets/sst2/pool.jsonl", task)   # doctest: +SKIP
    >>> [ex.label for ex in sel.select("a dull, lifeless film", k=4)]           # doctest: +SKIP
    ['positive', 'negative', 'positive', 'negative']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

from llmclf.errors import ConfigError
from llmclf.types import Example, Task

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class ExampleSelector:
    """Picks few-shot examples from a labelled pool by embedding similarity."""

    def __init__(
        self, examples: Sequence[Example], task: Task, embed: EmbedFn | None = None
    ) -> None:
        if not examples:
            raise ConfigError("the few-shot pool is empty")
        self.task = task
        self.examples = list(examples)
        if embed is None:
            from llmclf.embeddings import shared_embedder

            embed = shared_embedder().encode
        self._embed = embed
        self._matrix = embed([ex.text for ex in self.examples])

    @classmethod
    def from_file(
        cls, path: str | Path, task: Task, embed: EmbedFn | None = None
    ) -> ExampleSelector:
        """Load a labelled pool; a label not in the task is an error naming file and line."""
        from llmclf.datasets import load_cases

        cases = load_cases(path, task)
        examples = [
            Example(text=c.text, labels=c.labels) if task.is_multilabel
            else Example(text=c.text, label=c.labels[0])
            for c in cases
            if c.labels
        ]  # fmt: skip
        return cls(examples, task, embed)

    def select(
        self, text: str, k: int, *, labels: Collection[str] | None = None
    ) -> list[Example]:
        """The ``k`` nearest examples, at most ``ceil(k / n_labels)`` per label, nearest last.

        ``labels``: only examples whose labels are all among these (a shortlist's candidates);
        the per-label cap is then counted over them."""
        if k <= 0:
            return []
        allowed = None if labels is None else set(labels)
        query = self._embed([text])[0]
        order = np.argsort(-(self._matrix @ query), kind="stable")
        n_labels = len(self.task.labels) if allowed is None else max(1, len(allowed))
        cap = max(1, math.ceil(k / n_labels))
        per_label: Counter[str] = Counter()
        chosen: list[Example] = []
        for idx in order:
            ex = self.examples[int(idx)]
            if ex.text == text:
                continue  # never show the model the answer to the very text it is asked about
            if allowed is not None and not set(ex.gold) <= allowed:
                continue
            if any(per_label[g] >= cap for g in ex.gold):
                continue
            per_label.update(ex.gold)
            chosen.append(ex)
            if len(chosen) == k:
                break
        return list(reversed(chosen))
