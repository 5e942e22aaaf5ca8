"""Micro-batching: concurrent requests to one backend are merged into one ``predict_batch`` call.

`MicroBatcher` wraps any `Backend`. Async callers (the service's request handlers) queue their
texts; a worker task on the event loop takes what is queued once the oldest text has waited
``max_wait_ms`` (about 2 ms) or ``max_batch`` texts are queued, and runs one
``predict_batch`` on a dedicated thread. While that call runs, the next batch fills up, so the
batch size grows with the load and the wait stays bounded. Texts with different hints are never
put in one call. Sync callers (``predict_batch``) go straight to the wrapped backend.

Example:
    >>> batcher = MicroBatcher(student, max_wait_ms=2, max_batch=64)    # doctest: +SKIP
    >>> preds = await asyncio.gather(*(batcher.apredict_batch([t]) for t in texts))
    >>> batcher.batch_sizes                                             # doctest: +SKIP
    Counter({16: 3, 9: 1})
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.errors import BackendError
from llmclf.types import Prediction

log = logging.getLogger("llmclf.service.batching")


@dataclass
class _Item:
    text: str
    hints: Hints | None
    future: asyncio.Future[Prediction]
    queued: float


class MicroBatcher(Backend):
    """Merges concurrent async requests to ``inner`` into batches (bounded wait, bounded size).

    ``on_batch(size)`` is called after every batch (the service counts sizes in /metrics);
    ``batch_sizes`` counts them too.
    """

    #: `apredict_batch` never blocks the loop: a router awaits it directly.
    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True, batches=True)

    def __init__(
        self,
        inner: Backend,
        *,
        max_wait_ms: float = 2.0,
        max_batch: int = 64,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and workers must be >= 1 and max_wait_ms >= 0")
        self.inner = inner
        self.name = inner.name
        self.task = inner.task
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch = max_batch
        self.workers = workers
        self.on_batch = on_batch
        self.batch_sizes: Counter[int] = Counter()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmclf-batch")
        self._pending: deque[_Item] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- Backend --------------------------------------------------------------------------------
    def children(self) -> Sequence[Backend]:
        return (self.inner,)

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        return self.inner.predict_batch(texts, hints)

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        if self._closed:
            raise BackendError("the micro-batcher is closed", backend=self.name)
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._start(loop)
        elif self._loop is not loop or len(texts) >= self.max_batch:
            # another loop (e.g. a sync caller's), or already a full batch: call directly
            preds = await loop.run_in_executor(
                self._executor, self.inner.predict_batch, list(texts), hints
            )
            self._record(len(texts))
            return preds
        assert self._wakeup is not None and self._full is not None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        now = time.perf_counter()
        items = [_Item(t, hints, loop.create_future(), now) for t in texts]
        self._pending.extend(items)
        self._wakeup.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return list(await asyncio.gather(*(i.future for i in items)))

    def close(self) -> None:
        self._closed = True
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._worker.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.inner.close()

    # -- internals ------------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._free = asyncio.Semaphore(self.workers)
        self._pending.clear()
        self._worker = loop.create_task(self._run())

    def _record(self, size: int) -> None:
        self.batch_sizes[size] += 1
        if self.on_batch is not None:
            try:
                self.on_batch(size)
            except Exception:
                log.exception("on_batch hook failed")

    async def _run(self) -> None:
        assert self._wakeup is not None and self._full is not None and self._free is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._free.acquire()
                try:
                    await self._fill(loop)
                    batch = self._take()
                except BaseException:
                    self._free.release()
                    raise
                if not batch:
                    self._free.release()
                    continue
                task = loop.create_task(self._dispatch(loop, batch))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the oldest queued text has waited ``max_wait`` or the batch is full."""
        assert self._full is not None
        while self._pending and len(self._pending) < self.max_batch:
            left = self._pending[0].queued + self.max_wait_s - time.perf_counter()
            if left <= 0:
                return
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item.future.done():  # a cancelled caller (timeout) needs no answer
                batch.append(item)
        if len(self._pending) < self.max_batch and self._full is not None:
            self._full.clear()
        return batch

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        assert self._free is not None
        try:
            groups: dict[Hints | None, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.hints, []).append(item)
            for hints, items in groups.items():
                texts = [i.text for i in items]
                try:
                    preds = await loop.run_in_executor(
                        self._executor, self.inner.predict_batch, texts, hints
                    )
                    if len(preds) != len(texts):
                        raise BackendError(
                            f"returned {len(preds)} predictions for {len(texts)} texts",
                            backend=self.name,
                        )
                except Exception as exc:
                    for i in items:
                        if not i.future.done():
                            i.future.set_exception(exc)
                    continue
                finally:
                    self._record(len(texts))
                for i, p in zip(items, preds, strict=True):
                    if not i.future.done():
                        i.future.set_result(p)
        finally:
            self._free.release()
