"""Store URLs: which database holds llmclf's state, and how to print one without its password.

``sqlite:///PATH`` (SQLAlchemy's form: ``sqlite:////abs/path`` or ``sqlite:///rel/path``,
``sqlite:///:memory:``) or a bare file path is the embedded default; ``postgresql://`` (also
``postgres://`` and ``postgresql+psycopg://``) is a shared PostgreSQL server.

Example:
    >>> u = parse_url("postgresql://app:s3cret@db.internal:5432/llmclf")
    >>> u.dialect, u.redacted
    ('postgresql', 'postgresql://app:***@db.internal:5432/llmclf')
    >>> parse_url("sqlite:////var/lib/llmclf.db").path
    '/var/lib/llmclf.db'
    >>> parse_url("/tmp/x.db").url
    'sqlite:////tmp/x.db'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from llmclf.errors import StoreError

__all__ = ["ENV_VAR", "DatabaseURL", "default_url", "parse_url", "redact_url"]

#: The environment variable naming the store (what ``--db`` sets).
ENV_VAR = "LLMCLF_DATABASE_URL"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg3"}


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed store URL: ``dialect`` is ``sqlite`` or ``postgresql``.

    ``path`` is the SQLite file (or ``:memory:``); ``conninfo`` is what libpq is given."""

    dialect: str
    url: str
    path: str = ""
    conninfo: str = ""

    @property
    def redacted(self) -> str:
        """The URL with its password replaced by ``***``: safe for messages and logs."""
        return redact_url(self.url)

    @property
    def password(self) -> str | None:
        if self.dialect != "postgresql":
            return None
        return urlsplit(self.conninfo).password


def redact_url(url: str) -> str:
    """``url`` without its password (``user:***@host``); anything unparsable is left as is.

    Example:
        >>> redact_url("postgresql://u:pw@h/db?password=pw2")
        'postgresql://u:***@h/db?password=***'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query, flags=re.IGNORECASE)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_url(target: str | Path) -> DatabaseURL:
    """A store URL or a bare SQLite path, parsed; a bad one raises `StoreError` naming it."""
    raw = str(target).strip()
    if not raw:
        raise StoreError("empty store URL: give sqlite:///PATH or postgresql://USER@HOST/DB")
    m = _SCHEME.match(raw)
    if m is None:  # a plain path, as --store and Store(path) always took
        if raw == ":memory:":
            return DatabaseURL("sqlite", "sqlite:///:memory:", path=":memory:")
        return DatabaseURL("sqlite", "sqlite:///" + raw, path=raw)
    scheme = m.group(1).lower()
    if scheme == "sqlite":
        if not raw.startswith("sqlite:///"):
            raise StoreError(
                f"bad store URL {redact_url(raw)!r}: a SQLite URL is sqlite:///relative/path "
                "or sqlite:////absolute/path"
            )
        path = raw[len("sqlite:///") :]
        if not path:
            raise StoreError(f"bad store URL {raw!r}: no file path after sqlite:///")
        return DatabaseURL("sqlite", raw, path=path)
    if scheme in _PG_SCHEMES:
        try:
            parts = urlsplit(raw)
            _ = parts.port  # raises on a non-numeric port
        except ValueError as exc:
            raise StoreError(f"bad store URL {redact_url(raw)!r}: {exc}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise StoreError(f"bad store URL {redact_url(raw)!r}: no host")
        conninfo = urlunsplit(("postgresql", *parts[1:]))
        return DatabaseURL("postgresql", raw, conninfo=conninfo)
    raise StoreError(
        f"bad store URL {redact_url(raw)!r}: unknown scheme {scheme!r} "
        "(use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB)"
    )


def default_url() -> str:
    """``$LLMCLF_DATABASE_URL``, else the SQLite file ``$LLMCLF_HOME/llmclf.db``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    from llmclf.paths import store_path

    return str(store_path())
