"""`Slot`: one named backend of a router — its timeout, its concurrency, its latency so far.

Every call a router makes to a backend goes through its slot: the slot runs the call (awaited
directly when the backend is ``native_async``, else on the slot's own bounded thread pool), cuts
it at the slot's timeout or the request's deadline, checks the answer count, keeps a moving
average of the latency (the cascade's budget estimate) and emits `Event.BACKEND_CALL`. Provider
faults anywhere below the slot (a nested router's LLM too) are re-emitted on the router's hooks
as `Event.BACKEND_FAULT` under the slot's name, the name metrics label them with.

Example:
    >>> slot = Slot("llm", make_backend("llm:local", task), timeout_s=30)    # doctest: +SKIP
    >>> slot.predict_batch(["fine"])[0].route
    ('llm',)
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmclf.backends.base import Backend
from llmclf.errors import BackendError, BackendTimeout
from llmclf.hooks import Event, Hooks
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.types import Prediction

__all__ = ["Slot"]


class Slot(Policy):
    """The backend a router config names ``name``, called with a timeout and bounded threads."""

    def __init__(
        self,
        name: str,
        backend: Backend,
        *,
        timeout_s: float | None = None,
        concurrency: int = 16,
        microbatch: bool = False,
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(name=name, task=backend.task, hooks=hooks)
        self.backend = backend
        self.timeout_s = timeout_s
        self.microbatch = microbatch
        self.executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"llmclf-{name}"
        )
        self._latency_s: float | None = None  # moving average of successful calls
        self._relay_faults(backend)

    def _relay_faults(self, backend: Backend) -> None:
        for b in backend.walk():
            if b.capabilities.prompted:
                b.hooks.on(Event.PROVIDER_FAULT, self._on_fault)

    def _on_fault(self, kind: str) -> None:
        self.hooks.emit(Event.BACKEND_FAULT, self.name, kind)

    # -- Backend --------------------------------------------------------------------------------
    def children(self) -> Sequence[Backend]:
        return (self.backend,)

    def wrap(self, wrap: Callable[[Backend], Backend]) -> Backend:
        """Replace the backend by ``wrap(backend)`` (e.g. a micro-batcher); returns it."""
        self.backend = wrap(self.backend)
        return self.backend

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def latency_s(self) -> float | None:
        return self._latency_s

    # -- routing --------------------------------------------------------------------------------
    def timeout_for(self, ctx: RouteContext) -> float | None:
        """The slot's timeout, cut at the request's deadline when ``ctx.capped``."""
        remaining = ctx.remaining_s() if ctx.capped else None
        if remaining is None:
            return self.timeout_s
        return remaining if self.timeout_s is None else min(self.timeout_s, remaining)

    async def call(self, texts: list[str], ctx: RouteContext) -> list[Prediction]:
        """The backend's predictions for ``texts``; `BackendTimeout` past the timeout."""
        timeout = self.timeout_for(ctx)
        backend = self.backend
        # a router below gets the request's key, id and deadline; any other backend gets no
        # hints, so that concurrent requests to it can share one micro-batch
        hints = ctx.hints.for_nested() if backend.capabilities.routes else None
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            if timeout is not None and timeout <= 0:
                raise BackendTimeout("no time left in the latency budget", backend=self.name)
            if backend.capabilities.native_async:
                coro: Any = backend.apredict_batch(texts, hints)
            else:
                loop = asyncio.get_running_loop()
                coro = loop.run_in_executor(
                    self.executor, functools.partial(backend.predict_batch, texts, hints)
                )
            try:
                preds = await (asyncio.wait_for(coro, timeout) if timeout is not None else coro)
            except TimeoutError:
                raise BackendTimeout(
                    f"no answer within {timeout * 1000:.0f} ms",  # type: ignore[operator]
                    backend=self.name,
                ) from None
            if len(preds) != len(texts):
                raise BackendError(
                    f"returned {len(preds)} predictions for {len(texts)} texts", backend=self.name
                )
            return list(preds)
        except Exception as exc:
            error = exc
            raise
        finally:
            seconds = time.perf_counter() - t0
            if error is None:
                last = self._latency_s
                self._latency_s = seconds if last is None else 0.8 * last + 0.2 * seconds
            self.hooks.emit(Event.BACKEND_CALL, self.name, len(texts), seconds, error)

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        preds = await self.call(texts, ctx)
        # a slot decides nothing: the policy above it gives the reason; a leaf backend's own
        # note (an LLM's shortlist) rides along as the detail (a nested router's is its reason)
        leaf = not self.backend.capabilities.routes
        return [
            Routed(
                p, by=self.name, route=[self.name], reason="",
                detail=p.route_reason if leaf else None,
            )
            for p in preds
        ]  # fmt: skip
