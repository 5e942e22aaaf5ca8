"""Fit a backend's calibrator on labelled cases and measure it on other cases.

`calibrate` asks the backend (uncalibrated) for the fitting cases and the report cases, fits
one `llmclf.calibration` method on the first, and measures accuracy, ECE and Brier score before
and after on the second, which it never fits on. Where the fitting cases come from:

- ``split="half"`` (default): the eval set's cases whose id hashes to half 0
  (`llmclf.metrics.split_half`); the report is on half 1 (``"other-half"``: the other way
  round, for a second fold);
- ``split="pool"``: the eval set's labelled ``pool.jsonl``; the report is on every case;
- ``calibration_file=PATH``: labelled cases in any format `llmclf.datasets.load_cases` reads;
  the report is on every case;
- ``method="contextual"`` needs no labels: it asks the backend for content-free inputs
  (`llmclf.calibration.CONTENT_FREE_INPUTS`) and reports on every case.

The calibrator is saved where the backend finds it: ``$LLMCLF_HOME/calibration/`` for an LLM
(keyed by backend, prompt id and task), ``calibration.json`` in a student's model directory.

Example:
    >>> rep = calibrate(load_eval_set("sst2"), "llm:local", method="contextual")  # doctest: +SKIP
    >>> rep.before["ece"], rep.after["ece"]                                       # doctest: +SKIP
    (0.23, 0.04)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmclf.backends.base import Backend
from llmclf.backends.registry import make_backend
from llmclf.calibration import (
    CONTENT_FREE_INPUTS,
    STUDENT_FILE,
    Calibration,
    Calibrator,
    calibration_path,
    fit,
    fit_contextual,
    save_calibration,
)
from llmclf.datasets import Case, EvalSet, load_cases
from llmclf.decision import decide
from llmclf.errors import BackendError, ConfigError
from llmclf.metrics import brier, calibration, split_half
from llmclf.progress import open_bar
from llmclf.redaction import redact_spec
from llmclf.specs import parse_spec
from llmclf.store import Store
from llmclf.types import CalibrationMethod, Prediction, Task

__all__ = [
    "CalibrationReport",
    "calibrate",
    "calibrate_backend",
    "calibrate_student",
    "card_entry",
    "score_quality",
]

SPLITS = ("half", "other-half", "pool")


@dataclass
class CalibrationReport:
    """What `calibrate` fitted, where it saved it, and how it did on held-out cases."""

    calibration: Calibration
    path: Path | None
    fit_cases: int
    report_cases: int
    before: dict[str, Any]
    after: dict[str, Any]
    errors: int = 0
    notes: list[str] = field(default_factory=list)


def score_quality(
    task: Task,
    scores: np.ndarray,
    labels: Sequence[tuple[str, ...]],
    golds: Sequence[tuple[str, ...]],
) -> dict[str, Any]:
    """Accuracy, ECE (with its reliability bins) and Brier score of answers ``labels`` with
    score rows ``scores`` (task label order) against ``golds``.

    Example:
        >>> score_quality(task, np.array([[0.2, 0.8]]), [("positive",)], [("positive",)])
        ... # doctest: +SKIP
        {'accuracy': 1.0, 'ece': 0.2, 'brier': 0.04, ...}
    """
    names = task.label_names
    correct = [set(lab) == set(g) for lab, g in zip(labels, golds, strict=True)]
    if task.is_multilabel:
        conf = [
            float(s if n in lab else 1.0 - s)
            for row, lab in zip(scores, labels, strict=True)
            for n, s in zip(names, row, strict=True)
        ]
        ok = [(n in lab) == (n in g) for lab, g in zip(labels, golds, strict=True) for n in names]
    else:
        conf = [
            float(row[names.index(lab[0])]) if lab else 0.0
            for row, lab in zip(scores, labels, strict=True)
        ]
        ok = correct
    rel = calibration(conf, ok)
    return {
        "n": len(labels),
        "accuracy": float(np.mean(correct)) if correct else None,
        "ece": rel["ece"],
        "brier": brier(task, scores, golds),
        "reliability": rel["bins"],
    }


def _ask(backend: Backend, texts: Sequence[str], label: str, progress: bool) -> list[Any]:
    """One raw prediction (or the `BackendError`) per text, in chunks."""
    out: list[Prediction | BackendError] = []
    with contextlib.ExitStack() as stack:
        bar, tid = open_bar(stack, label, total=len(texts)) if progress else (None, None)
        for start in range(0, len(texts), 16):
            chunk = list(texts[start : start + 16])
            try:
                out.extend(backend.predict_batch(chunk))
            except BackendError:  # one bad text must not lose the chunk: ask one by one
                for t in chunk:
                    try:
                        out.extend(backend.predict_batch([t]))
                    except BackendError as exc:
                        out.append(exc)
            if bar is not None:
                bar.advance(tid, len(chunk))
    return out


def _matrix(task: Task, preds: Sequence[Prediction]) -> np.ndarray:
    return np.array([[p.scores.get(n, 0.0) for n in task.label_names] for p in preds], float)


def _gold(task: Task, cases: Sequence[Case]) -> np.ndarray:
    names = task.label_names
    if task.is_multilabel:
        return np.array([[int(n in c.labels) for n in names] for c in cases], dtype=int)
    return np.array([names.index(c.labels[0]) for c in cases], dtype=int)


def _calibrated_threshold(
    task: Task, method: str, cal_map: Calibrator, raw_threshold: float
) -> float:
    """The binary decision threshold on calibrated scores: 0.5 (they are probabilities) after
    a method that learns the label bias (platt, isotonic, contextual); after temperature
    scaling, which keeps the bias, the backend's raw threshold (the task's for an LLM, the
    head's for a student) carried through the calibrator, so that no decision changes."""
    if task.kind != "binary" or method != "temperature" or raw_threshold == 0.5:
        return 0.5
    assert task.positive_label is not None
    pos = task.label_names.index(task.positive_label)
    row = np.full((1, 2), 1.0 - raw_threshold)
    row[0, pos] = raw_threshold
    return round(float(cal_map.apply(row)[0, pos]), 6)


