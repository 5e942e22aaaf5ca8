"""Stream unlabelled texts from JSONL, CSV/TSV, Parquet, plain text (one per line), a `datasets`
directory, or stdin.

Files are read by `llmclf.readers`, a row at a time, so inputs of millions of rows are never
held in memory; every error names the file, the line and the field. JSONL, CSV and Parquet rows
carry the text in a ``text`` field (configurable); an ``id`` field, when present, is kept.
A file with an unknown suffix is read as plain text; a stream as JSONL when its first non-blank
line starts with ``{``, else as plain text.

Example:
    >>> import io
    >>> [t.text for t in iter_texts(io.StringIO('{"text": "a"}\\n{"text": "b"}\\n'), fmt="jsonl")]
    ['a', 'b']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from llmclf.readers import Format, Row, iter_rows, source_name, text_of
from llmclf.readers import detect_format as _detect_format

__all__ = ["TextItem", "detect_format", "iter_texts"]


@dataclass(frozen=True)
class TextItem:
    """One input text, with where it came from (for errors) and its id when the file has one."""

    text: str
    line: int
    id: str | None = None


def detect_format(path: str | Path) -> Format:
    """The format of an unlabelled file from its name: plain text when the suffix is unknown.

    Example:
        >>> detect_format("in.tsv"), detect_format("notes.md")
        ('tsv', 'txt')
    """
    return _detect_format(path) or "txt"


def iter_texts(
    source: str | Path | IO[str],
    *,
    fmt: str | None = None,
    text_field: str = "text",
    skip_empty: bool = False,
) -> Iterator[TextItem]:
    """Yield `TextItem`s from a path, ``-`` (stdin), or an open text stream.

    A blank text is an error (``file:line: text: text is empty or blank``), or skipped with
    ``skip_empty``. A text that is not a string, or not valid Unicode, is always an error.
    """
    where = source_name(source)
    if isinstance(source, str | Path) and str(source) != "-":
        fmt = fmt or detect_format(source)
    rows = iter_rows(
        source,
        fmt=fmt,  # type: ignore[arg-type]  # checked by iter_rows
        name=where,
        columns=[text_field, "id"],
        require=[text_field],
    )
    for row in rows:
        if skip_empty and _is_blank(row, text_field):
            continue
        text = text_of(row, where, text_field)
        rid = row.data.get("id") if isinstance(row.data, Mapping) else None
        yield TextItem(text=text, line=row.line, id=None if rid in (None, "") else str(rid))


def _is_blank(row: Row, text_field: str) -> bool:
    value = row.data.get(text_field) if isinstance(row.data, Mapping) else row.data
    return isinstance(value, str) and not value.strip()
