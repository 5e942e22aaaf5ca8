"""`Classifier`: the public entry point that validates input and asks a backend.

Example:
    >>> import llmclf                                                    # doctest: +SKIP
    >>> task = llmclf.Task.from_yaml("eval_sets/sst2/task.yaml")
    >>> clf = llmclf.Classifier(task, backend="llm:local")
    >>> clf.predict("I loved it").label
    'positive'
    >>> [p.label for p in clf.predict_many(["great", "awful"])]
    ['positive', 'negative']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmclf.backends.base import Backend, Hints
from llmclf.backends.registry import make_backend
from llmclf.errors import InputTextError
from llmclf.store import Store
from llmclf.types import Prediction, Task


def validate_texts(texts: Sequence[str], max_chars: int) -> list[str]:
    """Reject empty or over-long texts before any model is called; names the input's index."""
    if isinstance(texts, str):
        raise InputTextError("expected a list of texts, got a single string")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputTextError(f"text must be a string, got {type(text).__name__}", index=i)
        if not text.strip():
            raise InputTextError("text is empty", index=i)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InputTextError(
                    "text is not valid Unicode (lone surrogate)", index=i
                ) from None
        if len(text) > max_chars:
            raise InputTextError(
                f"text has {len(text)} characters, over the limit of {max_chars} "
                "(raise max_text_chars in the task to allow it)",
                index=i,
            )
        out.append(text)
    return out


class Classifier:
    """Classify texts for a task with one backend (an LLM, a student or a router).

    ``backend`` is a spec string (``llm:local``, ``llm:openai/gpt-4o-mini``,
    ``setfit:models/sst2``, ``router:router.yaml``) or a `Backend` instance.
    """

    def __init__(
        self,
        task: Task | str | Path,
        backend: str | Backend = "llm:local",
        *,
        store: Store | None = None,
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        self.task = task if isinstance(task, Task) else Task.from_yaml(task)
        self.backend = (
            backend
            if isinstance(backend, Backend)
            else make_backend(backend, self.task, store=store, **options)
        )
        self.batch_size = batch_size

    def predict(self, text: str, hints: Hints | None = None) -> Prediction:
        """Classify one text."""
        (checked,) = validate_texts([text], self.task.max_text_chars)
        return self.backend.predict_batch([checked], hints)[0]

    def predict_many(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        """Classify many texts with the backend's bounded concurrency; order is kept."""
        checked = validate_texts(texts, self.task.max_text_chars)
        out: list[Prediction] = []
        for i in range(0, len(checked), self.batch_size):
            out.extend(self.backend.predict_batch(checked[i : i + self.batch_size], hints))
        return out

    async def apredict_many(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        """Async `predict_many`."""
        checked = validate_texts(texts, self.task.max_text_chars)
        out: list[Prediction] = []
        for i in range(0, len(checked), self.batch_size):
            out.extend(await self.backend.apredict_batch(checked[i : i + self.batch_size], hints))
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