def calibrate(
    eval_set: EvalSet,
    backend: str,
    *,
    method: CalibrationMethod = "temperature",
    split: str = "half",
    calibration_file: str | Path | None = None,
    prompt: str | None = None,
    few_shot_pool: str | Path | None = None,
    limit: int | None = None,
    save: bool = True,
    store: Store | None = None,
    progress: bool = True,
) -> CalibrationReport:
    """Fit ``method`` for ``backend`` (a spec) on ``eval_set``'s task; see the module docstring.

    ``limit`` keeps the first N cases of the eval set (before the split).
    """
    task = eval_set.task
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    kind, target, _ = parse_spec(backend)
    if kind == "router":
        raise ConfigError(
            "a router is made of backends: calibrate its student and its LLM one by one"
        )
    options: dict[str, Any] = {"calibration": "off"}
    if kind == "llm":
        if prompt is not None:
            options["prompt"] = prompt
        if few_shot_pool is not None:
            options["few_shot_pool"] = str(few_shot_pool)
    elif prompt is not None or few_shot_pool is not None:
        raise ConfigError("--prompt and --pool apply to llm: backends only")
    cases = list(eval_set.cases[:limit] if limit else eval_set.cases)
    notes: list[str] = []
    fit_cases: list[Case] = []
    if method == "contextual":
        report_cases = cases
        where = f"content-free inputs {list(CONTENT_FREE_INPUTS)}"
    elif calibration_file is not None:
        fit_cases = load_cases(calibration_file, task)
        report_cases = cases
        where = str(calibration_file)
    elif split == "pool":
        fit_cases = eval_set.load_pool()
        if not fit_cases:
            raise ConfigError(f"eval set {eval_set.name} has no pool.jsonl to calibrate on")
        report_cases = cases
        where = f"{eval_set.pool_path}"
    else:
        half = 0 if split == "half" else 1
        fit_cases = [c for c in cases if split_half(c.id) == half]
        report_cases = [c for c in cases if split_half(c.id) != half]
        where = f"eval set {eval_set.name}, hash half {half} of {len(cases)} cases"
    fit_ids = {c.text for c in fit_cases}
    overlap = sum(c.text in fit_ids for c in report_cases)
    if overlap:
        notes.append(f"{overlap} report cases share their text with fitting cases")
    if not report_cases:
        raise ConfigError("no cases left to report on (raise --limit)")

    b = make_backend(backend, task, store=store, **options)
    try:
        rep = calibrate_backend(
            b, fit_cases, report_cases, method=method, where=where, spec=redact_spec(backend),
            progress=progress,
        )  # fmt: skip
    finally:
        b.close()
    rep.notes[:0] = notes
    if save:
        cal = rep.calibration
        if kind == "setfit":
            rep.path = save_calibration(cal, Path(target) / STUDENT_FILE)
        else:
            rep.path = save_calibration(cal, calibration_path(b.name, cal.prompt_id, b.task))
    return rep


