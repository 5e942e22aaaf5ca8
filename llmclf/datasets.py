"""Labelled cases and eval sets: load them from JSONL, CSV/TSV, Parquet, a `datasets.Dataset`
or a list of dicts, check them against a `Task`, and export them as a `datasets.Dataset`.

A case is ``{"id", "text", "label"}`` (single-label tasks) or ``{"id", "text", "labels": [...]}``
(multi-label tasks). Rules, each broken rule a `TaskFileError` naming the file and the line:

- ``text`` is a non-empty, non-blank string.
- A label is a name from the task (the error lists the valid ones).
- A binary/multiclass task takes exactly one label: ``label: "x"`` or ``labels: ["x"]``.
- A multilabel task takes ``labels: [...]`` (a list, no repeats). An empty list is allowed and
  means "none of the labels applies", which a multi-label model can also answer.
- ``id`` is optional. A case without one gets ``text-<first 12 hex of sha256(text)>``, so the id
  does not change when rows are added, removed or reordered; a repeated text without an id gets
  ``-2``, ``-3``, ... appended in file order. Ids are unique within a file.
- Files are read by `llmclf.readers` (streamed; BOM, CRLF, bad UTF-8, malformed or deeply
  nested JSON and unreadable Parquet are errors naming the line). In JSONL a line is one JSON
  object; blank lines are skipped. In CSV/TSV a ``labels`` cell is a JSON list or names separated
  by ``|``, and an empty ``label``/``id`` cell is an absent value. For Parquet, a
  `datasets.Dataset` (in memory, or a directory written by ``save_to_disk``) or a list of dicts
  the "line" in errors is the 1-based row number. Other fields of a row are ignored.

An eval set is a directory ``eval_sets/<name>/`` with ``task.yaml``, ``cases.jsonl`` and
optionally ``pool.jsonl`` (labelled examples for few-shot prompts, drawn apart from the cases).

Example:
    >>> from llmclf.types import Task
    >>> task = Task(name="s", kind="binary", positive_label="pos", labels={"neg": "", "pos": ""})
    >>> [c.label for c in load_cases([{"text": "great", "label": "pos"}], task)]
    ['pos']
    >>> load_cases([{"text": "meh", "label": "ok"}], task)
    Traceback (most recent call last):
    ...
    llmclf.errors.TaskFileError: <rows>:1: label: unknown label 'ok'; valid labels: neg, pos
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmclf.errors import TaskFileError
from llmclf.readers import Row, detect_format, is_hf_dataset, iter_rows, source_name, text_of
from llmclf.task_refs import SHIPPED_EVAL_SETS, is_name
from llmclf.types import ABSTAIN, Task

if TYPE_CHECKING:
    import datasets

__all__ = [
    "SHIPPED_EVAL_SETS",
    "Case",
    "EvalSet",
    "case_to_json_dict",
    "generated_id",
    "list_eval_sets",
    "load_cases",
    "load_eval_set",
    "to_hf_dataset",
    "write_cases_jsonl",
]

#: The eval sets shipped in the repository (``<repo>/eval_sets``).

_CASE_FILES = ("cases.jsonl", "cases.csv", "cases.tsv", "cases.parquet")


@dataclass(frozen=True)
class Case:
    """One labelled case: an id, the text, its gold labels and the line it came from.

    Example:
        >>> Case(id="a", text="great", labels=("pos",)).label
        'pos'
    """

    id: str
    text: str
    labels: tuple[str, ...]
    line: int | None = None

    @property
    def label(self) -> str | None:
        """The first (for single-label tasks: the only) label, or None when there is none."""
        return self.labels[0] if self.labels else None


@dataclass(frozen=True)
class EvalSet:
    """A named eval set: its task, its cases and, when present, its labelled few-shot pool.

    Example:
        >>> es = load_eval_set("sst2")                                   # doctest: +SKIP
        >>> es.task.kind, len(es.cases) > 0                               # doctest: +SKIP
        ('binary', True)
    """

    name: str
    dir: Path
    task: Task
    cases: tuple[Case, ...]
    pool_path: Path | None = None

    @property
    def cases_path(self) -> Path:
        """The file the cases were read from."""
        return next(
            (self.dir / f for f in _CASE_FILES if (self.dir / f).is_file()),
            self.dir / _CASE_FILES[0],
        )

    def load_pool(self) -> list[Case]:
        """The few-shot pool's cases (checked against the task), or [] when there is no pool."""
        return [] if self.pool_path is None else load_cases(self.pool_path, self.task)


