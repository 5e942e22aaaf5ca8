"""Stream unlabelled texts from JSONL, CSV, Parquet, plain text (one per line) or stdin.

Every error names the file and the line. JSONL and CSV rows carry the text in a ``text`` field
(configurable); an ``id`` field, when present, is kept.

Example:
    >>> import io
    >>> [t.text for t in iter_texts(io.StringIO('{"text": "a"}\\n{"text": "b"}\\n'), fmt="jsonl")]
    ['a', 'b']
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from llmclf.errors import TaskFileError


@dataclass(frozen=True)
class TextItem:
    """One input text, with where it came from (for errors) and its id when the file has one."""

    text: str
    line: int
    id: str | None = None


def detect_format(path: str | Path) -> str:
    """``jsonl``, ``csv``, ``parquet`` or ``txt`` from the file name."""
    suffix = Path(path).suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
            ".tsv": "csv", ".parquet": "parquet"}.get(suffix, "txt")  # fmt: skip


def _sniff_stream(stream: IO[str]) -> tuple[str, IO[str]]:
    head = stream.read(4096)
    rest = io.StringIO(head + stream.read())
    return ("jsonl" if head.lstrip().startswith("{") else "txt"), rest


def iter_texts(
    source: str | Path | IO[str],
    *,
    fmt: str | None = None,
    text_field: str = "text",
    skip_empty: bool = False,
) -> Iterator[TextItem]:
    """Yield `TextItem`s from a path, ``-`` (stdin), or an open text stream."""
    name = "<stdin>"
    if isinstance(source, str | Path) and str(source) != "-":
        name = str(source)
        fmt = fmt or detect_format(source)
        if fmt == "parquet":
            yield from _iter_parquet(Path(source), text_field)
            return
        try:
            stream: IO[str] = open(source, encoding="utf-8", newline="")  # noqa: SIM115
        except FileNotFoundError:
            raise TaskFileError("file not found", path=name) from None
    else:
        stream = sys.stdin if str(source) == "-" else source  # type: ignore[assignment]
        if fmt is None:
            fmt, stream = _sniff_stream(stream)
    try:
        if fmt == "csv":
            yield from _iter_csv(stream, name, text_field, skip_empty)
        elif fmt == "jsonl":
            yield from _iter_jsonl(stream, name, text_field, skip_empty)
        else:
            for lineno, line in enumerate(stream, 1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    if skip_empty:
                        continue
                    raise TaskFileError("empty text", path=name, line=lineno)
                yield TextItem(text=text, line=lineno)
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"not UTF-8 text ({exc.reason})", path=name) from None
    finally:
        if name != "<stdin>" and isinstance(source, str | Path):
            stream.close()


def _iter_jsonl(
    stream: IO[str], name: str, text_field: str, skip_empty: bool
) -> Iterator[TextItem]:
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"malformed JSON: {exc.msg}", path=name, line=lineno) from None
        if not isinstance(row, dict):
            raise TaskFileError("each line must be a JSON object", path=name, line=lineno)
        text = row.get(text_field)
        if not isinstance(text, str):
            raise TaskFileError(
                f"missing or non-string {text_field!r}", path=name, line=lineno, field=text_field
            )
        if not text.strip():
            if skip_empty:
                continue
            raise TaskFileError("empty text", path=name, line=lineno, field=text_field)
        rid = row.get("id")
        yield TextItem(text=text, line=lineno, id=None if rid is None else str(rid))


def _iter_csv(stream: IO[str], name: str, text_field: str, skip_empty: bool) -> Iterator[TextItem]:
    dialect = "excel-tab" if name.endswith(".tsv") else "excel"
    reader = csv.DictReader(stream, dialect=dialect)
    if reader.fieldnames is None or text_field not in reader.fieldnames:
        raise TaskFileError(
            f"no {text_field!r} column (columns: {reader.fieldnames})", path=name, line=1
        )
    for row in reader:
        lineno = reader.line_num
        text = row.get(text_field) or ""
        if not text.strip():
            if skip_empty:
                continue
            raise TaskFileError("empty text", path=name, line=lineno, field=text_field)
        yield TextItem(text=text, line=lineno, id=row.get("id"))


def _iter_parquet(path: Path, text_field: str) -> Iterator[TextItem]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except FileNotFoundError:
        raise TaskFileError("file not found", path=str(path)) from None
    if text_field not in table.column_names:
        raise TaskFileError(f"no {text_field!r} column (columns: {table.column_names})",
                            path=str(path))  # fmt: skip
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    for i, text in enumerate(table.column(text_field).to_pylist()):
        if not isinstance(text, str) or not text.strip():
            raise TaskFileError("empty text", path=str(path), line=i + 1, field=text_field)
        yield TextItem(text=text, line=i + 1, id=None if ids is None else str(ids[i]))
