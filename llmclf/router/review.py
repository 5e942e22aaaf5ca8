"""`Review`: answers below a confidence threshold are written to the review queue.

Each row holds the text, the answer as the caller saw it (scores, route, reason) and the task's
labels, for ``llmclf review``. ``Hints.request_id`` makes the write idempotent (a retried
request is stored once; the i-th text of a batch gets ``<id>#<i>``). A store that cannot be
written is logged and never fails the answer. Each stored row emits `Event.REVIEWED`.

Example:
    >>> reviewed = Review(cascade, threshold=0.6, store=store, task=task)  # doctest: +SKIP
    >>> reviewed.predict_batch(["meh"], Hints(request_id="r1"))
    >>> store.review_list(task="sst2")[0]["request_id"]
    'r1'
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from llmclf.backends.base import Backend, Hints
from llmclf.hooks import Event, Hooks
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.store import Store, open_store
from llmclf.types import Prediction, Task

__all__ = ["Review"]

log = logging.getLogger("llmclf.router")


class Review(Policy):
    """Answers from ``inner``; stores those with confidence below ``threshold`` for review.

    ``store``: where (default: the store of ``$LLMCLF_HOME``, opened on the first write)."""

    def __init__(
        self,
        inner: Policy,
        *,
        threshold: float,
        task: Task,
        store: Store | None = None,
        name: str = "review",
        hooks: Hooks | None = None,
        router: str = "router",
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        self.inner = inner
        self.threshold = threshold
        self.router = router  # for log lines
        self._store = store
        self._store_lock = threading.Lock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-review")

    def children(self) -> Sequence[Backend]:
        return (self.inner,)

    @property
    def latency_s(self) -> float | None:
        return self.inner.latency_s

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        answers = await self.inner.route(texts, ctx)
        ctx.settle(answers)
        todo = [
            (i, len(texts), text, a.finish())
            for i, (text, a) in enumerate(zip(texts, answers, strict=True))
            if a.prediction.confidence < self.threshold
        ]
        if todo:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._io, self._write, todo, ctx.hints)
        return answers

    def _write(self, todo: list[tuple[int, int, str, Prediction]], hints: Hints) -> None:
        with self._store_lock:
            if self._store is None:
                self._store = open_store()
            store = self._store
        task_info = {
            "name": self.task.name,
            "kind": self.task.kind,
            "labels": list(self.task.label_names),
        }
        for i, n, text, p in todo:
            rid = hints.request_id
            if rid is not None and n > 1:
                rid = f"{rid}#{i}"
            record = {**p.to_json_dict(), "task": task_info}
            try:
                store.review_add(self.task.name, text, record, request_id=rid)
            except Exception as exc:  # StoreError, sqlite3.Error, OSError: never fail the answer
                log.error("router %s: cannot write to the review queue: %s", self.router, exc)
                continue
            self.hooks.emit(Event.REVIEWED, p)

    def close(self) -> None:
        """Finish the writes under way."""
        self._io.shutdown(wait=True)
