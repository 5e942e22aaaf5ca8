"""The one seam every backend implements: ``predict_batch(texts, hints) -> list[Prediction]``.

A backend also declares what it is (`Capabilities`) instead of being probed for attributes,
names the backends it is made of (`Backend.children`, so warm-up, fault hooks and metrics walk
one tree), and emits typed events through its `Backend.hooks`.

Example:
    >>> class Constant(Backend):
    ...     def predict_batch(self, texts, hints=None):
    ...         return [Prediction(labels=("a",), scores={"a": 1.0, "b": 0.0},
    ...                            score_source="model", backend=self.name) for _ in texts]
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from llmclf.hooks import Hooks
from llmclf.types import Prediction, Task

__all__ = ["Backend", "Capabilities", "Hints"]


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


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself; callers read these instead of probing attributes.

    ``native_async``: `Backend.apredict_batch` never blocks the event loop, so an async caller
    awaits it directly instead of sending it to a thread. ``batches``: the backend answers a
    batch in one pass (a student), so micro-batching concurrent requests and chunking an eval
    pays off; an LLM answers text by text and a batch would wait for its slowest call.
    ``prompted``: an LLM backend with a prompt template (``template``), prompt options and
    provider faults.

    Example:
        >>> Capabilities(batches=True).native_async
        False
    """

    native_async: bool = False
    batches: bool = False
    prompted: bool = False


class Backend(ABC):
    """Answers classification requests for one task."""

    #: The spec a user would type for this backend, e.g. ``llm:local`` or ``setfit:models/sst2``.
    name: str
    task: Task
    #: What this kind of backend is; see `Capabilities`.
    capabilities: ClassVar[Capabilities] = Capabilities()

    @property
    def hooks(self) -> Hooks:
        """This backend's event handlers (`llmclf.hooks.Event`), created on first use."""
        hooks = self.__dict__.get("_hooks")
        if hooks is None:
            hooks = self.__dict__.setdefault("_hooks", Hooks())
        return hooks

    def children(self) -> Sequence[Backend]:
        """The backends this one is made of (a router's, a wrapper's inner one); none by default."""
        return ()

    def walk(self) -> Iterator[Backend]:
        """This backend, then every backend it is made of, depth first, each once.

        Example:
            >>> [b.name for b in router.walk()]                         # doctest: +SKIP
            ['router:router.yaml', 'setfit:models/sst2', 'llm:local']
        """
        seen: set[int] = set()
        stack: list[Backend] = [self]
        while stack:
            b = stack.pop()
            if id(b) in seen:
                continue
            seen.add(id(b))
            yield b
            stack.extend(reversed(list(b.children())))

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load what the backend would load lazily on its first request (models, clients)."""

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
