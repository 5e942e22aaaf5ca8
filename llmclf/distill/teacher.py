"""Teacher stage: label every unlabelled text with the LLM teacher, resumably.

The texts are streamed and the teacher is asked one text per request, with bounded
concurrency, a progress bar (ETA, tokens, cost) and the LLM cache. Every label is committed to
the store's ``teacher_labels`` table as soon as it arrives, keyed by a *job id* (hash of the
task fingerprint, the teacher spec, the prompt and the input file's content) and an *item key*
(position + hash of the text): after a crash or ``kill -9`` a re-run asks only for the missing
labels, and no label is ever stored twice.

Example:
    >>> labels = label_unlabeled(task, "llm:local", "texts.jsonl")       # doctest: +SKIP
    >>> len(labels.rows), labels.n_new
    (500, 500)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from llmclf.backends.base import Backend
from llmclf.backends.registry import make_backend
from llmclf.classifier import validate_texts
from llmclf.errors import ConfigError, InputTextError, TeacherError
from llmclf.jobs import Outcome, run_job
from llmclf.redaction import redact_spec
from llmclf.store import Store, open_store
from llmclf.types import Prediction, Task, Usage
from llmclf.unlabeled import TextItem, iter_texts

if TYPE_CHECKING:
    import datasets

__all__ = [
    "TeacherLabels",
    "TeacherRow",
    "UnlabeledSource",
    "export_teacher_labels",
    "hash_file",
    "item_key",
    "label_certainty",
    "label_unlabeled",
    "teacher_dataset",
    "teacher_job_id",
]

log = logging.getLogger("llmclf.distill")


@dataclass(frozen=True)
class TeacherRow:
    """One teacher-labelled (or gold) training row."""

    key: str
    position: int
    text: str
    labels: tuple[str, ...]
    scores: dict[str, float]
    confidence: float
    abstained: bool = False
    id: str | None = None
    line: int | None = None
    source: Literal["teacher", "gold", "review"] = "teacher"


@dataclass
class TeacherLabels:
    """The outcome of `label_unlabeled`: every row of the job, in input order."""

    job: str
    source: str
    source_hash: str
    rows: list[TeacherRow]
    n_texts: int
    n_new: int
    n_skipped: int
    usage: Usage
    seconds: float
    prompt_id: str | None

    @property
    def labelled(self) -> list[TeacherRow]:
        return [r for r in self.rows if not r.abstained]

    @property
    def n_abstained(self) -> int:
        return sum(1 for r in self.rows if r.abstained)


def label_certainty(
    task: Task,
    labels: Sequence[str],
    scores: dict[str, float],
    threshold: float | None = None,
) -> float:
    """How sure an answer is, in [0.5, 1] for binary tasks and [0, 1] otherwise.

    Binary: the distance of the positive score from the task's decision threshold, rescaled
    so that the threshold maps to 0.5 and a score of 0 or 1 to 1.0 (with the default
    threshold 0.5 this is ``max(p, 1 - p)``); ``threshold`` is the one the answer was
    decided at (`decided_at`), the task's own when None. Multi-class: the
    chosen label's score.
    Multi-label: the least certain per-label decision, ``min(max(s, 1 - s))``.

    Example:
        >>> from llmclf.types import Task
        >>> t = Task(name="t", kind="multilabel", labels={"a": "", "b": ""})
        >>> label_certainty(t, ["a"], {"a": 0.9, "b": 0.3})
        0.7
    """
    if not scores:
        return 0.0
    if task.is_multilabel:
        return float(min(max(s, 1.0 - s) for s in scores.values()))
    if task.kind == "binary" and task.positive_label in scores:
        p = float(scores[task.positive_label])
        tau = task.threshold if threshold is None else threshold
        if p >= tau:
            return 0.5 + 0.5 * (p - tau) / (1.0 - tau) if tau < 1.0 else 1.0
        return 0.5 + 0.5 * (tau - p) / tau
    if labels:
        return float(scores.get(labels[0], max(scores.values())))
    return float(max(scores.values()))


def decided_at(task: Task, pred: Prediction) -> float:
    """The binary threshold ``pred`` was decided at: the one it carries, else 0.5 for a
    calibrated answer (its scores are probabilities), else the task's own.

    Example:
        >>> from llmclf.types import Task
        >>> t = Task(name="t", kind="binary", labels={"n": "", "p": ""}, positive_label="p",
        ...          threshold=0.34)
        >>> decided_at(t, Prediction(labels=("p",), scores={"n": 0.6, "p": 0.4},
        ...                          score_source="logprobs", backend="x"))
        0.34
    """
    if pred.threshold is not None:
        return pred.threshold
    return 0.5 if pred.calibrated else task.threshold


def _row_from_record(task: Task, rec: dict[str, Any]) -> TeacherRow:
    pred = Prediction.model_validate(rec["prediction"]["prediction"])
    meta = rec["prediction"]
    scores = {k: float(v) for k, v in pred.scores.items()}
    return TeacherRow(
        key=rec["key"],
        position=int(meta["position"]),
        text=rec["text"],
        labels=tuple(pred.labels),
        scores=scores,
        confidence=0.0 if pred.abstained else label_certainty(
            task, pred.labels, scores, decided_at(task, pred)
        ),
        abstained=pred.abstained,
        id=meta.get("id"),
        line=meta.get("line"),
    )


def item_key(position: int, text: str) -> str:
    """The key of one input text within a job: its position and a hash of the text.

    Example:
        >>> item_key(3, "hello")
        '3:2cf24dba5fb0a30e'
    """
    return f"{position}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def teacher_job_id(
    task: Task,
    teacher: str,
    prompt_id: str | None,
    source_hash: str,
    text_field: str,
    pool_hash: str | None = None,
) -> str:
    """The id of a labelling job: same task, teacher, prompt (and few-shot pool) and input
    content → same job.

    Example:
        >>> teacher_job_id(task, "llm:local", "zero_shot.v1@ab12", "f00d", "text")  # doctest: +SKIP
        'tj-5c1f0e2b9a7d4e61'
    """
    parts: list[Any] = [
        task.fingerprint(), redact_spec(teacher), prompt_id, source_hash, text_field
    ]  # fmt: skip
    if pool_hash is not None:
        parts.append(pool_hash)
    blob = json.dumps(parts)
    return "tj-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def teacher_options(
    prompt: str | None, few_shot_pool: str | Path | None
) -> tuple[dict[str, Any], str | None]:
    """The teacher backend's options for a labelling job, and the few-shot pool's hash (part of
    the job id, so every engine that labels the same job finds the same rows).

    Example:
        >>> teacher_options("few_shot", None)
        ({'prompt': 'few_shot'}, None)
    """
    options: dict[str, Any] = {}
    if prompt:
        options["prompt"] = prompt
    pool_hash = None
    if few_shot_pool is not None:
        if not Path(few_shot_pool).is_file():
            raise ConfigError(f"few-shot pool not found: {few_shot_pool}")
        options["few_shot_pool"] = str(few_shot_pool)
        pool_hash = hash_file(Path(few_shot_pool))
    return options, pool_hash


class UnlabeledSource:
    """An input file (or stdin, read once into memory) that can be iterated more than once."""

    def __init__(self, source: str | Path | IO[str], text_field: str) -> None:
        self.text_field = text_field
        self._data: str | None = None
        if isinstance(source, str | Path) and str(source) != "-":
            self.path: Path | None = Path(source)
            self.name = str(source)
            if not self.path.is_file():
                raise ConfigError(f"unlabelled file not found: {source}")
            self.hash = hash_file(self.path)
        else:
            self.path = None
            self.name = "<stdin>"
            stream = sys.stdin if str(source) == "-" else source
            assert not isinstance(stream, str | Path)
            self._data = stream.read()
            self.hash = hashlib.sha256(self._data.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def items(self) -> Iterator[TextItem]:
        if self.path is not None:
            return iter_texts(self.path, text_field=self.text_field, skip_empty=True)
        assert self._data is not None
        return iter_texts(io.StringIO(self._data), text_field=self.text_field, skip_empty=True)


@dataclass(frozen=True)
class _Unit:
    """One text of a labelling job: its position in the input, its item key and the text."""

    position: int
    key: str
    item: TextItem

    @property
    def text(self) -> str:
        return self.item.text


def label_unlabeled(
    task: Task,
    teacher: str | Backend,
    unlabeled: str | Path | IO[str],
    *,
    store: Store | None = None,
    prompt: str | None = None,
    concurrency: int = 4,
    limit: int | None = None,
    text_field: str = "text",
    few_shot_pool: str | Path | None = None,
    progress: bool = True,
) -> TeacherLabels:
    """Label every text of ``unlabeled`` with the teacher, resumably (see the module docstring).

    Raises `ConfigError` for an empty input and `TeacherError` when the teacher failed on some
    texts (the labels it did give are kept: run again to resume).

    Example:
        >>> tl = label_unlabeled(task, "llm:local", "texts.txt")         # doctest: +SKIP
        >>> len(tl.rows), tl.n_new
        (500, 500)
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    store = store or open_store()
    src = UnlabeledSource(unlabeled, text_field)
    # a first pass validates the whole file (errors name the line) before any teacher call
    total = 0
    for _ in src.items():
        total += 1
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise ConfigError(f"{src.name}: no texts to label (the file is empty)")

    options, pool_hash = teacher_options(prompt, few_shot_pool)
    own_backend = not isinstance(teacher, Backend)
    backend: Backend = (
        make_backend(teacher, task, store=store, **options) if isinstance(teacher, str) else teacher
    )
    spec = teacher if isinstance(teacher, str) else backend.name
    template = getattr(backend, "template", None)
    prompt_id: str | None = getattr(template, "id", None)
    job = teacher_job_id(task, spec, prompt_id, src.hash, text_field, pool_hash)
    done = store.teacher_done_keys(job)
    start = time.perf_counter()
    usage = Usage()
    skipped = 0
    failures: list[tuple[TextItem, BaseException]] = []
    keys: set[str] = set()

    def units() -> Iterator[_Unit]:
        for position, item in enumerate(src.items()):
            if position >= total:
                return
            unit = _Unit(position, item_key(position, item.text), item)
            keys.add(unit.key)
            yield unit

    def ask(texts: list[str]) -> list[Prediction]:
        validate_texts(texts, task.max_text_chars)
        return backend.predict_batch(texts)

    def commit(outcome: Outcome[_Unit]) -> None:
        nonlocal usage, skipped
        unit, pred = outcome.item, outcome.prediction
        if isinstance(outcome.error, InputTextError):
            log.warning("%s:%s: skipped: %s", src.name, unit.item.line, outcome.error)
            skipped += 1
            return
        if outcome.error is not None or pred is None:
            failures.append((unit.item, outcome.error or TeacherError("no answer")))
            return
        record = {
            "position": unit.position,
            "id": unit.item.id,
            "line": unit.item.line,
            "prediction": pred.model_dump(mode="json"),
        }
        # committed at once: a crash loses at most the texts in flight
        store.put_teacher_label(job, unit.key, unit.position, unit.item.text, record)
        usage = usage + pred.usage

    try:
        counts = run_job(
            units(),
            ask,
            commit,
            total=total,
            label=f"teacher {redact_spec(spec)}",
            key=lambda u: u.key,
            done=done,
            concurrency=concurrency,
            stop=lambda: bool(failures),  # the teacher is failing: stop asking, keep the labels
            progress=progress,
            thread_name="llmclf-teacher",
        )
    finally:
        if own_backend:
            backend.close()
    if failures:
        first_item, first_exc = failures[0]
        have = len(store.teacher_done_keys(job))
        raise TeacherError(
            f"the teacher failed on {len(failures)} text(s) (first: {src.name}:{first_item.line}: "
            f"{type(first_exc).__name__}: {first_exc}). {have} label(s) are saved in job {job}; "
            "run the same command again to resume"
        )
    rows = [_row_from_record(task, r) for r in store.teacher_labels(job) if r["key"] in keys]
    return TeacherLabels(
        job=job,
        source=src.name,
        source_hash=src.hash,
        rows=rows,
        n_texts=total,
        n_new=counts.new,
        n_skipped=skipped,
        usage=usage,
        seconds=time.perf_counter() - start,
        prompt_id=prompt_id,
    )


