"""Review rows that are never lost: written to the store, or spooled while it is unreachable.

`ReviewWriter.add` writes a row (idempotent by ``request_id``) when the store answers; when it
cannot be reached (`llmclf.errors.StoreUnavailable`, or the store is known degraded) the row is
appended to this process's durable spool (`llmclf.storage.spool`, fsync'd, in
``$LLMCLF_HOME/spool/<store>/``) and the answer goes on. A background thread writes the spool to
the store when it returns (the store's probe says when; a failed flush backs off, doubling up to
5 s); at start-up it adopts
the spools that dead processes left. Each spooled row carries a ``request_id`` (one is made up
when the request had none), so a row written twice — a crash mid-flush, two processes — is
stored once.

Example:
    >>> writer = review_writer(store)                                    # doctest: +SKIP
    >>> writer.add("sst2", "meh", {"labels": ["negative"]}, request_id="r1")
    'stored'
    >>> writer.pending     # rows spooled, waiting for the store
    0
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmclf.errors import StoreError, StoreUnavailable
from llmclf.paths import home
from llmclf.storage.base import ACQUIRE_TIMEOUT
from llmclf.storage.spool import Spool
from llmclf.store import REQUEST_PATH_TIMEOUT_S, Store

__all__ = ["ReviewWriter", "review_writer", "spool_dir"]

log = logging.getLogger("llmclf.store")

_writers: weakref.WeakKeyDictionary[Store, ReviewWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def spool_dir(store: Store) -> Path:
    """``$LLMCLF_HOME/spool/<hash of the store's URL, without its password>``."""
    target = store.url.redacted
    if store.url.dialect == "sqlite" and store.url.path != ":memory:":
        target = "sqlite:///" + str(Path(store.url.path).resolve())
    digest = hashlib.sha256(target.encode()).hexdigest()[:16]
    return home() / "spool" / f"{store.dialect}-{digest}"


class ReviewWriter:
    """Review rows of one store from this process: stored, or spooled and flushed later.

    ``on_pending`` listeners get the number of rows spooled whenever it changes (the service's
    ``llmclf_review_spooled`` gauge)."""

    def __init__(
        self, store: Store, directory: str | Path | None = None, *, max_backoff_s: float = 5.0
    ) -> None:
        self.store = store
        self.spool = Spool(directory or spool_dir(store), prefix="review")
        self.max_backoff_s = max_backoff_s
        self.on_pending: list[Callable[[int], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.started = False

    @property
    def pending(self) -> int:
        """Rows spooled and not yet in the store."""
        return self.spool.pending

    def start(self) -> ReviewWriter:
        """Adopt the spools of processes that stopped, and flush in the background."""
        self.started = True
        if self.spool.adopt():
            self._notify()
            self._ensure_thread()
        return self

    def add(
        self, task: str, text: str, prediction: dict[str, Any], request_id: str | None = None
    ) -> str:
        """Store one row, or spool it: ``stored``, ``duplicate`` (its request id was stored
        already) or ``spooled``. Raises only for an error retrying cannot fix (`StoreError`)."""
        created = time.time()
        if self.spool.pending == 0 and self.store.health.allow():
            token = ACQUIRE_TIMEOUT.set(REQUEST_PATH_TIMEOUT_S)
            try:
                rid = self.store.review_add(task, text, prediction, request_id, created=created)
                return "stored" if rid else "duplicate"
            except (StoreUnavailable, sqlite3.OperationalError) as exc:  # SQLite: locked, I/O
                self.store.mark_unreachable(exc)
            finally:
                ACQUIRE_TIMEOUT.reset(token)
        # the store is down, or older rows wait in the spool: keep the order, spool this one
        entry = {"task": task, "text": text, "prediction": prediction, "created": created,
                 "request_id": request_id or f"spooled-{uuid.uuid4().hex}"}  # fmt: skip
        self.spool.append(entry)
        self._notify()
        self._ensure_thread()
        return "spooled"

    def flush(self) -> int:
        """Write every spooled row to the store now; the rows written. Raises
        `StoreUnavailable` when the store cannot be reached (what was not written stays)."""
        try:
            return self.spool.flush(self._write)
        finally:
            self._notify()

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            self.store.review_add(
                str(entry["task"]), str(entry["text"]), dict(entry["prediction"]),
                entry.get("request_id"), created=float(entry["created"]),
            )  # fmt: skip
        except (StoreUnavailable, sqlite3.OperationalError):
            raise
        except (StoreError, KeyError, TypeError, ValueError) as exc:  # refused for good
            self.spool.reject(entry, f"{type(exc).__name__}: {exc}")

    def _notify(self) -> None:
        n = self.spool.pending
        for listener in list(self.on_pending):
            with contextlib.suppress(Exception):
                listener(n)

    def _ensure_thread(self) -> None:
        self._wake.set()
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="llmclf-review-spool", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            if self.spool.pending == 0:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            if not self.store.health.ok:  # the store's probe says when it is back
                self._stop.wait(min(0.25, self.store.health.backoff_s))
                continue
            try:
                n = self.flush()
            except (StoreUnavailable, sqlite3.OperationalError) as exc:
                self.store.mark_unreachable(exc)
                self._stop.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            except Exception:  # never let the flusher die: the rows are on disk
                log.exception("review spool: flush failed")
                self._stop.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = 0.25
            if n:
                log.warning("review spool: %d row(s) written to %s", n, self.store.path)

    def close(self) -> None:
        """Stop the flusher (what is still spooled stays on disk for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.spool.close()


def review_writer(store: Store) -> ReviewWriter:
    """The process's writer for ``store`` (made, and started, on first use).

    Example:
        >>> review_writer(store).pending                                 # doctest: +SKIP
        0
    """
    with _writers_lock:
        writer = _writers.get(store)
        if writer is None:
            writer = _writers[store] = ReviewWriter(store)
    if not writer.started:
        writer.start()
    return writer
