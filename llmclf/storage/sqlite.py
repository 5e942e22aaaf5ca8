"""The SQLite dialect: one file in WAL mode, a connection per thread, ``BEGIN IMMEDIATE`` writes.

Every write is one transaction, so a crash or a ``kill -9`` leaves either the whole row or
nothing, and many threads and processes can share the file (writers queue on the busy timeout).

Example:
    >>> db = SQLiteDatabase(":memory:")
    >>> with db.transaction() as tx:
    ...     _ = tx.execute("CREATE TABLE t (x INTEGER)")
    ...     _ = tx.execute("INSERT INTO t VALUES (?)", (1,))
    >>> db.read("SELECT x FROM t")
    [(1,)]
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["SQLiteDatabase"]


class SQLiteDatabase:
    """One SQLite file (or ``:memory:``, one connection behind a lock)."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.display = path
        self._local = threading.local()
        # every thread's connection and the thread that owns it, so `close` can close them all
        # and a new connection can close those of threads that have ended
        self._conns: dict[sqlite3.Connection, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self._generation = 0
        self._memory_conn: sqlite3.Connection | None = None
        self._memory_lock = threading.Lock()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            if self._memory_conn is None:
                self._memory_conn = sqlite3.connect(":memory:", check_same_thread=False)
            return self._memory_conn
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            # check_same_thread=False only so that `close` may close it from another thread;
            # each connection is still used by the one thread that opened it
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            with self._conns_lock:
                orphans = [c for c, owner in self._conns.items() if not owner.is_alive()]
                for c in orphans:
                    del self._conns[c]
                self._conns[conn] = threading.current_thread()
            for c in orphans:  # their threads are gone: nothing can be using them
                c.close()
            self._local.conn = conn
            self._local.generation = self._generation
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE, so writers queue instead of deadlocking)."""
        conn = self._conn()
        lock = self._memory_lock if self.path == ":memory:" else None
        if lock:
            lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if lock:
                lock.release()

    def read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn()
        if self.path == ":memory:":
            with self._memory_lock:
                return conn.execute(sql, tuple(args)).fetchall()
        return conn.execute(sql, tuple(args)).fetchall()

    def migrate(self, migrations: Sequence[tuple[str, str]]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied REAL)"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
            for name, sql in migrations:
                if name in done:
                    continue
                for stmt in sql.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: 'ok' when the file is sound."""
        return str(self.read("PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        """Close every thread's connection; a thread that uses the database again reconnects.
        Call it when no write is in flight (shutdown, between tests)."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), {}
            self._generation += 1
        for conn in conns:
            conn.close()
        self._local.conn = None
        if self._memory_conn is not None:
            self._memory_conn.close()
            self._memory_conn = None


def _set_wal(conn: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Switch to WAL. Processes opening a new file at once race for the switch, and SQLite
    answers "database is locked" at once instead of waiting on the busy timeout: retry."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
