"""The one reader layer (`llmclf.readers`): every loader error, as eval cases and as unlabelled
inputs, names the file, the line (or row) and the field; files are streamed."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmclf.datasets import load_cases
from llmclf.errors import TaskFileError
from llmclf.readers import Row, detect_format, iter_rows
from llmclf.types import Task
from llmclf.unlabeled import iter_texts

SENTIMENT = Task.from_yaml_text(
    "name: s\nkind: binary\npositive_label: positive\nlabels: {negative: bad, positive: good}\n"
)
OK = b'{"text": "fine", "label": "positive"}\n'


def parquet(**columns: list[Any]) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(columns), path)


def saved_dataset(**columns: list[Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import datasets

        datasets.Dataset.from_dict(columns).save_to_disk(str(path))

    return write


def directory(path: Path) -> None:
    path.mkdir()


def absent(path: Path) -> None:
    pass


BOTH, CASES, TEXTS = ("cases", "texts"), ("cases",), ("texts",)

# (what, file name, content: bytes or a writer, regex the message matches after the path,
#  the loaders it applies to). ``cases`` is `load_cases` (eval sets, pools, gold rows);
# ``texts`` is `iter_texts` (unlabelled inputs for classify and distill).
LOADER_ERRORS: list[tuple[str, str, bytes | Callable[[Path], None], str, tuple[str, ...]]] = [
    # -- files
    ("missing file", "nope.jsonl", absent, ": file not found", BOTH),
    ("a directory", "dir.jsonl", directory, ": is a directory, not a file", BOTH),
    ("unknown suffix", "c.xlsx", b"text\nx\n", r": unknown file type '\.xlsx'", CASES),
    # -- JSONL
    ("malformed JSON", "in.jsonl", OK + b'{"text": "oops", \n', ":2: malformed JSON: Expecting",
     BOTH),
    ("JSON array", "in.json", b'[\n  {"text": "a", "label": "positive"}\n]\n',
     r":1: malformed JSON: .*\(this looks like a JSON array; write one JSON object per line\)",
     BOTH),
    ("deep nesting", "in.jsonl", OK + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     ":2: malformed JSON: nested too deeply", BOTH),
    ("huge integer", "in.jsonl", b'{"text": "a", "n": ' + b"1" * 5000 + b"}\n",
     ":1: malformed JSON: Exceeds the limit", BOTH),
    ("bad UTF-8", "in.jsonl", OK + b'{"text": "\xff\xfe", "label": "positive"}\n',
     r":2: not UTF-8 text \(invalid start byte\)", BOTH),
    ("BOM then error", "in.jsonl", b'\xef\xbb\xbf{"txt": "a", "label": "positive"}\n',
     ":1: text: missing 'text'", BOTH),
    ("CRLF, blank line", "in.jsonl", OK.replace(b"\n", b"\r\n") + b"\r\n"
     + b'{"text": 5, "label": "positive"}\r\n', ":3: text: must be a string, got int", BOTH),
    ("not an object", "in.jsonl", OK + b'["a", "positive"]\n',
     ":2: a (case|row) must be an object with a 'text' field, got list", BOTH),
    ("null text", "in.jsonl", b'{"text": null, "label": "positive"}\n',
     ":1: text: missing 'text'", BOTH),
    ("blank text", "in.jsonl", OK + b'{"text": " \\t", "label": "positive"}\n',
     ":2: text: text is empty or blank", BOTH),
    ("lone surrogate", "in.jsonl", b'{"text": "cut \\ud83c", "label": "positive"}\n',
     ":1: text: text is not valid Unicode", BOTH),
    # -- CSV / TSV
    ("no text column", "in.csv", b"sentence,label\nhi,positive\n",
     r":1: text: no 'text' column \(columns: sentence, label\)", BOTH),
    ("duplicate columns", "in.csv", b"text,text,label\na,b,positive\n",
     r":1: duplicate column names: \['text'\]", BOTH),
    ("too many cells", "in.csv", b"text,label\nhi,positive\nhi, there,positive\n",
     ":3: row has more cells than the header's 2 columns", BOTH),
    ("bad UTF-8 in CSV", "in.csv", b"text,label\nok,positive\n\xc3(,negative\n",
     r":3: not UTF-8 text", BOTH),
    ("line after a multi-line cell", "in.csv", b'text,label\n"a\nb\nc",positive\n,negative\n',
     ":5: text: text is empty or blank", BOTH),
    ("BOM before the header", "in.csv", b"\xef\xbb\xbftext,label\nok,positive\n,negative\n",
     ":3: text: text is empty or blank", BOTH),
    ("unclosed quote", "in.csv", b'text,label\nok,positive\n"never closed,negative\n',
     ":3: malformed CSV: unexpected end of data", BOTH),
    ("TSV", "in.tsv", b"id\ttext\tlabel\n1\tok\tpositive\n2\t \tnegative\n",
     ":3: text: text is empty or blank", BOTH),
    ("unknown label in CSV", "in.csv", b"text,label\nok,positive\nhm,neutral\n",
     ":3: label: unknown label 'neutral'", CASES),
    # -- Parquet
    ("not Parquet", "in.parquet", b"not parquet at all", ": not a readable Parquet file", BOTH),
    ("no text column in Parquet", "in.parquet", parquet(sentence=["a"], label=["positive"]),
     r": text: no 'text' column \(columns: sentence, label\)", BOTH),
    ("blank Parquet row", "in.parquet", parquet(text=["a", " "], label=["positive"] * 2),
     ":2: text: text is empty or blank", BOTH),
    ("non-string Parquet text", "in.parquet", parquet(text=[1, 2], label=["positive"] * 2),
     ":1: text: must be a string, got int", BOTH),
    ("null Parquet text", "in.parquet", parquet(text=["a", None], label=["positive"] * 2),
     ":2: text: missing 'text'", BOTH),
    # -- a directory written by datasets.Dataset.save_to_disk
    ("datasets directory", "ds", saved_dataset(text=["a", ""], label=["positive"] * 2),
     ":2: text: text is empty or blank", BOTH),
    # -- plain text (unlabelled inputs only)
    ("blank line", "in.txt", b"first\n\nthird\n", ":2: text is empty or blank", TEXTS),
    ("lone CR ends a line", "in.txt", b"first\r\rthird", ":2: text is empty or blank", TEXTS),
    ("bad UTF-8 in text", "in.txt", b"first\nsecond\n\xff\n", r":3: not UTF-8 text", TEXTS),
    ("unknown suffix is text", "in.md", b"# notes\n \n", ":2: text is empty or blank", TEXTS),
]  # fmt: skip


def _load(loader: str, path: Path) -> None:
    if loader == "cases":
        load_cases(path, SENTIMENT)
    else:
        list(iter_texts(path))


@pytest.mark.parametrize(
    ("file_name", "content", "expected", "loader"),
    [
        pytest.param(file_name, content, expected, loader, id=f"{loader}: {what}")
        for what, file_name, content, expected, loaders in LOADER_ERRORS
        for loader in loaders
    ],
)
def test_loader_errors_name_file_line_and_field(
    tmp_path: Path,
    file_name: str,
    content: bytes | Callable[[Path], None],
    expected: str,
    loader: str,
) -> None:
    path = tmp_path / file_name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    with pytest.raises(TaskFileError) as info:
        _load(loader, path)
    message = str(info.value)
    assert re.match(re.escape(str(path)) + expected, message), message
    assert "\n" not in message


# --------------------------------------------------------------------------- reading


def test_the_same_rows_from_every_format(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "one, \"quoted\"", "label": "positive"},
            {"id": "b", "text": "two\nlines", "label": "negative"}]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(f"{__import__('json').dumps(r)}\n" for r in rows))
    (tmp_path / "r.csv").write_text('id,text,label\na,"one, ""quoted""",positive\n'
                                    'b,"two\nlines",negative\n')  # fmt: skip
    (tmp_path / "r.tsv").write_text('id\ttext\tlabel\na\t"one, ""quoted"""\tpositive\n'
                                    'b\t"two\nlines"\tnegative\n')  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    saved_dataset(**{k: [r[k] for r in rows] for k in rows[0]})(tmp_path / "ds")
    for name in ("r.jsonl", "r.csv", "r.tsv", "r.parquet", "ds"):
        got = [r.data for r in iter_rows(tmp_path / name)]
        assert got == rows, name
        cases = load_cases(tmp_path / name, SENTIMENT)
        assert [(c.id, c.text, c.label) for c in cases] == [
            (r["id"], r["text"], r["label"]) for r in rows
        ], name
        assert [(t.id, t.text) for t in iter_texts(tmp_path / name)] == [
            (r["id"], r["text"]) for r in rows
        ], name


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b'\xef\xbb\xbftext\r\n"a\r\nb"\r\n\r\nc\r\n')
    assert [(r.line, r.data) for r in iter_rows(p)] == [(2, {"text": "a\r\nb"}), (5, {"text": "c"})]
    t = tmp_path / "r.txt"
    t.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert [(r.line, r.data) for r in iter_rows(t)] == [(1, "one"), (2, "two"), (3, "three")]