def calibrate_backend(
    backend: Backend,
    fit_cases: Sequence[Case],
    report_cases: Sequence[Case],
    *,
    method: CalibrationMethod = "platt",
    where: str = "",
    spec: str | None = None,
    progress: bool = False,
) -> CalibrationReport:
    """Fit ``method`` on ``backend``'s raw answers to ``fit_cases`` (ignored by ``contextual``,
    which asks the content-free inputs) and measure it on ``report_cases``; saves nothing.
    ``backend`` must answer uncalibrated (``calibration=off``). `calibrate` and distill's
    calibrate stage use it.

    Example:
        >>> rep = calibrate_backend(student, held_out, eval_cases, method="platt")  # doctest: +SKIP
        >>> save_calibration(rep.calibration, model_dir / "calibration.json")      # doctest: +SKIP
    """
    if backend.calibration is not None:
        raise ConfigError(f"{backend.name} is already calibrated: build it with calibration=off")
    task = backend.task
    notes: list[str] = []
    template = getattr(backend, "template", None)
    prompt_id: str | None = getattr(template, "id", None)
    if method == "contextual":
        fit_cases = []
        fit_preds = _ask(backend, list(CONTENT_FREE_INPUTS), "content-free", progress)
    else:
        fit_preds = _ask(backend, [c.text for c in fit_cases], "fit", progress)
    rep_preds = _ask(backend, [c.text for c in report_cases], "report", progress)

    errors = sum(isinstance(p, BackendError) for p in [*fit_preds, *rep_preds])
    fit_ok = [(c, p) for c, p in zip(fit_cases or fit_preds, fit_preds, strict=True)
              if isinstance(p, Prediction) and not p.abstained]  # fmt: skip
    sources = [p.score_source for _, p in fit_ok]
    if not sources:
        raise ConfigError("the backend answered none of the fitting cases")
    source = max(set(sources), key=sources.count)
    fit_ok = [(c, p) for c, p in fit_ok if p.score_source == source]
    if len(fit_ok) < len(sources):
        notes.append(
            f"{len(sources) - len(fit_ok)} fitting answers without {source} scores left out"
        )
    raw_fit = _matrix(task, [p for _, p in fit_ok])
    if method == "contextual":
        cal_map = fit_contextual(raw_fit, kind=task.kind)
    else:
        pos = task.label_names.index(task.positive_label) if task.positive_label else None
        cal_map = fit(
            method, raw_fit, _gold(task, [c for c, _ in fit_ok]),  # type: ignore[arg-type]
            kind=task.kind, positive_index=pos,
        )  # fmt: skip

    rep_ok = [(c, p) for c, p in zip(report_cases, rep_preds, strict=True)
              if isinstance(p, Prediction) and p.score_source == source]  # fmt: skip
    if not rep_ok:
        raise ConfigError("the backend answered none of the report cases")
    golds = [c.labels for c, _ in rep_ok]
    raw = _matrix(task, [p for _, p in rep_ok])
    cal_scores = cal_map.apply(raw)
    before = score_quality(task, raw, [p.labels for _, p in rep_ok], golds)
    # the threshold the backend decided its raw answers at (answers carry one other than 0.5)
    carried = [p.threshold for _, p in rep_ok if p.threshold is not None]
    raw_threshold = max(set(carried), key=carried.count) if carried else 0.5
    threshold = _calibrated_threshold(task, method, cal_map, raw_threshold)
    after_labels = [
        decide(task, dict(zip(task.label_names, row, strict=True)), threshold=threshold).labels
        for row in cal_scores
    ]
    after = score_quality(task, cal_scores, after_labels, golds)
    cal = Calibration(
        method=method,
        kind=task.kind,
        labels=task.label_names,
        params=cal_map.params,
        threshold=threshold,
        backend=backend.name,
        prompt_id=prompt_id,
        task=task.name,
        task_fingerprint=task.fingerprint(),
        score_source=source,  # type: ignore[arg-type]
        fitted_on={"source": where, "cases": len(fit_ok), "spec": spec or backend.name},
        metrics={
            "report_cases": len(rep_ok),
            "before": {k: v for k, v in before.items() if k != "reliability"},
            "after": {k: v for k, v in after.items() if k != "reliability"},
        },
    )
    return CalibrationReport(
        calibration=cal,
        path=None,
        fit_cases=len(fit_ok),
        report_cases=len(rep_ok),
        before=before,
        after=after,
        errors=errors,
        notes=notes,
    )


def calibrate_student(
    model_dir: str | Path,
    task: Task,
    fit_cases: Sequence[Case],
    report_cases: Sequence[Case],
    *,
    method: CalibrationMethod = "platt",
    where: str = "",
    spec: str | None = None,
) -> CalibrationReport:
    """Fit a student's calibrator on cases it did not train on (a held-out slice of teacher
    labels, or an eval split), measure it on ``report_cases`` and write ``calibration.json``
    into ``model_dir``; `card_entry` is what its model card says about it.

    Example:
        >>> rep = calibrate_student("models/sst2", task, held_out, eval_cases)  # doctest: +SKIP
        >>> rep.path.name                                                       # doctest: +SKIP
        'calibration.json'
    """
    from llmclf.backends.setfit import SetFitBackend

    d = Path(model_dir)
    student = SetFitBackend(d, task=task, calibration="off", name=f"setfit:{d}")
    try:
        rep = calibrate_backend(
            student, fit_cases, report_cases, method=method, where=where, spec=spec
        )
    finally:
        student.close()
    rep.path = save_calibration(rep.calibration, d / STUDENT_FILE)
    return rep


def card_entry(rep: CalibrationReport) -> dict[str, Any]:
    """The model card's ``calibration`` entry: method, what it was fitted on, and ECE,
    Brier and accuracy before and after on the report cases.

    Example:
        >>> card_entry(rep)["method"]                                            # doctest: +SKIP
        'platt'
    """
    keep = ("accuracy", "ece", "brier")
    return {
        "method": rep.calibration.method,
        "fitted_on": rep.calibration.fitted_on,
        "report_cases": rep.report_cases,
        "before": {k: rep.before[k] for k in keep},
        "after": {k: rep.after[k] for k in keep},
        "file": STUDENT_FILE,
    }
