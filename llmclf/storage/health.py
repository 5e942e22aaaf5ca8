"""Whether the store answers now: a small circuit breaker the request path consults.

After a failure the store is *degraded*: request-path calls skip it (the cache is not read, review
writes go to the spool) instead of each waiting on a dead server; a background probe (see
`llmclf.store.Store.degradable`) retries with a backoff that doubles up to ``max_backoff_s``,
and the first success makes it healthy again.

Example:
    >>> h = StoreHealth("postgresql://app:***@db/llmclf")
    >>> h.failed(OSError("connection refused")); h.ok, h.allow()
    (False, False)
    >>> h.succeeded(); h.snapshot()["ok"]
    True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["StoreHealth"]

log = logging.getLogger("llmclf.store")


class StoreHealth:
    """The store's state as the last calls found it; thread-safe.

    ``on_error`` listeners are called (with the error's class name) on every failure: the
    service counts them in ``llmclf_store_errors_total``."""

    def __init__(
        self, display: str, *, min_backoff_s: float = 0.25, max_backoff_s: float = 5.0
    ) -> None:
        self.display = display
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.ok = True
        self.error: str | None = None
        self.since: float | None = None  # when it became degraded (time.time())
        self.errors_total = 0
        self.on_error: list[Callable[[str], None]] = []
        self._backoff = min_backoff_s
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether the request path may call the store now (only while it is healthy)."""
        return self.ok

    @property
    def backoff_s(self) -> float:
        """How long the probe waits before its next try."""
        return self._backoff

    def succeeded(self) -> None:
        """A call worked: healthy again."""
        if self.ok:
            return
        with self._lock:
            was = self.error
            self.ok, self.error, self.since = True, None, None
            self._backoff = self.min_backoff_s
        log.warning("store %s is reachable again (it was degraded: %s)", self.display, was)

    def failed(self, exc: BaseException) -> None:
        """A call failed: degraded, next probe after the backoff."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._lock:
            first = self.ok
            self.ok = False
            self.error = message
            self.errors_total += 1
            if first:
                self.since = time.time()
            else:
                self._backoff = min(self.max_backoff_s, self._backoff * 2)
        if first:
            log.error("store %s is unreachable, degrading (no cache, review writes spooled): %s",
                      self.display, message)  # fmt: skip
        for listener in list(self.on_error):
            try:
                listener(type(exc).__name__)
            except Exception:  # a metric must never break the request path
                log.exception("store error listener failed")

    def snapshot(self) -> dict[str, Any]:
        """``{"ok", "error", "since"}`` as ``/healthz`` shows it."""
        with self._lock:
            return {"ok": self.ok, "error": self.error, "since": self.since}
