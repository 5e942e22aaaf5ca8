"""`Shadow`: a share of the answered texts also goes to a shadow backend, off the request path.

Background threads take texts from a bounded queue (a full queue drops the text and counts it:
the answer is never delayed), ask the shadow backend and compare its labels with the answer's.
Agreement over a sliding window is the drift signal (`ShadowStats`); a warning is logged when
it falls below ``warn_below``. Each comparison emits `Event.SHADOW_COMPARED` with the window
after it, each drop `Event.SHADOW_DROPPED`.

Example:
    >>> shadowed = Shadow(cascade, llm, ShadowConfig(backend="llm", share=0.02),
    ...                   task=task)                                     # doctest: +SKIP
    >>> shadowed.stats().agreement
    0.96
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmclf.backends.base import Backend
from llmclf.hooks import Event, Hooks
from llmclf.router.config import ShadowConfig
from llmclf.router.policy import Policy, RouteContext, Routed, short_error
from llmclf.types import Prediction, Task

#: Called with (text, the answer, the shadow's answer, the request id) after each comparison.
ComparedListener = Callable[[str, Prediction, Prediction, str | None], None]

__all__ = ["Shadow", "ShadowStats"]

log = logging.getLogger("llmclf.router")


@dataclass(frozen=True)
class ShadowStats:
    """Shadow-traffic agreement over the sliding window: the drift signal."""

    backend: str
    agreement: float | None
    samples: int
    window: int
    sent: int
    completed: int
    dropped: int
    errors: int
    warn_below: float

    @property
    def below_threshold(self) -> bool:
        return self.agreement is not None and self.agreement < self.warn_below


@dataclass(frozen=True)
class _Item:
    text: str
    labels: tuple[str, ...]
    answer: Routed | None
    request_id: str | None


class Shadow(Policy):
    """Answers from ``inner``; sends ``cfg.share`` of them to ``shadow`` too, in the background.

    Texts that ``inner`` answered from the shadow backend itself are not sent."""

    def __init__(
        self,
        inner: Policy,
        shadow: Backend,
        cfg: ShadowConfig,
        *,
        task: Task,
        seed: int | None = None,
        name: str = "shadow",
        hooks: Hooks | None = None,
        router: str = "router",
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        self.inner = inner
        self.shadow = shadow
        self.cfg = cfg
        self.router = router  # for log lines
        self._queue: queue.Queue[_Item | None] = queue.Queue(cfg.queue_size)
        self._listeners: list[ComparedListener] = []
        self._window: deque[bool] = deque(maxlen=cfg.window)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.sent = self.completed = self.dropped = self.errors = 0
        self._warned = False
        self._threads = [
            threading.Thread(target=self._work, name=f"llmclf-shadow-{i}", daemon=True)
            for i in range(cfg.workers)
        ]
        for t in self._threads:
            t.start()

    def children(self) -> Sequence[Backend]:
        return (self.inner, self.shadow)

    @property
    def latency_s(self) -> float | None:
        return self.inner.latency_s

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        answers = await self.inner.route(texts, ctx)
        rid = ctx.hints.request_id
        for i, (text, a) in enumerate(zip(texts, answers, strict=True)):
            if a.by != self.cfg.backend:
                item_rid = f"{rid}#{i}" if rid is not None and len(texts) > 1 else rid
                self.maybe_send(text, a.prediction.labels, a, item_rid)
        return answers

    def on_compared(self, listener: ComparedListener) -> None:
        """Call ``listener(text, answer, shadow_answer, request_id)`` after each comparison
        (on a shadow worker thread; the review queue's ``disagreement`` strategy uses it)."""
        self._listeners.append(listener)

    def maybe_send(
        self,
        text: str,
        labels: tuple[str, ...],
        answer: Routed | None = None,
        request_id: str | None = None,
    ) -> None:
        """Queue ``text`` for the shadow backend with probability ``share`` (dropped when full)."""
        with self._lock:
            if self.cfg.share <= 0.0 or self._rng.random() >= self.cfg.share:
                return
        try:
            self._queue.put_nowait(_Item(text, labels, answer, request_id))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self.hooks.emit(Event.SHADOW_DROPPED)
            return
        with self._lock:
            self.sent += 1

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            text, labels = item.text, item.labels
            try:
                (pred,) = self.shadow.predict_batch([text], None)
            except Exception as exc:
                with self._lock:
                    self.errors += 1
                log.debug("shadow backend %s failed: %s", self.cfg.backend, short_error(exc))
                continue
            agreed = set(pred.labels) == set(labels)
            with self._lock:
                self.completed += 1
                self._window.append(agreed)
                samples = len(self._window)
                agreement = sum(self._window) / samples
                warn = (
                    samples >= min(self.cfg.min_samples, self.cfg.window)
                    and agreement < self.cfg.warn_below
                )
                newly_below = warn and not self._warned
                self._warned = warn
                if newly_below:  # under the lock: stats() never shows a drop not yet logged
                    log.warning(
                        "router %s: shadow agreement with %s fell to %.3f over the last %d "
                        "texts (below %.2f): the student may be drifting",
                        self.router, self.cfg.backend, agreement, samples, self.cfg.warn_below,
                    )  # fmt: skip
                stats = self._stats_locked()
            self.hooks.emit(Event.SHADOW_COMPARED, agreed, stats)
            if item.answer is not None:
                answer = item.answer.finish()
                for listener in self._listeners:
                    try:
                        listener(text, answer, pred, item.request_id)
                    except Exception as exc:  # a listener never stops the shadow worker
                        log.error("shadow listener failed: %s", short_error(exc))

    def _stats_locked(self) -> ShadowStats:
        samples = len(self._window)
        return ShadowStats(
            backend=self.cfg.backend,
            agreement=(sum(self._window) / samples) if samples else None,
            samples=samples,
            window=self.cfg.window,
            sent=self.sent,
            completed=self.completed,
            dropped=self.dropped,
            errors=self.errors,
            warn_below=self.cfg.warn_below,
        )

    def stats(self) -> ShadowStats:
        """Agreement over the sliding window and the traffic counters."""
        with self._lock:
            return self._stats_locked()

    def close(self) -> None:
        """Drop what is still queued and stop the workers (after their current request)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
