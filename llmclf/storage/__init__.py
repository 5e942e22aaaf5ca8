"""The databases behind `llmclf.store.Store`, chosen by URL: SQLite (default) or PostgreSQL.

| module | what |
|---|---|
| `llmclf.storage.url` | parse a store URL, print it without its password, the default URL |
| `llmclf.storage.base` | the `Database` protocol a dialect implements |
| `llmclf.storage.sqlite` | one SQLite file, WAL, a connection per thread |
| `llmclf.storage.postgres` | PostgreSQL through a psycopg 3 pool; SQL translation |

Example:
    >>> db = connect(":memory:")
    >>> db.dialect
    'sqlite'
"""

from __future__ import annotations

from pathlib import Path

from llmclf.storage.base import Database
from llmclf.storage.url import ENV_VAR, DatabaseURL, default_url, parse_url, redact_url

__all__ = [
    "ENV_VAR", "Database", "DatabaseURL", "connect", "default_url", "parse_url", "redact_url",
]  # fmt: skip


def connect(target: str | Path | DatabaseURL) -> Database:
    """The database named by ``target``: a store URL, a SQLite path, or a parsed URL."""
    url = target if isinstance(target, DatabaseURL) else parse_url(target)
    if url.dialect == "postgresql":
        from llmclf.storage.postgres import PostgresDatabase

        return PostgresDatabase(url)
    from llmclf.storage.sqlite import SQLiteDatabase

    return SQLiteDatabase(url.path)
