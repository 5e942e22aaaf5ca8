"""Teacher labels made already (``llmclf label --out FILE``), read back for ``distill --labels``.

A labels file is what `llmclf.labelling.output.write_labels` writes: ``.jsonl`` (one JSON object
a line), ``.parquet``, or a `datasets.Dataset` directory, with ``text``, ``label`` (or ``labels``
for a multi-label task), ``scores``, ``abstained``, ``prompt_id`` and ``teacher`` per row. Every
row is checked against the task; a bad row is an error naming the file, the line and the field.

Example:
    >>> labels = labels_from_file(task, "labels.jsonl")                    # doctest: +SKIP
    >>> len(labels.labelled), labels.prompt_id
    (2000, 'zero_shot.v1@3f2a...')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmclf.distill.teacher import TeacherLabels, TeacherRow, label_certainty
from llmclf.errors import TaskFileError
from llmclf.types import Task, Usage

__all__ = ["labels_from_file"]

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def labels_from_file(task: Task, path: str | Path) -> TeacherLabels:
    """The rows of a labels file as `TeacherLabels` (no teacher call is made)."""
    p = Path(path)
    if not p.exists():
        raise TaskFileError("no such labels file", path=str(p))
    rows: list[TeacherRow] = []
    prompt_ids: set[str] = set()
    for line, raw in _records(p):
        row = _row(task, raw, p, line, len(rows))
        rows.append(row)
        if raw.get("prompt_id"):
            prompt_ids.add(str(raw["prompt_id"]))
    if not rows:
        raise TaskFileError("the labels file has no rows", path=str(p))
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.text, r.labels, r.abstained]).encode())
    return TeacherLabels(
        job=f"labels:{digest.hexdigest()[:16]}",
        source=str(p),
        source_hash=digest.hexdigest()[:16],
        rows=rows,
        n_texts=len(rows),
        n_new=0,
        n_skipped=0,
        usage=Usage(),
        seconds=0.0,
        prompt_id=next(iter(prompt_ids)) if len(prompt_ids) == 1 else None,
    )


def _records(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if p.is_file() and p.suffix.lower() in JSONL_SUFFIXES:
        with open(p, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TaskFileError(f"not JSON: {exc.msg}", path=str(p), line=line) from None
                if not isinstance(obj, dict):
                    raise TaskFileError("each line must be a JSON object", path=str(p), line=line)
                yield line, obj
        return
    import datasets

    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.Dataset.from_parquet(str(p))
    except Exception as exc:  # Arrow/datasets raise many kinds: name the file
        raise TaskFileError(
            f"cannot read labels (.jsonl, .parquet or a datasets directory): {exc}", path=str(p)
        ) from None
    for i, obj in enumerate(ds, start=1):
        yield i, dict(obj)


def _row(task: Task, raw: dict[str, Any], p: Path, line: int, position: int) -> TeacherRow:
    def bad(field: str, message: str) -> TaskFileError:
        return TaskFileError(message, path=str(p), line=line, field=field)

    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise bad("text", "must be a non-empty string")
    names = set(task.label_names)
    abstained = bool(raw.get("abstained", False))
    field = "labels" if task.is_multilabel else "label"
    value = raw.get(field)
    if task.is_multilabel:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(field, "must be a list of label names")
        labels = tuple(value)
    elif value is None:
        if not abstained:
            raise bad(field, "missing (and the row is not abstained)")
        labels = ()
    elif isinstance(value, str):
        labels = (value,)
    else:
        raise bad(field, "must be a label name")
    unknown = [v for v in labels if v not in names]
    if unknown:
        raise bad(field, f"unknown label {unknown[0]!r}; labels: {', '.join(task.label_names)}")
    scores_raw = raw.get("scores")
    if scores_raw is None:
        scores = {n: float(n in labels) for n in task.label_names}
    elif isinstance(scores_raw, dict):
        try:
            scores = {n: float(scores_raw.get(n) or 0.0) for n in task.label_names}
        except (TypeError, ValueError):
            raise bad("scores", "every score must be a number") from None
    else:
        raise bad("scores", "must be an object of label -> score")
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    threshold = raw.get("threshold")
    return TeacherRow(
        key=key,
        position=position,
        text=text,
        labels=labels,
        scores=scores,
        confidence=0.0
        if abstained
        else label_certainty(
            task, labels, scores, float(threshold) if threshold is not None else None
        ),
        abstained=abstained,
        id=None if raw.get("id") is None else str(raw["id"]),
        line=line,
    )
