"""Labelling: teacher labels for unlabelled texts, by one of three engines.

```
input (JSONL/CSV/TSV/Parquet/text/stdin) ──► LabelJob (job id, item keys, labels already stored)
   ──► engine: async (one process, online calls)          labelling/online.py
             | batch (the provider's Batch API, litellm)    labelling/batch.py
             | ray   (Ray Data actors on a cluster)         labelling/ray_engine.py
   ──► teacher labels in the store (one row per item key) ──► OUT (.jsonl/.parquet/dataset dir)
```

An engine changes where the work runs, never what a label is: the same prompt, schema,
validation, cache key and store rows, so labels from any engine (and from ``distill``) are
interchangeable, and a re-run with any engine labels only what is missing.

Example:
    >>> from llmclf.labelling import label                            # doctest: +SKIP
    >>> r = label("eval_sets/sst2/task.yaml", "llm:local", "texts.jsonl", "labels.parquet")
    >>> r.n_labelled, r.n_missing
    (2000, 0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from llmclf.errors import ConfigError
from llmclf.labelling.job import Item, LabelJob
from llmclf.labelling.output import output_rows, write_labels
from llmclf.store import Store, open_store
from llmclf.task_refs import load_task
from llmclf.types import Task, Usage

__all__ = ["ENGINES", "Engine", "LabelResult", "label"]

Engine = Literal["async", "batch", "ray"]
ENGINES: tuple[str, ...] = ("async", "batch", "ray")


@dataclass
class LabelResult:
    """What a `label` run did and where the job stands."""

    job: str
    engine: str
    out: Path | None
    n_texts: int
    n_labelled: int
    n_new: int
    n_skipped: int
    usage: Usage
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_missing(self) -> int:
        return self.n_texts - self.n_labelled

    @property
    def complete(self) -> bool:
        return self.n_missing == 0

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (what the CLI prints)."""
        return {
            "job": self.job,
            "engine": self.engine,
            "out": None if self.out is None else str(self.out),
            "texts": self.n_texts,
            "labelled": self.n_labelled,
            "new": self.n_new,
            "missing": self.n_missing,
            "skipped": self.n_skipped,
            "complete": self.complete,
            "usage": self.usage.model_dump(),
            "seconds": round(self.seconds, 3),
            "failures": self.failures[:20],
            "batches": [
                {k: b[k] for k in ("id", "batch_id", "status", "generation", "info")}
                | {"requests": len(b["keys"])}
                for b in self.batches
            ],
            **self.extra,
        }


def label(
    task: Task | str | Path,
    teacher: str,
    source: str | Path | IO[str],
    out: str | Path | None = None,
    *,
    engine: str = "async",
    store: Store | None = None,
    prompt: str | None = None,
    text_field: str = "text",
    limit: int | None = None,
    few_shot_pool: str | Path | None = None,
    concurrency: int = 4,
    progress: bool = True,
    batch_options: Any = None,
    ray_address: str | None = None,
    actors: int = 2,
) -> LabelResult:
    """Label every text of ``source`` with ``teacher`` through ``engine`` and write ``out``.

    Resumable with any engine: labels already in the store are not asked for again. With
    ``engine="batch"`` a run submits what is missing and returns (unless
    ``batch_options.wait``); run it again to download. ``out`` is written with every label
    the job holds so far (`LabelResult.complete` says whether that is all of them).

    Example:
        >>> r = label("sst2", "llm:openai/gpt-4o-mini", "texts.jsonl", "labels.jsonl",
        ...           engine="batch")                                 # doctest: +SKIP
        >>> r.summary()["batches"][0]["status"]
        'validating'
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if engine == "batch" and not teacher.startswith("llm:"):
        raise ConfigError(
            f"--engine batch needs an llm: teacher (a provider with a Batch API), got {teacher}"
        )
    if out is not None:
        _check_out(Path(out))
    task_obj = task if isinstance(task, Task) else load_task(str(task))
    store = store or open_store()
    start = time.perf_counter()
    job = LabelJob.open(
        task_obj,
        teacher,
        source,
        store=store,
        prompt=prompt,
        text_field=text_field,
        limit=limit,
        few_shot_pool=few_shot_pool,
    )
    failures: list[tuple[Item, str]] = []
    batches: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    try:
        if engine == "async":
            from llmclf.labelling.online import run_async

            n_new, usage = run_async(job, concurrency=concurrency, limit=limit, progress=progress)
        elif engine == "batch":
            from llmclf.labelling.batch import BatchEngine, BatchOptions

            opts = batch_options or BatchOptions(progress=progress)
            report = BatchEngine(job, opts).run()
            n_new, usage, failures, batches = (
                report.n_new,
                report.usage,
                report.failures,
                report.chunks,
            )
            extra = {
                "submitted": report.submitted,
                "online_retries": report.n_online,
                "from_cache": report.n_from_cache,
            }
        else:
            from llmclf.labelling.ray_engine import run_ray

            rr = run_ray(
                job, address=ray_address, actors=actors, concurrency=concurrency, progress=progress
            )
            n_new, usage, failures = rr.n_new, rr.usage, rr.failures
            extra = {"actors": actors}
    finally:
        job.close()
    keys = {it.key for it in job.items}
    rows = output_rows(task_obj, store.teacher_labels(job.job), keys, job.teacher_shown)
    written = write_labels(rows, task_obj, out) if out is not None else None
    return LabelResult(
        job=job.job,
        engine=engine,
        out=written,
        n_texts=len(job.items),
        n_labelled=len(rows),
        n_new=n_new,
        n_skipped=len(job.skipped),
        usage=usage,
        seconds=time.perf_counter() - start,
        failures=[
            {"line": it.line, "id": it.id, "key": it.key, "error": msg} for it, msg in failures
        ],
        batches=batches,
        extra=extra,
    )


def _check_out(out: Path) -> None:
    suffix = out.suffix.lower()
    if out.is_dir() and suffix in (".jsonl", ".json", ".ndjson", ".parquet"):
        raise ConfigError(f"--out {out}: is a directory, expected a {suffix} file")
    if out.exists() and out.is_file() and suffix not in (".jsonl", ".json", ".ndjson", ".parquet"):
        raise ConfigError(
            f"--out {out}: an existing file; a dataset directory, .jsonl or .parquet is written"
        )
