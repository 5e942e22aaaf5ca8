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
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from llmclf.hooks import Hooks
from llmclf.types import Prediction, Task

if TYPE_CHECKING:
    from llmclf.calibration import Calibration

__all__ = ["Backend", "Capabilities", "Hints"]


@dataclass(frozen=True)
class Hints:
    """Per-request routing hints; backends that do not route ignore them.

    ``max_latency_ms``: never escalate past this budget. ``backend``: force one backend by name.
    ``min_confidence``: escalate when the top score is below this. ``request_key``: a sticky key
    for A/B splits. ``request_id``: an idempotency key (the review queue stores it once).
    ``deadline``: the latency budget as an instant on the `time.perf_counter` clock; a router
    sets it from ``max_latency_ms`` when a request arrives and hands it to the routers it is made
    of, so a nested router never escalates past the outer request's budget.

    Example:
        >>> h = Hints(max_latency_ms=300).with_deadline(start=10.0)
        >>> h.deadline
        10.3
    """

    max_latency_ms: float | None = None
    backend: str | None = None
    min_confidence: float | None = None
    request_key: str | None = None
    request_id: str | None = None
    deadline: float | None = None

    def with_deadline(self, start: float) -> Hints:
        """These hints with ``deadline`` set: the earlier of the given one and the budget from
        ``start`` (a `time.perf_counter` reading); unchanged without a budget."""
        due = self.deadline
        if self.max_latency_ms is not None:
            own = start + self.max_latency_ms / 1000.0
            due = own if due is None else min(due, own)
        if due == self.deadline:
            return self
        return dataclasses.replace(self, deadline=due)

    def remaining_s(self, now: float | None = None) -> float | None:
        """Seconds left before ``deadline`` (negative when past it); None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - (time.perf_counter() if now is None else now)

    def for_nested(self) -> Hints | None:
        """What a router hands to a router it is made of: the sticky key, the request id and the
        deadline (``backend`` and ``min_confidence`` name the outer router's backends and
        threshold). None when there is nothing to hand on."""
        if self.request_key is None and self.request_id is None and self.deadline is None:
            return None
        return Hints(
            request_key=self.request_key, request_id=self.request_id, deadline=self.deadline
        )


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself; callers read these instead of probing attributes.

    ``native_async``: `Backend.apredict_batch` never blocks the event loop, so an async caller
    awaits it directly instead of sending it to a thread. ``batches``: the backend answers a
    batch in one pass (a student), so micro-batching concurrent requests and chunking an eval
    pays off; an LLM answers text by text and a batch would wait for its slowest call.
    ``prompted``: an LLM backend with a prompt template (``template``), prompt options and
    provider faults. ``routes``: the backend routes each request by its `Hints` (a router) and
    reports the router events of `llmclf.hooks.Event` through its `Backend.hooks`; other
    backends are handed no hints, so that concurrent requests to them can be micro-batched.

    Example:
        >>> Capabilities(batches=True).native_async
        False
    """

    native_async: bool = False
    batches: bool = False
    prompted: bool = False
    routes: bool = False


class Backend(ABC):
    """Answers classification requests for one task."""

    #: The spec a user would type for this backend, e.g. ``llm:local`` or ``setfit:models/sst2``.
    name: str
    task: Task
    #: What this kind of backend is; see `Capabilities`.
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The confidence below which a router's cascade should escalate this backend's answers
    #: (one number, or one per label), when calibrated: a distilled student's ``router.json``.
    escalation_threshold: float | dict[str, float] | None = None
    #: The calibrator applied to this backend's scores (`llmclf.calibration`), if any: its
    #: answers' confidences are then probabilities of being right.
    calibration: Calibration | None = None

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

    def microbatched(self, wrap: Callable[[str, Backend], Backend]) -> Backend:
        """This backend with the parts that answer a batch in one pass wrapped by ``wrap(name,
        backend)`` (the service's micro-batcher); returns what to call from now on.

        By default the whole backend is wrapped when it batches (``capabilities.batches``) and
        left alone otherwise (an LLM answers text by text: a batch would wait for its slowest
        call). A router wraps the named backends it micro-batches and returns itself.
        """
        return wrap(self.name, self) if self.capabilities.batches else self

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
