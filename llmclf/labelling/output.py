"""Write a job's labels: ``.jsonl``, ``.parquet``, or a `datasets.Dataset` directory.

Each row: ``id``, ``text``, ``label`` (or ``labels`` for a multi-label task), ``scores`` (one
float per label), ``score_source``, ``abstained``, ``prompt_id``, ``teacher``, ``line``. The file
is written next to its place and renamed into it, so a half-written output never exists.

Example:
    >>> write_labels(rows, task, "labels.parquet")                    # doctest: +SKIP
    >>> import datasets; datasets.load_dataset("parquet", data_files="labels.parquet")["train"]
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmclf.types import Prediction, Task

#: Output formats by suffix; anything else is a `datasets.Dataset` directory.
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def output_rows(
    task: Task, records: Sequence[dict[str, Any]], keys: set[str], teacher: str
) -> list[dict[str, Any]]:
    """Rows for the output from the store's ``teacher_labels`` records of the given keys."""
    rows: list[dict[str, Any]] = []
    for rec in records:
        if rec["key"] not in keys:
            continue
        meta = rec["prediction"]
        pred = Prediction.model_validate(meta["prediction"])
        row: dict[str, Any] = {"id": meta.get("id") or rec["key"], "text": rec["text"]}
        if task.is_multilabel:
            row["labels"] = list(pred.labels)
        else:
            row["label"] = pred.labels[0] if pred.labels else None
        row.update(
            scores={n: float(pred.scores.get(n, 0.0)) for n in task.label_names},
            score_source=pred.score_source,
            abstained=pred.abstained,
            prompt_id=pred.prompt_hash,
            teacher=teacher,
            line=meta.get("line"),
        )
        rows.append(row)
    return rows


def write_labels(rows: Sequence[dict[str, Any]], task: Task, out: str | Path) -> Path:
    """Write ``rows`` (from `output_rows`) to ``out``, atomically."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    if suffix in JSONL_SUFFIXES:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
        return p
    ds = _dataset(rows, task)
    if suffix == ".parquet":
        ds.to_parquet(str(tmp))
        os.replace(tmp, p)
        return p
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    if p.exists():
        old = p.with_name(f".{p.name}.old-{os.getpid()}")
        os.replace(p, old)
        os.replace(tmp, p)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, p)
    return p


def _dataset(rows: Sequence[dict[str, Any]], task: Task) -> Any:
    import datasets

    names = list(task.label_names)
    label_col = "labels" if task.is_multilabel else "label"
    data: dict[str, list[Any]] = {
        "id": [str(r["id"]) for r in rows],
        "text": [r["text"] for r in rows],
        label_col: [r[label_col] for r in rows],
        # every row has a score for every label: a struct column, as in the JSONL rows
        "scores": [{n: float(r["scores"][n]) for n in names} for r in rows],
        "score_source": [r["score_source"] for r in rows],
        "abstained": [r["abstained"] for r in rows],
        "prompt_id": [r["prompt_id"] for r in rows],
        "teacher": [r["teacher"] for r in rows],
        "line": [r["line"] for r in rows],
    }
    ds = datasets.Dataset.from_dict(data)
    ds.info.description = f"teacher labels for task {task.name} (labels {names})"
    return ds
