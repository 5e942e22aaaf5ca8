"""One resumable job runner: bounded concurrency, each result committed, resume by key.

`run_job` asks a backend about many texts (an eval set's cases, a distillation's unlabelled
texts) with at most ``concurrency`` requests in flight, hands every answer to ``commit`` in the
calling thread as soon as it arrives (the caller writes it to the store at once, so a crash
loses at most the requests in flight), skips the items whose key is already done (a resumed
job asks only for what is missing) and draws one progress bar (`JobProgress`: count, ETA,
tokens, cost, cache hits).

A request that raises `BackendError` (after the backend's own retries) or `InputTextError`
becomes an `Outcome` with ``error`` set; a failed batch is asked again text by text, so one bad
text never costs its neighbours their answers. Any other exception is a bug: it stops the job
without waiting for the requests in flight, and what was committed stays.

Example:
    >>> done = store_keys_already_answered()                             # doctest: +SKIP
    >>> counts = run_job(cases, backend.predict_batch, commit=save, key=lambda c: c.id,
    ...                  done=done, total=len(cases), label="sst2", concurrency=4)
    >>> counts.resumed, counts.new, counts.failed
    (120, 80, 0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from llmclf.errors import BackendError, ConfigError, InputTextError
from llmclf.types import Prediction

__all__ = ["JobCounts", "JobProgress", "Outcome", "run_job"]


class HasText(Protocol):
    """An item of a job: anything with the ``text`` to ask about."""

    @property
    def text(self) -> str: ...


T = TypeVar("T", bound=HasText)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The answer for one item: a prediction, or the error that stood in its way."""

    item: T
    prediction: Prediction | None = None
    error: BackendError | InputTextError | None = None


@dataclass
class JobCounts:
    """How a job went: items skipped as already done, answered now, and failed now."""

    resumed: int = 0
    new: int = 0
    failed: int = 0


class JobProgress:
    """The progress bar of a job (rich, on stderr): label, bar, n/total, elapsed, ETA, tokens,
    cost and cache hits; a no-op when disabled.

    Example:
        >>> with JobProgress(True, "labelling", total=400) as bar:       # doctest: +SKIP
        ...     bar.advance(prediction)
    """

    def __init__(self, enabled: bool, label: str, *, total: int, done: int = 0) -> None:
        self.tokens = 0
        self.cost: float | None = None
        self.cached = 0
        self._bar: Any = None
        self._tid: Any = None
        self._stack = contextlib.ExitStack()
        if enabled:
            from llmclf.progress import open_bar

            self._bar, self._tid = open_bar(
                self._stack, label, total=total, done=done, stats=self.stats()
            )

    def stats(self) -> str:
        """The free-text field of the bar: ``1,234 tokens · $0.0012 · 3 cached``."""
        cost = "-" if self.cost is None else f"${self.cost:.4f}"
        return f"{self.tokens:,} tokens · {cost} · {self.cached} cached"

    def advance(self, pred: Prediction | None = None) -> None:
        """One more item done (its prediction, when it has one, adds to the stats)."""
        if pred is not None:
            self.tokens += pred.usage.prompt_tokens + pred.usage.completion_tokens
            if pred.usage.cost_usd is not None:
                self.cost = (self.cost or 0.0) + pred.usage.cost_usd
            self.cached += int(pred.cached)
        if self._bar is not None:
            self._bar.update(self._tid, advance=1, stats=self.stats())

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ask(predict: Callable[[list[str]], Sequence[Prediction]], batch: list[T]) -> list[Outcome[T]]:
    try:
        got = predict([item.text for item in batch])
        return [Outcome(item, prediction=p) for item, p in zip(batch, got, strict=True)]
    except (BackendError, InputTextError) as exc:
        if len(batch) > 1:  # find which text failed: ask one by one
            return [o for item in batch for o in _ask(predict, [item])]
        return [Outcome(batch[0], error=exc)]


def run_job(
    items: Iterable[T],
    predict: Callable[[list[str]], Sequence[Prediction]],
    commit: Callable[[Outcome[T]], None],
    *,
    total: int,
    label: str,
    key: Callable[[T], str] | None = None,
    done: Container[str] = frozenset(),
    batch_size: int = 1,
    concurrency: int = 4,
    stop: Callable[[], bool] | None = None,
    progress: bool = True,
    thread_name: str = "llmclf-job",
) -> JobCounts:
    """Ask ``predict`` about every item not already ``done`` (by ``key``); see the module
    docstring. ``predict`` gets the texts of one batch (``batch_size`` items; 1 for an LLM,
    which the job's concurrency keeps busy) and returns one prediction each. ``commit`` runs in
    the calling thread, once per item, in the order answers arrive. ``stop()`` is asked before
    each new request; when it says True no more are sent and the job ends after those in
    flight (e.g. when the backend keeps failing). ``total`` sizes the progress bar.
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    counts = JobCounts()
    bar = JobProgress(progress, label, total=total)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=thread_name)
    pending: set[Future[list[Outcome[T]]]] = set()
    interrupted = True

    def collect() -> None:
        """Wait for at least one request in flight and commit what it answered."""
        nonlocal pending
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            for outcome in fut.result():
                commit(outcome)
                if outcome.error is None:
                    counts.new += 1
                else:
                    counts.failed += 1
                bar.advance(outcome.prediction)

    def submit(batch: list[T]) -> None:
        pending.add(pool.submit(_ask, predict, batch))
        while len(pending) >= concurrency * 2:
            collect()

    try:
        batch: list[T] = []
        stopped = False
        for item in items:
            if key is not None and key(item) in done:
                counts.resumed += 1
                bar.advance()
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                if stop is not None and stop():
                    stopped = True
                    break
                submit(batch)
                batch = []
        if batch and not stopped and not (stop is not None and stop()):
            submit(batch)
        while pending:
            collect()
        interrupted = False
    finally:
        bar.close()
        for fut in pending:
            fut.cancel()
        # after an interruption, do not wait for the requests still in flight
        pool.shutdown(wait=not interrupted, cancel_futures=True)
    return counts
