"""A student before any LLM label: SetFit trained on an eval set's labelled few-shot pool.

An eval set's ``pool.jsonl`` holds a few gold examples per label, drawn apart from its cases:
SetFit's own few-shot use case. A student trained on it can rank the labels from day one, so
an LLM's shortlist (`llmclf.shortlist`) needs no teacher labels first; a later
``llmclf distill`` (teacher labels) replaces it.

The model directory has the layout `llmclf distill` writes (``setfit:DIR`` serves it): body,
``head.json``, ``labels.json``, ``task.json``, ONNX exports checked against torch, and a
``card.json`` that says the labels are the pool's gold. It is written to a temporary directory
and renamed into place: a half-written directory never exists; an existing one is refused
without ``force``. The student is evaluated on the eval set's cases and the run is stored.

Example:
    >>> r = train_pool_student("banking77", "models/banking77-pool")    # doctest: +SKIP
    >>> r.n_train, round(r.metrics["accuracy"], 2)
    (539, 0.71)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmclf.datasets import EvalSet, load_eval_set
from llmclf.errors import ConfigError, DistillError
from llmclf.store import Store

__all__ = ["PoolStudentResult", "train_pool_student"]


@dataclass
class PoolStudentResult:
    """What `train_pool_student` wrote and how the student scored on the eval set's cases."""

    out_dir: Path
    eval_set: str
    n_train: int
    counts: dict[str, int]
    mode: str
    train_seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    parity: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``llmclf distill --from-pool --json`` prints)."""
        keys = ("accuracy", "macro_f1", "micro_f1", "n")
        return {
            "out_dir": str(self.out_dir),
            "source": "pool",
            "eval_set": self.eval_set,
            "n_train": self.n_train,
            "counts": self.counts,
            "mode": self.mode,
            "train_seconds": round(self.train_seconds, 3),
            "student": {k: self.metrics.get(k) for k in keys},
            "run_id": self.run_id,
        }


def _replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (with ``force``) is swapped
    out by renames, so ``out`` is always either the old or the new complete model."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    if not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force")
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def train_pool_student(
    eval_set: str | Path | EvalSet,
    out: str | Path,
    *,
    mode: str = "head-only",
    body: str | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    epochs: int | None = None,
    head_c: float | None = None,
    seed: int = 0,
    int8: bool = True,
    int8_bound: float | None = None,
    force: bool = False,
    evaluate_cases: bool = True,
    store: Store | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> PoolStudentResult:
    """Train a SetFit student on ``eval_set``'s few-shot pool (gold labels) and write it to
    ``out``; ``mode`` and the training options are `llmclf distill`'s.

    Example:
        >>> train_pool_student("clinc150", "models/clinc150-pool").metrics["accuracy"]
        0.62                                                           # doctest: +SKIP
    """
    from llmclf.distill import save_student, train_student
    from llmclf.export import INT8_BOUND, export_student

    say = echo or (lambda msg: None)
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force")
    es = eval_set if isinstance(eval_set, EvalSet) else load_eval_set(eval_set)
    if es.pool_path is None:
        raise ConfigError(
            f"eval set {es.name!r} has no pool.jsonl: --from-pool trains on its labelled "
            "few-shot pool"
        )
    pool = [c for c in es.load_pool() if c.labels]
    if not pool:
        raise DistillError(f"{es.pool_path}: the pool has no labelled examples")
    task = es.task
    counts = Counter(lab for c in pool for lab in c.labels)
    missing = [n for n in task.label_names if n not in counts]
    if missing:
        say(f"warning: the pool has no example of {len(missing)} label(s): {missing[:10]}")
    say(
        f"training the student ({mode}) on {len(pool)} gold pool examples of {es.name} "
        f"({len(counts)} of {len(task.labels)} labels, {min(counts.values())}-"
        f"{max(counts.values())} per label) ..."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        student = train_student(
            [c.text for c in pool],
            [list(c.labels) for c in pool],
            task,
            body=body,
            mode=mode,  # type: ignore[arg-type]
            max_steps=max_steps,
            max_seconds=max_seconds,
            head_c=head_c,
            epochs=epochs,
            seed=seed,
            work_dir=tmp / "_train",
            progress=progress,
        )
        shutil.rmtree(tmp / "_train", ignore_errors=True)
        save_student(student, task, tmp)
        say(f"student trained in {student.seconds:.1f}s")
        parity_texts = [c.text for c in es.cases[:96]] + [c.text for c in pool[:96]]
        parity = export_student(
            tmp,
            parity_texts,
            int8=int8,
            int8_bound=INT8_BOUND if int8_bound is None else int8_bound,
            skip_failed_int8=True,
        )
        for p in parity:
            say(f"parity {p.runtime}: max score difference vs torch {p.max_diff:.3g}")
        card = {
            "name": out.name,
            "path": str(out),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "source": "pool",
            "teacher": None,
            "note": (
                f"trained on the gold few-shot pool of eval set {es.name} "
                "(no LLM labels); a later `llmclf distill` replaces it"
            ),
            "task": {
                "name": task.name,
                "kind": task.kind,
                "labels": list(task.label_names),
                "fingerprint": task.fingerprint(),
            },
            "data": {"source": str(es.pool_path), "n_train": len(pool), "counts": dict(counts)},
            "student": {
                "body": student.body_source,
                "mode": student.mode,
                "steps": student.steps,
                "seconds": round(student.seconds, 3),
                "head": student.head.kind,
                "head_c": student.head_c,
                "seed": seed,
            },
            "export": {"parity": [p.to_json() for p in parity], "int8": int8},
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "router.json").write_text(
            json.dumps(
                {
                    "escalation_threshold": None,
                    "rule": "a pool student has no teacher to calibrate against; "
                    "set cascade.threshold in the router config",
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        _replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"student written to {out}")
    result = PoolStudentResult(
        out_dir=out,
        eval_set=es.name,
        n_train=len(pool),
        counts=dict(counts),
        mode=student.mode,
        train_seconds=student.seconds,
        parity=[p.to_json() for p in parity],
    )
    if evaluate_cases:
        from llmclf.evaluate import evaluate

        run = evaluate(es, f"setfit:{out}", store=store, progress=progress)
        result.metrics, result.run_id = run.metrics, run.run_id
        say(
            f"student on {es.name}'s {len(es.cases)} cases: accuracy "
            f"{run.metrics.get('accuracy')}, macro F1 {run.metrics.get('macro_f1')} "
            f"(run {run.run_id})"
        )
    return result
