"""One labelling job: its input, its id, its items, and the labels the store already holds.

The job id and item keys are the ones ``distill`` uses (`llmclf.distill.teacher_job_id`,
`llmclf.distill.item_key`), so labels made by any engine, or by ``distill``, are the same rows
of the store's ``teacher_labels`` table: a re-run with any engine labels only what is missing.

Example:
    >>> job = LabelJob.open(task, "llm:local", "texts.jsonl")       # doctest: +SKIP
    >>> len(job.items), len(job.missing())
    (500, 120)
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llmclf.backends.base import Backend
from llmclf.distill.teacher import hash_file, teacher_options
from llmclf.errors import ConfigError, InputTextError
from llmclf.redaction import redact_spec
from llmclf.store import Store
from llmclf.types import Prediction, Task
from llmclf.unlabeled import TextItem, iter_texts

# `llmclf.distill` (job ids, item keys) is imported where it is used: Ray actors import this
# module for `Item` and need none of distill's dependencies (seconds of imports per actor).


@dataclass(frozen=True)
class Item:
    """One text of the input, with its key in the job."""

    key: str
    position: int
    text: str
    line: int
    id: str | None = None


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class LabelJob:
    """A task, a teacher, an input: the items to label and where their labels go."""

    task: Task
    teacher: str
    backend: Backend
    store: Store
    source: str
    source_hash: str
    text_field: str
    job: str
    prompt_id: str | None
    items: list[Item]
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    stdin_data: str | None = None

    @classmethod
    def open(
        cls,
        task: Task,
        teacher: str,
        source: str | Path | IO[str],
        *,
        store: Store,
        prompt: str | None = None,
        text_field: str = "text",
        limit: int | None = None,
        few_shot_pool: str | Path | None = None,
    ) -> LabelJob:
        """Read and validate the whole input (errors name the file and line) and build the
        teacher backend; no teacher call is made."""
        from llmclf.backends.registry import make_backend
        from llmclf.classifier import validate_texts
        from llmclf.distill import teacher_job_id

        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        stdin_data: str | None = None
        if isinstance(source, str | Path) and str(source) != "-":
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"input file not found: {source}")
            name, src_hash = str(source), hash_file(path)
            texts = iter_texts(path, text_field=text_field, skip_empty=True)
        else:
            stream = sys.stdin if str(source) == "-" else source
            assert not isinstance(stream, str | Path)
            stdin_data = stream.read()
            name = "<stdin>"
            src_hash = _hash_bytes(stdin_data.encode("utf-8", "surrogatepass"))
            texts = iter_texts(io.StringIO(stdin_data), text_field=text_field, skip_empty=True)
        items: list[Item] = []
        skipped: list[tuple[Item, str]] = []
        for position, t in enumerate(texts):
            if limit is not None and position >= limit:
                break
            item = _item(position, t)
            try:
                validate_texts([t.text], task.max_text_chars)
            except InputTextError as exc:
                skipped.append((item, str(exc)))
                continue
            items.append(item)
        if not items and not skipped:
            raise ConfigError(f"{name}: no texts to label (the file is empty)")
        options, pool_hash = teacher_options(prompt, few_shot_pool)
        backend = make_backend(teacher, task, store=store, **options)
        template = getattr(backend, "template", None)
        prompt_id: str | None = getattr(template, "id", None)
        job = teacher_job_id(task, teacher, prompt_id, src_hash, text_field, pool_hash)
        return cls(
            task=task,
            teacher=teacher,
            backend=backend,
            store=store,
            source=name,
            source_hash=src_hash,
            text_field=text_field,
            job=job,
            prompt_id=prompt_id,
            items=items,
            skipped=skipped,
            options=options,
            stdin_data=stdin_data,
        )

    @property
    def teacher_shown(self) -> str:
        """The teacher spec with any secret removed (for output rows and messages)."""
        return redact_spec(self.teacher)

    def done_keys(self) -> set[str]:
        return self.store.teacher_done_keys(self.job)

    def missing(self) -> list[Item]:
        """The items the store holds no label for yet, in input order."""
        done = self.done_keys()
        return [it for it in self.items if it.key not in done]

    def commit(self, item: Item, pred: Prediction) -> None:
        """Store one label (one transaction), in the row format ``distill`` reads."""
        record = {
            "position": item.position,
            "id": item.id,
            "line": item.line,
            "prediction": pred.model_dump(mode="json"),
        }
        self.store.put_teacher_label(self.job, item.key, item.position, item.text, record)

    def close(self) -> None:
        self.backend.close()


def _item(position: int, t: TextItem) -> Item:
    from llmclf.distill import item_key

    return Item(item_key(position, t.text), position, t.text, t.line, t.id)