def test_detect_format() -> None:
    assert [detect_format(n) for n in ("a.jsonl", "a.JSON", "a.ndjson", "a.csv", "a.tsv",
                                       "a.parquet", "a.txt", "a.xlsx")] == [
        "jsonl", "jsonl", "jsonl", "csv", "tsv", "parquet", "txt", None]  # fmt: skip


def test_a_stream_is_sniffed_as_jsonl_or_text() -> None:
    stream = io.StringIO('\n  {"text": "a", "id": 7}\n')
    assert [(t.text, t.id, t.line) for t in iter_texts(stream)] == [("a", "7", 2)]
    assert [t.text for t in iter_texts(io.StringIO("plain\n{not json\n"))] == [
        "plain", "{not json"
    ]  # fmt: skip


def test_skip_empty_skips_blank_texts_only(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("id,text\n1,a\n2,\n3, \n4,b\n")
    assert [(t.id, t.line) for t in iter_texts(p, skip_empty=True)] == [("1", 2), ("4", 5)]
    q = tmp_path / "in.jsonl"
    q.write_text('{"text": ""}\n{"text": 3}\n')
    with pytest.raises(TaskFileError, match=r"in\.jsonl:2: text: must be a string, got int"):
        list(iter_texts(q, skip_empty=True))


class _EndlessLines:
    """A binary stream of JSONL (or CSV) lines that never ends; counts the lines served."""

    def __init__(self, header: bytes = b"") -> None:
        self.header = header
        self.served = 0

    def read(self, *_: Any) -> bytes:
        raise AssertionError("the reader read the whole stream")

    def __iter__(self) -> Iterator[bytes]:
        if self.header:
            yield self.header
        while True:
            self.served += 1
            yield b'{"text": "t%d"}\n' % self.served if not self.header else b"t%d\n" % self.served


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_rows_are_streamed_not_loaded_whole(fmt: str) -> None:
    stream = _EndlessLines(b"text\n" if fmt == "csv" else b"")
    first = list(islice(iter_rows(stream, fmt=fmt), 3))  # type: ignore[arg-type]
    texts = [r.data["text"] for r in first]
    assert texts == ["t1", "t2", "t3"]
    assert stream.served <= 4


def test_parquet_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    p = tmp_path / "big.parquet"
    n = 200_000
    table = pa.table({"text": [f"text number {i}" for i in range(n)]})
    pq.write_table(table, p, row_group_size=5_000)
    whole = table.nbytes
    del table
    before = pa.total_allocated_bytes()
    rows = iter_rows(p)
    assert next(rows) == Row(1, {"text": "text number 0"})
    held = pa.total_allocated_bytes() - before
    assert held < whole / 4, (held, whole)  # a row group, not the whole column
    assert sum(1 for _ in rows) == n - 1


def test_columns_limits_what_is_read(tmp_path: Path) -> None:
    p = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"text": ["a"], "id": [1], "blob": [b"x" * 100]}), p)
    assert [r.data for r in iter_rows(p, columns=["text", "id", "missing"])] == [
        {"text": "a", "id": 1}
    ]  # fmt: skip
