"""``--engine async`` (the default): today's online path, `llmclf.distill.label_unlabeled`.

One process asks the teacher one text per request with bounded concurrency, through the LLM
cache, committing each label to the store as it arrives (resumable after any crash).

Example:
    >>> n_new, usage = run_async(job, concurrency=8)                  # doctest: +SKIP
"""

from __future__ import annotations

import io
from pathlib import Path

from llmclf.distill import label_unlabeled
from llmclf.errors import LLMClfError
from llmclf.labelling.job import LabelJob
from llmclf.types import Usage


def run_async(
    job: LabelJob, *, concurrency: int = 4, limit: int | None = None, progress: bool = True
) -> tuple[int, Usage]:
    """Label the job's missing items online; returns ``(labels made, usage)``. Raises
    `TeacherError` when the teacher failed on some texts (what it gave is kept)."""
    source: str | Path | io.StringIO = (
        io.StringIO(job.stdin_data) if job.stdin_data is not None else job.source
    )
    tl = label_unlabeled(
        job.task,
        job.teacher,
        source,
        store=job.store,
        prompt=job.options.get("prompt"),
        concurrency=concurrency,
        limit=limit,
        text_field=job.text_field,
        few_shot_pool=job.options.get("few_shot_pool"),
        progress=progress,
    )
    if tl.job != job.job:  # the two must agree, or engines would not share labels
        raise LLMClfError(f"internal: async job {tl.job} differs from label job {job.job}")
    return tl.n_new, tl.usage
