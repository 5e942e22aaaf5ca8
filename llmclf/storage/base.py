"""What a store dialect provides to `llmclf.store.Store`: transactions, reads, migrations.

Queries are written once, in the SQL both SQLite and PostgreSQL accept (``?`` placeholders,
``INSERT ... ON CONFLICT``, ``RETURNING``); a dialect translates what little differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["ACQUIRE_TIMEOUT", "Cursor", "Database", "Tx"]

#: Seconds a store call may wait for a pooled connection, where set (the request path sets a
#: short one, so an unreachable server degrades the answer instead of stalling it); None: the
#: dialect's own timeout.
ACQUIRE_TIMEOUT: ContextVar[float | None] = ContextVar("llmclf_store_acquire_timeout",
                                                       default=None)


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...


class Tx(Protocol):
    """One open write transaction: ``execute`` with ``?`` placeholders."""

    def execute(self, sql: str, args: Iterable[Any] = ..., /) -> Any: ...


class Database(Protocol):
    """One database behind the store (`llmclf.storage.sqlite`, `llmclf.storage.postgres`)."""

    dialect: str
    #: what messages name: the file path, or the URL without its password
    display: str

    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction (a `Tx`): committed on exit, rolled back on an exception."""
        ...

    def read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read query; all rows."""
        ...

    def migrate(self, migrations: Sequence[tuple[str, str]]) -> None:
        """Apply the migrations not yet applied, all in one transaction."""
        ...

    def integrity_check(self) -> str:
        """'ok' when the database is sound."""
        ...

    def close(self) -> None: ...
