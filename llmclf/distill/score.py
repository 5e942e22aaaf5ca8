"""Score stage: the teacher and the student on the eval set, each once, each a stored eval run.

The teacher is asked exactly as `llmclf eval` asks it (same prompt and few-shot pool, so its
answers come from the LLM cache when that eval ran before). The student is scored from the
finished model directory, before it is moved into place, with the runtime that will serve it;
that one run gives its metrics, its one-text latency (measured by `evaluate` one text per call),
its predictions for calibration and its agreement with the teacher, and is stored like any
`llmclf eval` run under the name ``setfit:OUT``.

Example:
    >>> scored = score_student(tmp, "setfit:models/sst2", es, store=store)  # doctest: +SKIP
    >>> scored.run.metrics["accuracy"], scored.latency_ms
    (0.84, 1.9)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmclf.backends.setfit import SetFitBackend
from llmclf.datasets import EvalSet
from llmclf.evaluate import EvalRun, evaluate
from llmclf.store import Store

__all__ = ["StudentScore", "score_student", "score_teacher"]


@dataclass
class StudentScore:
    """The student's eval run, the runtime that served it and its median one-text latency."""

    run: EvalRun
    runtime: str
    latency_ms: float | None


def score_teacher(
    eval_set: EvalSet,
    teacher: str,
    *,
    prompt: str | None,
    few_shot_pool: str | Path | None,
    concurrency: int,
    store: Store,
    progress: bool,
) -> EvalRun:
    """The teacher's eval run on ``eval_set`` (resumed when one was interrupted)."""
    return evaluate(
        eval_set,
        teacher,
        prompt=prompt,
        store=store,
        concurrency=concurrency,
        progress=progress,
        few_shot_pool=few_shot_pool,
    )


def score_student(
    model_dir: Path, name: str, eval_set: EvalSet, *, store: Store, progress: bool
) -> StudentScore:
    """Score the student in ``model_dir`` (served as ``name``) on ``eval_set``, once.

    A fresh run every time (never resumed: the directory's model is new, an older unfinished
    run under the same name was another model's).
    """
    served = SetFitBackend(model_dir, task=eval_set.task, name=name)
    runtime = served.runtime
    run = evaluate(eval_set, served, store=store, progress=progress, resume=False)
    p50 = (run.metrics.get("latency_ms") or {}).get("p50")
    return StudentScore(run=run, runtime=runtime, latency_ms=None if p50 is None else float(p50))
