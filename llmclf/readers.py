"""The one reader of row files: JSONL, CSV, TSV, Parquet, plain text and `datasets.Dataset`.

Eval-set cases (`llmclf.datasets`) and unlabelled inputs (`llmclf.unlabeled`) both read through
`iter_rows`, so every format is read the same way everywhere:

- Files are streamed (a row at a time; Parquet and datasets a batch of rows at a time), never
  loaded whole: an unlabelled input may hold millions of rows.
- Text files are UTF-8; a leading byte-order mark is dropped and ``\\r\\n`` line ends are
  accepted. Bytes that are not UTF-8 are an error on the line that holds them.
- JSONL: one JSON value per line, blank lines skipped; malformed or too deeply nested JSON is an
  error naming the line and column. A file that is one JSON array gets a hint.
- CSV/TSV (`csv` stdlib, Excel dialect): the first row is the header; quoted cells may span
  lines, and the line an error names is the row's first line. Repeated column names, and a row
  with more cells than the header, are errors. Every cell is a string.
- Parquet (pyarrow): read a row group batch at a time; `datasets.ClassLabel` columns written by
  `datasets` (in the file's metadata) are decoded back to label names. The "line" of a row is its
  1-based row number. Unreadable files are errors naming the file.
- Plain text: one text per line (``\\n``, ``\\r\\n`` or ``\\r`` ends a line).
- A directory written by `datasets.Dataset.save_to_disk`, or an in-memory `datasets.Dataset`.

Every error is a `TaskFileError` whose message starts ``file:line: field:`` (as much of it as is
known), e.g. ``in.jsonl:3: malformed JSON: Expecting value at column 9``.

Example:
    >>> import io
    >>> [(r.line, r.data) for r in iter_rows(io.StringIO('{"text": "a"}\\n\\n{"text": "b"}\\n'))]
    [(1, {'text': 'a'}), (3, {'text': 'b'})]
    >>> rows = iter_rows(io.StringIO('{"text": "a"}\\n{"text": \\n'), fmt="jsonl", name="in.jsonl")
    >>> list(rows)
    Traceback (most recent call last):
    ...
    llmclf.errors.TaskFileError: in.jsonl:2: malformed JSON: Expecting value at column 10
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from llmclf.errors import TaskFileError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "FORMATS",
    "Format",
    "Row",
    "detect_format",
    "is_hf_dataset",
    "iter_rows",
    "source_name",
    "text_of",
]

Format = Literal["jsonl", "csv", "tsv", "parquet", "txt", "dataset"]

#: File suffix → format.
FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "txt",
}

_BATCH_ROWS = 1024
_BOM = "\ufeff"


@dataclass(frozen=True)
class Row:
    """One row as read: its 1-based line (text files) or row number (tables), and its data.

    ``data`` is the parsed JSON value (JSONL), a ``{column: value}`` dict (CSV/TSV, Parquet,
    datasets) or the line's text without its line end (plain text).
    """

    line: int
    data: Any


def detect_format(path: str | os.PathLike[str]) -> Format | None:
    """The format of a file from its suffix (a `datasets` directory from its files), or None.

    Example:
        >>> detect_format("texts.TSV"), detect_format("x.ndjson"), detect_format("notes.md")
        ('tsv', 'jsonl', None)
    """
    p = Path(path)
    if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_info.json").is_file()):
        return "dataset"
    return FORMATS.get(p.suffix.lower())


def is_hf_dataset(source: object) -> bool:
    """Whether ``source`` is a `datasets.Dataset` (checked without importing `datasets`)."""
    cls = getattr(sys.modules.get("datasets"), "Dataset", None)
    return isinstance(cls, type) and isinstance(source, cls)


def source_name(source: object, name: str | None = None) -> str:
    """What errors call a source: ``name`` when given, else the path, ``<stdin>``,
    ``<dataset>``, ``<stream>`` or ``<rows>``.

    Example:
        >>> source_name("data/in.csv"), source_name("-"), source_name([{"text": "a"}])
        ('data/in.csv', '<stdin>', '<rows>')
    """
    if name:
        return name
    if isinstance(source, str | os.PathLike):
        return "<stdin>" if os.fspath(source) == "-" else os.fspath(source)
    if is_hf_dataset(source):
        return "<dataset>"
    if source is sys.stdin or source is getattr(sys.stdin, "buffer", None):
        return "<stdin>"
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<stream>"))
    return "<rows>"


def iter_rows(
    source: Any,
    *,
    fmt: Format | None = None,
    name: str | None = None,
    columns: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> Iterator[Row]:
    """Stream the rows of ``source``, each a `Row`. ``source`` is a path, ``"-"`` (stdin), an
    open text or binary stream, a `datasets.Dataset`, or an in-memory sequence of rows.

    ``fmt`` defaults to the path's suffix; a stream without one is JSONL when its first
    non-blank line starts with ``{``, else plain text; a path without a known suffix is an error.
    ``columns`` limits what is read from columnar files (Parquet, datasets) to the columns named
    that exist. ``require`` names columns a table (CSV/TSV, Parquet, datasets) must have; a
    missing one is an error before any row. ``name`` is what errors call the source.

    Example:
        >>> list(iter_rows([{"text": "a"}]))
        [Row(line=1, data={'text': 'a'})]
    """
    where = source_name(source, name)
    if isinstance(source, str | os.PathLike) and os.fspath(source) != "-":
        path = Path(source)
        fmt = fmt or detect_format(path)
        if fmt is None:
            raise TaskFileError(
                f"unknown file type {path.suffix!r}: use .jsonl, .csv, .tsv, .parquet or .txt",
                path=where,
            )
        if fmt == "parquet":
            yield from _parquet_rows(path, where, columns, require)
        elif fmt == "dataset":
            yield from _dataset_rows(_load_from_disk(path, where), where, columns, require)
        else:
            with _open_binary(path, where) as stream:
                yield from _text_rows(_lines(stream, where), fmt, where, require)
        return
    if is_hf_dataset(source):
        yield from _dataset_rows(source, where, columns, require)
        return
    if isinstance(source, str | os.PathLike) or hasattr(source, "read"):  # "-" or a stream
        stream_or_stdin: Any = source
        if isinstance(source, str | os.PathLike):  # "-": stdin's bytes, decoded line by line
            stream_or_stdin = getattr(sys.stdin, "buffer", None) or sys.stdin
        lines = _lines(stream_or_stdin, where)
        if fmt is None:
            fmt, lines = _sniff(lines)
        yield from _text_rows(lines, fmt, where, require)
        return
    if isinstance(source, Sequence):
        yield from (Row(i, row) for i, row in enumerate(source, 1))
        return
    raise TaskFileError(
        f"cannot read rows from a {type(source).__name__}: give a path, '-' (stdin), a stream, "
        "a datasets.Dataset or a list of dicts",
        path=name,
    )


def text_of(row: Row, where: str, field: str = "text", *, what: str = "row") -> str:
    """The text in ``row`` (``row.data[field]``, or the line of a plain-text file), checked:
    a non-blank string of valid Unicode. ``what`` is what errors call a row (``case``, ``row``).

    Example:
        >>> text_of(Row(3, {"text": "hi"}), "in.jsonl")
        'hi'
        >>> text_of(Row(3, {"text": 5}), "in.jsonl")
        Traceback (most recent call last):
        ...
        llmclf.errors.TaskFileError: in.jsonl:3: text: must be a string, got int
    """
    data, line = row.data, row.line
    if isinstance(data, str):  # a line of a plain-text file: no field to name
        text, field_name = data, None
    else:
        field_name = field
        if not isinstance(data, Mapping):
            raise TaskFileError(
                f"a {what} must be an object with a {field!r} field, got {type(data).__name__}",
                path=where,
                line=line,
            )
        if data.get(field) is None:
            raise TaskFileError(f"missing {field!r}", path=where, line=line, field=field)
        text = data[field]
        if not isinstance(text, str):
            raise TaskFileError(
                f"must be a string, got {type(text).__name__}", path=where, line=line, field=field
            )
    if not text.strip():
        raise TaskFileError("text is empty or blank", path=where, line=line, field=field_name)
    if not text.isascii() and not _is_unicode(text):
        raise TaskFileError(
            "text is not valid Unicode (a lone surrogate, e.g. an emoji cut in half)",
            path=where, line=line, field=field_name,
        )  # fmt: skip
    return text


# --------------------------------------------------------------------------- text files


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON ``"\\ud800"``): not encodable text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open_binary(path: Path, where: str) -> IO[bytes]:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except FileNotFoundError:
        raise TaskFileError("file not found", path=where) from None
    except IsADirectoryError:
        raise TaskFileError("is a directory, not a file", path=where) from None
    except OSError as exc:
        raise TaskFileError(f"cannot read the file ({exc.strerror})", path=where) from None


def _lines(stream: Any, where: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its line end) for each line; bytes are decoded one line
    at a time, so a decoding error names its own line. A leading BOM is dropped."""
    lineno = 0
    it = iter(stream)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:  # a text stream decodes ahead: the line is a guess
            raise TaskFileError(
                f"not UTF-8 text ({exc.reason})", path=where, line=lineno + 1
            ) from None
        lineno += 1
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskFileError(
                    f"not UTF-8 text ({exc.reason})", path=where, line=lineno
                ) from None
        else:
            line = raw
        if lineno == 1 and line.startswith(_BOM):
            line = line[1:]
        yield lineno, line


def _sniff(lines: Iterator[tuple[int, str]]) -> tuple[Format, Iterator[tuple[int, str]]]:
    """JSONL when the first non-blank line starts with ``{``, else plain text; the lines read
    to decide are put back in front."""
    head: list[tuple[int, str]] = []
    fmt: Format = "txt"
    for item in lines:
        head.append(item)
        if item[1].strip():
            fmt = "jsonl" if item[1].lstrip().startswith("{") else "txt"
            break
    return fmt, chain(head, lines)


def _text_rows(
    lines: Iterator[tuple[int, str]], fmt: Format, where: str, require: Sequence[str]
) -> Iterator[Row]:
    if fmt == "jsonl":
        return _jsonl_rows(lines, where)
    if fmt in ("csv", "tsv"):
        return _csv_rows(lines, "\t" if fmt == "tsv" else ",", where, require)
    if fmt == "txt":
        return _plain_rows(lines)
    raise TaskFileError(f"{fmt} is not a text format", path=where)


def _jsonl_rows(lines: Iterable[tuple[int, str]], where: str) -> Iterator[Row]:
    import json

    for lineno, line in lines:
        if not line.strip():
            continue
        line = line.rstrip("\r\n")  # so an error's column counts on this line
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and line.strip() == "[":
                hint = " (this looks like a JSON array; write one JSON object per line)"
            raise TaskFileError(
                f"malformed JSON: {exc.msg} at column {exc.colno}{hint}", path=where, line=lineno
            ) from None
        except RecursionError:
            raise TaskFileError(
                "malformed JSON: nested too deeply", path=where, line=lineno
            ) from None
        except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
            raise TaskFileError(f"malformed JSON: {exc}", path=where, line=lineno) from None
        yield Row(lineno, value)


def _plain_rows(lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
    lineno = 0
    for _, line in lines:
        line = line.removesuffix("\n").removesuffix("\r")
        for part in line.split("\r"):  # a lone \r ends a line too
            lineno += 1
            yield Row(lineno, part)


def _csv_rows(
    lines: Iterator[tuple[int, str]], delimiter: str, where: str, require: Sequence[str]
) -> Iterator[Row]:
    physical = 0  # the number of the last line handed to the csv reader

    def feed() -> Iterator[str]:
        nonlocal physical
        for lineno, line in lines:
            physical = lineno
            yield line

    # strict: a quote that is never closed is an error, not the rest of the file in one cell
    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    start = 1  # the first line of the record being read
    header: list[str] | None = None
    try:
        for cells in reader:
            lineno, start = start, physical + 1
            if not cells:  # a blank line
                continue
            if header is None:
                header = cells
                if len(set(header)) != len(header):
                    dupes = sorted({h for h in header if header.count(h) > 1})
                    raise TaskFileError(f"duplicate column names: {dupes}", path=where, line=lineno)
                _check_columns(header, require, where, line=lineno)
                continue
            if len(cells) > len(header):
                raise TaskFileError(
                    f"row has more cells than the header's {len(header)} columns",
                    path=where,
                    line=lineno,
                )
            yield Row(lineno, dict(zip(header, cells, strict=False)))
    except csv.Error as exc:
        raise TaskFileError(f"malformed CSV: {exc}", path=where, line=start) from None


def _check_columns(
    names: Sequence[str], require: Sequence[str], where: str, line: int | None
) -> None:
    for col in require:
        if col not in names:
            raise TaskFileError(
                f"no {col!r} column (columns: {', '.join(names)})",
                path=where,
                line=line,
                field=col,
            )


# --------------------------------------------------------------------------- tables


def _class_label_decoders(features: Any) -> dict[str, tuple[str, Any]]:
    """``{column: ("one" | "many", ClassLabel)}`` for the `datasets.ClassLabel` columns."""
    if not features:
        return {}
    import datasets

    decoders: dict[str, tuple[str, Any]] = {}
    for key, feat in features.items():
        if isinstance(feat, datasets.ClassLabel):
            decoders[key] = ("one", feat)
        elif isinstance(getattr(feat, "feature", None), datasets.ClassLabel):
            decoders[key] = ("many", feat.feature)
        elif isinstance(feat, list) and feat and isinstance(feat[0], datasets.ClassLabel):
            decoders[key] = ("many", feat[0])
    return decoders


def _decode_class_labels(row: dict[str, Any], decoders: Mapping[str, tuple[str, Any]]) -> None:
    """Turn `datasets.ClassLabel` integers back into label names, in place. A value that is not
    a valid class index is left as is: the caller's checks name what is wrong with it."""

    def dec(feat: Any, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < feat.num_classes:
            return feat.int2str(v)
        return v

    for key, (how, feat) in decoders.items():
        v = row.get(key)
        if how == "one":
            row[key] = dec(feat, v)
        elif isinstance(v, list):
            row[key] = [dec(feat, x) for x in v]


def _parquet_rows(
    path: Path, where: str, columns: Sequence[str] | None, require: Sequence[str]
) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise TaskFileError("file not found", path=where)
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering reads row groups ahead
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise TaskFileError(f"not a readable Parquet file ({exc})", path=where) from None
    _check_columns(schema.names, require, where, line=None)
    wanted = None if columns is None else [c for c in schema.names if c in set(columns)]
    features = None
    if schema.metadata and b"huggingface" in schema.metadata:
        import datasets

        try:
            features = datasets.Features.from_arrow_schema(schema)
        except Exception:  # unreadable HF metadata: read the plain columns
            features = None
    decoders = {
        k: v
        for k, v in _class_label_decoders(features).items()
        if wanted is None or k in wanted
    }
    n = 0
    batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=wanted)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise TaskFileError(
                f"not a readable Parquet file ({exc})", path=where, line=n + 1
            ) from None
        for row in batch.to_pylist():
            n += 1
            _decode_class_labels(row, decoders)
            yield Row(n, row)


def _load_from_disk(path: Path, where: str) -> datasets.Dataset:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds here
        raise TaskFileError(f"not a readable datasets directory ({exc})", path=where) from None
    if not isinstance(ds, datasets.Dataset):
        raise TaskFileError(
            "a datasets directory with several splits: give one split's directory", path=where
        )
    return ds


def _dataset_rows(
    ds: Any, where: str, columns: Sequence[str] | None, require: Sequence[str]
) -> Iterator[Row]:
    _check_columns(list(ds.column_names), require, where, line=None)
    if columns is not None:
        keep = [c for c in ds.column_names if c in set(columns)]
        if keep != list(ds.column_names):
            ds = ds.select_columns(keep)
    decoders = _class_label_decoders(ds.features)
    n = 0
    for batch in ds.iter(batch_size=_BATCH_ROWS):
        cols = cast(dict[str, list[Any]], batch)
        keys = list(cols)
        size = len(cols[keys[0]]) if keys else 0
        for i in range(size):
            n += 1
            row = {k: cols[k][i] for k in keys}
            _decode_class_labels(row, decoders)
            yield Row(n, row)
