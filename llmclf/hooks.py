"""Typed events a backend emits, and the handlers that listen (as instructor's ``core/hooks``).

Events are members of `Event`, never strings, so a typo is an ``AttributeError`` at import time,
not a handler that silently never runs. A handler that raises is logged and does not break the
request that emitted the event.

Example:
    >>> hooks = Hooks()
    >>> seen = []
    >>> hooks.on(Event.PROVIDER_FAULT, seen.append)
    >>> hooks.emit(Event.PROVIDER_FAULT, "rate_limit")
    >>> seen
    ['rate_limit']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

__all__ = ["Event", "Handler", "Hooks"]

log = logging.getLogger("llmclf.hooks")

Handler = Callable[..., None]


class Event(StrEnum):
    """Every event a backend can emit, with the arguments its handlers receive.

    A router (`llmclf.router.Router`) emits the events from ``BACKEND_CALL`` on through its own
    ``hooks``, for every policy of its tree; its stats, `llmclf.router.RouterListener` and the
    service's metrics are handlers of these.
    """

    #: ``(kind: str)``: a provider fault (a `llmclf.backends.llm.FAULT_KINDS` entry), retried or
    #: not, or an answer re-asked because it failed validation.
    PROVIDER_FAULT = "provider_fault"
    #: ``(backend: str, kind: str)``: a provider fault inside the router's backend ``backend``
    #: (its name in the router config), however deep (nested routers included).
    BACKEND_FAULT = "backend_fault"
    #: ``(backend: str, texts: int, seconds: float, error: BaseException | None)``: one call to
    #: one named backend finished (``error`` is None on success).
    BACKEND_CALL = "backend_call"
    #: ``(prediction: Prediction, *, arm: str | None, escalated: bool, cascade: bool)``: one text
    #: got its final answer; ``cascade``: it went through the cascade (student first),
    #: ``escalated``: past the student.
    ROUTED = "routed"
    #: ``(error: BaseException, texts: int, *, arm: str | None)``: a batch of texts could not be
    #: answered by any backend.
    FAILED = "failed"
    #: ``(texts: int)``: texts answered after a backend failed, or kept from the student after
    #: every escalation failed.
    FELL_BACK = "fell_back"
    #: ``(texts: int)``: texts whose student answer was kept to stay within the latency budget.
    BUDGET_KEPT = "budget_kept"
    #: ``(agreed: bool, stats: llmclf.router.ShadowStats)``: a shadow answer came back and was
    #: compared; ``stats`` is the sliding window after it.
    SHADOW_COMPARED = "shadow_compared"
    #: ``()``: a shadow request was dropped because the queue was full.
    SHADOW_DROPPED = "shadow_dropped"
    #: ``(prediction: Prediction)``: a low-confidence answer was stored in the review queue.
    REVIEWED = "reviewed"


class Hooks:
    """Handlers per `Event`, for one backend. Thread-safe; handlers run in the emitter's thread."""

    def __init__(self) -> None:
        self._handlers: dict[Event, list[Handler]] = {}
        self._lock = threading.Lock()

    def on(self, event: Event, handler: Handler) -> None:
        """Call ``handler(*args)`` every time ``event`` is emitted."""
        if not isinstance(event, Event):
            raise TypeError(f"not an llmclf Event: {event!r}")
        with self._lock:
            self._handlers.setdefault(event, []).append(handler)

    def off(self, event: Event, handler: Handler) -> None:
        """Stop calling ``handler`` for ``event`` (no error when it was not registered)."""
        if not isinstance(event, Event):
            raise TypeError(f"not an llmclf Event: {event!r}")
        with self._lock:
            handlers = self._handlers.get(event, [])
            if handler in handlers:
                handlers.remove(handler)

    def emit(self, event: Event, *args: Any, **kwargs: Any) -> None:
        """Call every handler of ``event``; a handler's exception is logged, never raised."""
        if not isinstance(event, Event):
            raise TypeError(f"not an llmclf Event: {event!r}")
        with self._lock:
            handlers = list(self._handlers.get(event, ()))
        for handler in handlers:  # a copy: a handler may subscribe others
            try:
                handler(*args, **kwargs)
            except Exception:
                log.exception("a handler of %s failed", event.value)
