"""What a distillation produced: `DistillResult`, its JSON summary and the model card's data.

Example:
    >>> r = distill(...)                                                 # doctest: +SKIP
    >>> result_summary(r)["n_train"], r.card["student"]["mode"]
    (942, 'head-only')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmclf.distill.config import Mode
from llmclf.distill.select import Selection
from llmclf.types import Usage

__all__ = ["DistillResult", "headline", "result_summary", "version"]


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


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics the model card shows."""
    keys = ("accuracy", "macro_f1", "micro_f1", "n", "errors", "abstained")
    return {k: metrics.get(k) for k in keys}


def version() -> str:
    """The installed llmclf version (the model card records it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("llmclf")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
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