def teacher_dataset(rows: Sequence[TeacherRow], task: Task) -> datasets.Dataset:
    """The teacher labels as a `datasets.Dataset`: ``id``, ``text``, ``label`` (or ``labels``),
    ``confidence``, ``abstained`` and ``scores`` (one float per label, in the task's order).

    Example:
        >>> ds = teacher_dataset(result.rows, task)                      # doctest: +SKIP
        >>> ds.column_names
        ['id', 'text', 'label', 'confidence', 'abstained', 'scores']
    """
    import datasets

    names = list(task.label_names)
    data: dict[str, list[Any]] = {
        "id": [r.id or r.key for r in rows],
        "text": [r.text for r in rows],
    }
    if task.is_multilabel:
        data["labels"] = [list(r.labels) for r in rows]
    else:
        data["label"] = [r.labels[0] if r.labels else None for r in rows]
    data["confidence"] = [r.confidence for r in rows]
    data["abstained"] = [r.abstained for r in rows]
    data["scores"] = [[float(r.scores.get(n, 0.0)) for n in names] for r in rows]
    ds = datasets.Dataset.from_dict(data)
    ds.info.description = f"teacher labels for task {task.name}; scores follow labels {names}"
    return ds


def export_teacher_labels(rows: Sequence[TeacherRow], task: Task, path: str | Path) -> Path:
    """Write the teacher labels: JSONL for a ``.jsonl``/``.json`` path, else a `datasets.Dataset`
    directory (``datasets.load_from_disk`` reads it back).

    Example:
        >>> export_teacher_labels(result.rows, task, "labels.jsonl")      # doctest: +SKIP
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                out: dict[str, Any] = {"id": r.id or r.key, "text": r.text}
                if task.is_multilabel:
                    out["labels"] = list(r.labels)
                else:
                    out["label"] = r.labels[0] if r.labels else None
                out.update(
                    confidence=round(r.confidence, 6),
                    abstained=r.abstained,
                    scores=r.scores,
                    line=r.line,
                )
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    else:
        teacher_dataset(rows, task).save_to_disk(str(p))
    return p