def generated_id(text: str) -> str:
    """The id given to a case that has none: ``text-`` + 12 hex digits of sha256(text).

    Example:
        >>> generated_id("hello")
        'text-2cf24dba5fb0'
    """
    return "text-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


# --------------------------------------------------------------------------- CSV cells


def _split_labels_cell(cell: str, name: str, lineno: int, field: str) -> Any:
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except (ValueError, RecursionError):
            raise TaskFileError(
                "a labels cell starting with '[' must be a JSON list of names",
                path=name,
                line=lineno,
                field=field,
            ) from None
    return [part.strip() for part in cell.split("|")]


def _from_csv_cells(row: Row, name: str, label_field: str, labels_field: str, id_field: str) -> Row:
    """A CSV row as a case row: an empty label or id cell is an absent value (CSV has no null),
    and a ``labels`` cell is a JSON list or names separated by ``|``."""
    out: dict[str, Any] = dict(row.data)
    for key in (label_field, id_field):
        if out.get(key) == "":
            del out[key]
    if labels_field in out:
        out[labels_field] = _split_labels_cell(out[labels_field], name, row.line, labels_field)
        if label_field in out and out[labels_field] == []:
            del out[labels_field]
    return Row(row.line, out)


# --------------------------------------------------------------------------- checks


def _label_error(value: Any, task: Task, name: str, line: int, field: str) -> TaskFileError:
    valid = ", ".join(task.label_names)
    if isinstance(value, str):
        if value == ABSTAIN:
            msg = f"{ABSTAIN!r} is not a gold label; valid labels: {valid}"
        else:
            close = difflib.get_close_matches(value, task.label_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown label {value!r}{hint}; valid labels: {valid}"
    else:
        msg = f"a label must be a label name (string), got {type(value).__name__} {value!r}"
    return TaskFileError(msg, path=name, line=line, field=field)


def _row_to_case(
    row: Row,
    task: Task,
    name: str,
    text_field: str,
    label_field: str,
    labels_field: str,
    id_field: str,
) -> tuple[str | None, str, tuple[str, ...]]:
    data, line = row.data, row.line
    if not isinstance(data, Mapping):
        raise TaskFileError(
            f"a case must be an object with a {text_field!r} field, got {type(data).__name__}",
            path=name,
            line=line,
        )
    text = text_of(row, name, text_field, what="case")
    rid = data.get(id_field)
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            raise TaskFileError(
                f"an id is a string or an integer, got {type(rid).__name__}",
                path=name,
                line=line,
                field=id_field,
            )
        rid = str(rid)
        if not rid.strip():
            raise TaskFileError("id is empty", path=name, line=line, field=id_field)

    single = data.get(label_field)
    many = data.get(labels_field)
    if single is not None and many is not None:
        raise TaskFileError(
            f"give one of {label_field!r} or {labels_field!r}, not both",
            path=name,
            line=line,
            field=labels_field,
        )
    if single is None and many is None:
        want = labels_field if task.is_multilabel else label_field
        raise TaskFileError(
            f"missing the gold label: give {want!r}", path=name, line=line, field=want
        )

    if single is not None:
        if task.is_multilabel:
            raise TaskFileError(
                f"task {task.name!r} is multilabel: give {labels_field!r} as a list, "
                f"e.g. {labels_field!r}: [{single!r}]",
                path=name,
                line=line,
                field=label_field,
            )
        if single not in task.label_names:
            raise _label_error(single, task, name, line, label_field)
        return rid, text, (single,)

    if isinstance(many, str) or not isinstance(many, Sequence):
        raise TaskFileError(
            f"must be a list of label names, got {type(many).__name__}",
            path=name,
            line=line,
            field=labels_field,
        )
    labels = list(many)
    for value in labels:
        if not isinstance(value, str) or value not in task.label_names:
            raise _label_error(value, task, name, line, labels_field)
    if len(set(labels)) != len(labels):
        dupes = sorted({v for v in labels if labels.count(v) > 1})
        raise TaskFileError(
            f"label listed more than once: {dupes}", path=name, line=line, field=labels_field
        )
    if not task.is_multilabel and len(labels) != 1:
        what = "no label" if not labels else f"{len(labels)} labels {labels}"
        raise TaskFileError(
            f"task {task.name!r} is {task.kind}: a case takes exactly one label, got {what}",
            path=name,
            line=line,
            field=labels_field,
        )
    return rid, text, tuple(labels)


def _build_cases(
    rows: Iterable[Row],
    task: Task,
    name: str,
    text_field: str,
    label_field: str,
    labels_field: str,
    id_field: str,
) -> list[Case]:
    cases: list[Case] = []
    seen: dict[str, int] = {}
    text_counts: dict[str, int] = {}
    for row in rows:
        line = row.line
        rid, text, labels = _row_to_case(
            row, task, name, text_field, label_field, labels_field, id_field
        )
        origin = ""
        if rid is None:
            base = generated_id(text)
            n = text_counts.get(base, 0) + 1
            text_counts[base] = n
            rid = base if n == 1 else f"{base}-{n}"
            origin = " (generated from the text)"
        if rid in seen:
            raise TaskFileError(
                f"duplicate id {rid!r}{origin}: already used on line {seen[rid]}",
                path=name,
                line=line,
                field=id_field,
            )
        seen[rid] = line
        cases.append(Case(id=rid, text=text, labels=labels, line=line))
    return cases


# --------------------------------------------------------------------------- public API


def load_cases(
    source: str | os.PathLike[str] | datasets.Dataset | Sequence[Mapping[str, Any]],
    task: Task,
    *,
    text_field: str = "text",
    label_field: str = "label",
    labels_field: str = "labels",
    id_field: str = "id",
    name: str | None = None,
) -> list[Case]:
    """Load labelled cases and check every one against ``task``.

    ``source`` is a path (``.jsonl``/``.json``/``.ndjson``, ``.csv``, ``.tsv``, ``.parquet``,
    or a `datasets` directory), a `datasets.Dataset` (``ClassLabel`` columns are decoded to
    names) or a list of dicts.
    ``name`` is what errors call an in-memory source (default ``<rows>`` / ``<dataset>``).
    Every problem raises `TaskFileError` naming the file and line (see the module docstring).

    Example:
        >>> cases = load_cases("eval_sets/sst2/cases.jsonl", task)       # doctest: +SKIP
        >>> cases[0].id, cases[0].label                                  # doctest: +SKIP
        ('sst2-test-000000', 'positive')
    """
    fields = (text_field, label_field, labels_field, id_field)
    where = source_name(source, name)
    rows: Iterable[Row]
    if isinstance(source, str | os.PathLike):
        fmt = detect_format(source)
        if fmt is None or fmt == "txt":
            suffix = Path(source).suffix
            raise TaskFileError(
                f"unknown file type {suffix!r}: use .jsonl, .csv, .tsv or .parquet", path=where
            )
        rows = iter_rows(source, fmt=fmt, name=where, columns=fields, require=[text_field])
        if fmt in ("csv", "tsv"):
            rows = (
                _from_csv_cells(r, where, label_field, labels_field, id_field) for r in rows
            )
    elif is_hf_dataset(source):
        rows = iter_rows(source, name=where, columns=fields, require=[text_field])
    elif isinstance(source, Sequence):
        rows = iter_rows(source, name=where)
    else:
        raise TaskFileError(
            f"cannot read cases from a {type(source).__name__}: give a path, "
            "a datasets.Dataset or a list of dicts",
            path=name,
        )
    return _build_cases(rows, task, where, *fields)


def list_eval_sets(*roots: Path) -> list[str]:
    """Names of the eval sets (dirs holding a ``task.yaml``) under ``./eval_sets`` and the shipped
    ones, or under ``roots`` when given.

    Example:
        >>> "sst2" in list_eval_sets()                                   # doctest: +SKIP
        True
    """
    search = roots or (Path.cwd() / "eval_sets", SHIPPED_EVAL_SETS)
    names: set[str] = set()
    for root in search:
        if root.is_dir():
            names.update(p.parent.name for p in root.glob("*/task.yaml"))
    return sorted(names)


def load_eval_set(ref: str | os.PathLike[str]) -> EvalSet:
    """Load an eval set from its directory, its ``task.yaml``, or its name.

    A name is looked up in ``./eval_sets/<name>`` and then in the repository's shipped
    ``eval_sets/<name>``. The directory holds ``task.yaml``, a cases file (``cases.jsonl``,
    or ``cases.csv``/``.tsv``/``.parquet``) and optionally ``pool.jsonl``.

    Example:
        >>> es = load_eval_set("sst2")                                   # doctest: +SKIP
        >>> es.name, es.task.positive_label, es.pool_path.name           # doctest: +SKIP
        ('sst2', 'positive', 'pool.jsonl')
    """
    ref_str = os.fspath(ref)
    p = Path(ref_str).expanduser()
    task_path: Path | None = None
    if p.is_file():
        task_path, d = p, p.parent
    elif p.is_dir():
        d = p
    elif isinstance(ref, str) and is_name(ref_str):
        candidates = [Path.cwd() / "eval_sets" / ref_str, SHIPPED_EVAL_SETS / ref_str]
        found = next((c for c in candidates if (c / "task.yaml").is_file()), None)
        if found is None:
            known = list_eval_sets()
            raise TaskFileError(
                f"no eval set named {ref_str!r} (looked in "
                f"{', '.join(str(c) for c in candidates)}); known sets: "
                f"{', '.join(known) if known else 'none'}",
                path=ref_str,
            )
        d = found
    else:
        raise TaskFileError("no such eval-set directory or task file", path=ref_str)
    if task_path is None:
        task_path = d / "task.yaml"
        if not task_path.is_file():
            raise TaskFileError("an eval-set directory needs a task.yaml", path=str(task_path))
    task = Task.from_yaml(task_path)
    cases_path = next((d / f for f in _CASE_FILES if (d / f).is_file()), None)
    if cases_path is None:
        raise TaskFileError(f"no cases file: expected one of {', '.join(_CASE_FILES)}", path=str(d))
    cases = load_cases(cases_path, task)
    if not cases:
        raise TaskFileError("the eval set has no cases", path=str(cases_path))
    pool = d / "pool.jsonl"
    return EvalSet(
        name=d.resolve().name,
        dir=d,
        task=task,
        cases=tuple(cases),
        pool_path=pool if pool.is_file() else None,
    )


def _check_case(case: Case, task: Task) -> None:
    where = "<cases>"
    for lab in case.labels:
        if lab not in task.label_names:
            raise _label_error(lab, task, where, case.line or 0, "labels")
    if not task.is_multilabel and len(case.labels) != 1:
        raise TaskFileError(
            f"case {case.id!r}: a {task.kind} case takes exactly one label, "
            f"got {list(case.labels)}",
            path=where,
            line=case.line,
            field="labels",
        )


def to_hf_dataset(cases: Iterable[Case], task: Task) -> datasets.Dataset:
    """Export cases as a `datasets.Dataset` with columns ``id``, ``text`` and ``label``
    (a ``ClassLabel`` with the task's names) or, for a multilabel task, ``labels``
    (a sequence of ``ClassLabel``). `load_cases` reads it back to the same cases.

    Example:
        >>> ds = to_hf_dataset(cases, task)                               # doctest: +SKIP
        >>> ds.features["label"].int2str(ds[0]["label"])                  # doctest: +SKIP
        'positive'
    """
    import datasets

    cases = list(cases)
    for c in cases:
        _check_case(c, task)
    names = list(task.label_names)
    index = {n: i for i, n in enumerate(names)}
    class_label = datasets.ClassLabel(names=names)
    if task.is_multilabel:
        features = datasets.Features(
            {
                "id": datasets.Value("string"),
                "text": datasets.Value("string"),
                "labels": datasets.Sequence(class_label),
            }
        )
        data: dict[str, list[Any]] = {
            "id": [c.id for c in cases],
            "text": [c.text for c in cases],
            "labels": [[index[lab] for lab in c.labels] for c in cases],
        }
    else:
        features = datasets.Features(
            {"id": datasets.Value("string"), "text": datasets.Value("string"), "label": class_label}
        )
        data = {
            "id": [c.id for c in cases],
            "text": [c.text for c in cases],
            "label": [index[c.labels[0]] for c in cases],
        }
    return datasets.Dataset.from_dict(data, features=features)


def case_to_json_dict(case: Case, task: Task) -> dict[str, Any]:
    """The case-file row for a case: ``{"id", "text", "label"}`` or ``{"id", "text", "labels"}``.

    Example:
        >>> case_to_json_dict(Case(id="a", text="hi", labels=("pos",)), task)  # doctest: +SKIP
        {'id': 'a', 'text': 'hi', 'label': 'pos'}
    """
    if task.is_multilabel:
        return {"id": case.id, "text": case.text, "labels": list(case.labels)}
    return {"id": case.id, "text": case.text, "label": case.labels[0]}


def write_cases_jsonl(cases: Iterable[Case], path: str | os.PathLike[str], task: Task) -> int:
    """Write cases as a JSONL case file (UTF-8, one object per line); returns the row count.

    Example:
        >>> write_cases_jsonl(cases, "my_set/cases.jsonl", task)          # doctest: +SKIP
        200
    """
    n = 0
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for c in cases:
            _check_case(c, task)
            f.write(json.dumps(case_to_json_dict(c, task), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, out)
    return n
