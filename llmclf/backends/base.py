"""The one seam every backend implements: ``predict_batch(texts, hints) -> list[Prediction]``.

Example:
    >>> class Constant(Backend):
    ...     def predict_batch(self, texts, hints=None):
    ...         return [Prediction(labels=("a",), scores={"a": 1.0, "b": 0.0},
    ...                            score_source="model", backend=self.name) for _ in texts]
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from llmclf.types import Prediction, Task


@dataclass(frozen=True)
class Hints:
    """Per-request routing hints; backends that do not route ignore them.

    ``max_latency_ms``: never escalate past this budget. ``backend``: force one backend by name.
    ``min_confidence``: escalate when the top score is below this. ``request_key``: a sticky key
    for A/B splits. ``request_id``: an idempotency key (the review queue stores it once).
    """

    max_latency_ms: float | None = None
    backend: str | None = None
    min_confidence: float | None = None
    request_key: str | None = None
    request_id: str | None = None


class Backend(ABC):
    """Answers classification requests for one task."""

    #: The spec a user would type for this backend, e.g. ``llm:local`` or ``setfit:models/sst2``.
    name: str
    task: Task

    @abstractmethod
    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        """One prediction per text, in order. Texts are already validated (non-empty, bounded)."""

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        """Async form; the default runs `predict_batch` in a worker thread."""
        return await asyncio.to_thread(self.predict_batch, texts, hints)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, servers, sessions)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
