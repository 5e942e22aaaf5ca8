"""`Review`: answers a `ReviewGate` picks are written to the review queue.

The gate's strategy (``threshold``, ``margin``, ``entropy``, ``disagreement`` with the shadow
backend), daily budget and per-label quotas are those of `llmclf.review_strategies`. With
``disagreement`` the row is written when the shadow backend's answer arrives (in the
background), with the shadow's labels next to the answer's.

Each row holds the text, the answer as the caller saw it (scores, route, reason) and the task's
labels, for ``llmclf review``. ``Hints.request_id`` makes the write idempotent (a retried
request is stored once; the i-th text of a batch gets ``<id>#<i>``). A store that cannot be
reached never fails or stalls the answer: the row is spooled durably and written when the store
returns (`llmclf.review_writer`). Each stored or spooled row emits `Event.REVIEWED`.

Example:
    >>> reviewed = Review(cascade, threshold=0.6, store=store, task=task)  # doctest: +SKIP
    >>> reviewed = Review(cascade, gate=ReviewGate(strategy="margin", threshold=0.2, budget=100),
    ...                   store=store, task=task)                           # doctest: +SKIP
    >>> reviewed.predict_batch(["meh"], Hints(request_id="r1"))
    >>> store.review_list(task="sst2")[0]["request_id"]
    'r1'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from llmclf.backends.base import Backend
from llmclf.hooks import Event, Hooks
from llmclf.review_strategies import ReviewGate
from llmclf.review_writer import review_writer
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.store import Store, open_store
from llmclf.types import Prediction, Task

__all__ = ["Review"]

log = logging.getLogger("llmclf.router")

#: (index in the batch, batch size, text, answer, the shadow's answer or None)
_Todo = tuple[int, int, str, Prediction, Prediction | None]


class Review(Policy):
    """Answers from ``inner``; stores those ``gate`` admits for review.

    ``threshold`` alone is the classic gate (``ReviewGate(strategy="threshold")``).
    ``store``: where (default: the store of ``$LLMCLF_HOME``, opened on the first write)."""

    def __init__(
        self,
        inner: Policy,
        *,
        task: Task,
        threshold: float | None = None,
        gate: ReviewGate | None = None,
        store: Store | None = None,
        name: str = "review",
        hooks: Hooks | None = None,
        router: str = "router",
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        if gate is None:
            if threshold is None:
                raise ValueError("Review needs a threshold or a gate")
            gate = ReviewGate(strategy="threshold", threshold=threshold)
        if gate.history is None:
            gate.history = self._history
        self.inner = inner
        self.gate = gate
        self.threshold = gate.threshold
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
        if self.gate.strategy == "disagreement" and not self.gate.quotas:
            return answers  # rows come from `on_shadow_compared`
        quotas = bool(self.gate.quotas)
        todo: list[_Todo] = []
        for i, (text, a) in enumerate(zip(texts, answers, strict=True)):
            p = a.prediction
            if quotas or self.gate.wants(p.labels, p.scores, None, p.confidence) is not None:
                todo.append((i, len(texts), text, a.finish(), None))
        if todo:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._io, self._write, todo, ctx.hints.request_id)
        return answers

    def on_shadow_compared(
        self, text: str, answer: Prediction, shadow: Prediction, request_id: str | None
    ) -> None:
        """The shadow backend answered ``text``: queue it when the gate wants (disagreement)."""
        if set(shadow.labels) == set(answer.labels):
            return  # quotas are met from the answers themselves (`route`)
        with contextlib.suppress(RuntimeError):  # closed
            self._io.submit(self._write, [(0, 1, text, answer, shadow)], request_id)

    @property
    def store(self) -> Store:
        """Where the rows go (the default store is opened on first use)."""
        return self._open()

    def _open(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self._store = open_store()
            return self._store

    def _history(self, day_start: float) -> Iterable[Sequence[str]]:
        try:
            return self._open().review_labels_since(self.task.name, day_start)
        except Exception as exc:  # the store is down: count today's budget from here
            log.error("router %s: cannot read today's review rows (budget counted from now): "
                      "%s", self.router, exc)  # fmt: skip
            return []

    def _write(
        self,
        todo: list[_Todo],
        request_id: str | None,
    ) -> None:
        try:
            writer = review_writer(self._open())
        except Exception as exc:
            log.error("router %s: cannot open the review store: %s", self.router, exc)
            return
        task_info = {
            "name": self.task.name,
            "kind": self.task.kind,
            "labels": list(self.task.label_names),
        }
        for i, n, text, p, shadow in todo:
            shadow_labels = list(shadow.labels) if shadow is not None else None
            try:
                decision = self.gate.admit(p.labels, p.scores, shadow_labels, p.confidence)
            except Exception as exc:  # the day's history could not be read
                log.error("router %s: review gate failed: %s", self.router, exc)
                continue
            if not decision.admitted:
                continue
            rid = request_id
            if rid is not None and n > 1:
                rid = f"{rid}#{i}"
            record = {**p.to_json_dict(), "task": task_info, "review_reason": decision.reason,
                      "review_strategy": self.gate.strategy}  # fmt: skip
            if shadow is not None:
                record["shadow"] = {
                    "backend": shadow.backend,
                    "labels": list(shadow.labels),
                    "scores": dict(shadow.scores),
                }
            try:
                writer.add(self.task.name, text, record, request_id=rid)
            except Exception as exc:  # StoreError, sqlite3.Error, OSError: never fail the answer
                log.error("router %s: cannot write to the review queue: %s", self.router, exc)
                continue
            self.hooks.emit(Event.REVIEWED, p)

    def close(self) -> None:
        """Finish the writes under way."""
        self._io.shutdown(wait=True)
