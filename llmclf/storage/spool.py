"""A durable spool: JSON lines appended (and fsync'd) to files while the store cannot take them.

Each process appends to its own *segment* files (``<prefix>-<pid>-<random>-<n>.jsonl``) and holds
an exclusive ``flock`` on each until it has written the segment's entries to the store and
deleted it. The kernel releases those locks when the process dies (``kill -9`` included), so
another process — the restarted service, another worker — finds the dead one's segments
unlocked and `adopt`\\ s them. A segment is deleted only after every entry in it was written, so
a crash mid-flush loses nothing; it writes some entries again, which is harmless because the
writer is idempotent (review rows by ``request_id``).

A line cut short by a crash mid-append (the answer it belonged to was never sent) or otherwise
unreadable is logged with its file and line and copied to ``rejected.jsonl``, never silently
dropped, and never blocks the lines after it.

Example:
    >>> import tempfile
    >>> spool = Spool(tempfile.mkdtemp())
    >>> spool.append({"request_id": "r1"}); spool.pending
    1
    >>> spool.flush(lambda entry: None), spool.pending
    (1, 0)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REJECTED", "Spool"]

log = logging.getLogger("llmclf.store")

#: Where unreadable lines are copied, in the spool's directory.
REJECTED = "rejected.jsonl"


@dataclass
class _Segment:
    path: Path
    fd: int  # open, holding the flock
    entries: int


class Spool:
    """This process's spool in ``directory``; thread-safe.

    ``pending``: entries appended or adopted and not yet flushed."""

    def __init__(self, directory: str | Path, *, prefix: str = "spool") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._pending = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._reported: set[str] = set()  # segments whose bad lines were already reported

    @property
    def pending(self) -> int:
        return self._pending

    # -- appending ------------------------------------------------------------------------------
    def append(self, entry: dict[str, Any]) -> None:
        """Write ``entry`` as one line and fsync it: on return it survives a crash."""
        data = (json.dumps(entry, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")
        with self._lock:
            if self._current is None:
                self._current = self._new_segment()
            seg = self._current
            view = memoryview(data)
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
            os.fsync(seg.fd)
            seg.entries += 1
            self._pending += 1

    def _new_segment(self) -> _Segment:
        self._seq += 1
        path = self.dir / f"{self.prefix}-{self._tag}-{self._seq}.jsonl"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._sync_dir()
        return _Segment(path, fd, 0)

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- taking over the segments of dead processes ---------------------------------------------
    def adopt(self) -> int:
        """Take over the segments no live process holds (their writer died); the entries
        adopted, now part of `pending`."""
        with self._lock:
            mine = {s.path.name for s in self._sealed}
            if self._current is not None:
                mine.add(self._current.path.name)
        adopted = 0
        for path in sorted(self.dir.glob(f"{self.prefix}-*.jsonl")):
            if path.name in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # flushed and deleted by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # still the file at that path (not one another process flushed and unlinked)?
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)
            except (BlockingIOError, FileNotFoundError):  # alive, or gone
                os.close(fd)
                continue
            n = len(self._read(path, report=False))
            log.warning("spool: adopted %s (%d entries) from a process that stopped", path, n)
            with self._lock:
                self._sealed.append(_Segment(path, fd, n))
                self._pending += n
            adopted += n
        return adopted

    # -- flushing -------------------------------------------------------------------------------
    def flush(self, write: Callable[[dict[str, Any]], None]) -> int:
        """Call ``write`` on every pending entry, oldest segment first; each segment is deleted
        once all its entries are written. An exception from ``write`` stops the flush (and is
        raised): the unfinished segment stays, to be flushed again. Returns the entries written.
        """
        written = 0
        with self._flush_lock:
            with self._lock:  # new appends go to a new segment
                if self._current is not None:
                    self._sealed.append(self._current)
                    self._current = None
                todo = list(self._sealed)
            for seg in todo:
                report = seg.path.name not in self._reported
                self._reported.add(seg.path.name)
                for entry in self._read(seg.path, report=report):
                    write(entry)
                    written += 1
                seg.path.unlink()
                self._sync_dir()
                os.close(seg.fd)  # releases the flock
                with self._lock:
                    self._sealed.remove(seg)
                    self._pending -= seg.entries
        return written

    def _read(self, path: Path, *, report: bool) -> list[dict[str, Any]]:
        """The entries of a segment; with ``report``, unreadable lines are logged and copied
        to `REJECTED`."""
        raw = path.read_bytes()
        out: list[dict[str, Any]] = []
        lines = raw.split(b"\n")
        for i, line in enumerate(lines, 1):
            last = i == len(lines)
            if not line.strip():
                continue
            try:
                entry = json.loads(line) if not last else None  # a last line has no newline
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object" if not last else "no newline at the end")
            except ValueError as exc:
                if report:
                    why = "partial last line (a crash mid-write?)" if last else f"corrupt: {exc}"
                    log.error("spool %s:%d: %s; skipped, copied to %s", path, i, why,
                              self.dir / REJECTED)  # fmt: skip
                    self._reject(path, i, line)
                continue
            out.append(entry)
        return out

    def _reject(self, path: Path, line_no: int, line: bytes) -> None:
        record = {"file": path.name, "line": line_no,
                  "raw": line.decode("utf-8", errors="replace")}  # fmt: skip
        with open(self.dir / REJECTED, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reject(self, entry: dict[str, Any], reason: str) -> None:
        """Set aside an entry the store refuses for good (not a transient error), with why."""
        log.error("spool %s: entry refused by the store, copied to %s: %s",
                  self.dir, REJECTED, reason)  # fmt: skip
        with open(self.dir / REJECTED, "a", encoding="utf-8") as f:
            f.write(json.dumps({"entry": entry, "reason": reason}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """Release this process's segments (kept on disk for the next process to adopt)."""
        with self._lock:
            segs = self._sealed + ([self._current] if self._current is not None else [])
            self._sealed, self._current = [], None
            self._pending = 0
        for seg in segs:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
