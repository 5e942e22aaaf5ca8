"""The distillation job: the stages of `llmclf.distill`, run in order on one `DistillConfig`.

`run_distill` is the job; `distill` is its Python entry point (a task, eval set or input
stream may be given as objects, settings as keywords). Each stage hands the next a typed
value: `TeacherLabels` → `Selection` → `TrainedStudent` → `Exported` → `StudentScore` →
``router.json`` → the model directory and its card.

Example:
    >>> from llmclf.distill import DistillConfig, run_distill             # doctest: +SKIP
    >>> r = run_distill(DistillConfig(teacher="llm:local", unlabeled="texts.jsonl",
    ...                               out="models/sst2", eval_set="sst2"))
    >>> r.student_metrics["accuracy"], r.escalation["escalation_threshold"]
    (0.85, 0.78)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from llmclf.datasets import EvalSet, load_eval_set
from llmclf.distill.artifact import (
    check_out,
    clean_stale_temp_dirs,
    data_hash,
    staged_dir,
    write_card,
    write_json,
)
from llmclf.distill.calibrate import agreement, calibrate, no_eval_set
from llmclf.distill.config import DistillConfig
from llmclf.distill.export import Exported, export_onnx_models
from llmclf.distill.result import DistillResult, headline, version
from llmclf.distill.score import StudentScore, score_student, score_teacher
from llmclf.distill.select import (
    Selection,
    gold_rows,
    min_confidence_from_eval,
    select_training_set,
)
from llmclf.distill.teacher import (
    TeacherLabels,
    TeacherRow,
    export_teacher_labels,
    label_unlabeled,
)
from llmclf.distill.train import TrainedStudent, save_student, train_student
from llmclf.errors import ConfigError, DistillError
from llmclf.evaluate import EvalRun
from llmclf.redaction import redact_spec
from llmclf.specs import parse_spec
from llmclf.store import Store, open_store
from llmclf.task_refs import load_task
from llmclf.types import Task

__all__ = ["distill", "run_distill"]

log = logging.getLogger("llmclf.distill")


@dataclass
class _Job:
    """What every stage reads: the config, the resolved task and eval set, the store, how to
    report, and what the stages noted on the way (timings, warnings)."""

    cfg: DistillConfig
    task: Task
    eval_set: EvalSet | None
    store: Store
    progress: bool
    say: Callable[[str], None]
    gold: list[TeacherRow] = field(default_factory=list)
    source: IO[str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)
        self.say(f"warning: {message}")


def run_distill(
    cfg: DistillConfig,
    *,
    task: Task | None = None,
    eval_set: EvalSet | None = None,
    source: IO[str] | None = None,
    store: Store | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> DistillResult:
    """Run the job ``cfg`` describes; see `llmclf.distill` for each stage.

    ``task`` / ``eval_set`` / ``source`` stand in for ``cfg.task`` / ``cfg.eval_set`` /
    ``cfg.unlabeled`` when the caller already holds them as objects. ``echo`` receives
    one-line progress notes (the CLI prints them); warnings are also logged.
    """
    job = _start(cfg, task, eval_set, source, store, progress, echo)
    labels = _label(job)
    teacher_run = _score_teacher(job, labels)
    sel = _select(job, labels, teacher_run)
    with staged_dir(cfg.out, cfg.force) as tmp:
        student = _train(job, sel, tmp)
        exported = _export(job, sel, tmp)
        scored = _score_student(job, tmp)
        escalation = _calibrate(job, tmp, scored, teacher_run)
        result = _result(job, labels, sel, student, exported, escalation, teacher_run, scored)
        write_card(tmp, result.card)
    job.say(f"student written to {cfg.out}")
    return result


def distill(
    task: Task | str | Path | None,
    teacher: str,
    unlabeled: str | Path | IO[str],
    out: str | Path,
    *,
    eval_set: str | Path | EvalSet | None = None,
    store: Store | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    **settings: Any,
) -> DistillResult:
    """Label ``unlabeled`` with ``teacher``, train a student, write it to ``out``.

    ``settings`` are the other fields of `DistillConfig` (``mode``, ``epochs``,
    ``min_confidence``, ``prompt``, ``few_shot_pool``, ...). The teacher is asked exactly as
    `llmclf eval` asks it: ``prompt`` and ``few_shot_pool`` apply to the labelling and to the
    teacher's eval run alike.

    Example:
        >>> r = distill("eval_sets/sst2/task.yaml", "llm:local", "texts.jsonl", "models/sst2",
        ...             eval_set="sst2", mode="head-only")              # doctest: +SKIP
        >>> r.out_dir, r.student_metrics["accuracy"], r.agreement
        (PosixPath('models/sst2'), 0.84, 0.91)
    """
    stream = None if isinstance(unlabeled, str | Path) else unlabeled
    try:
        cfg = DistillConfig(
            teacher=teacher,
            unlabeled="-" if stream is not None else str(unlabeled),
            out=Path(out),
            task=None if task is None or isinstance(task, Task) else str(task),
            eval_set=None if eval_set is None or isinstance(eval_set, EvalSet) else str(eval_set),
            **settings,
        )
    except ValidationError as exc:
        raise ConfigError(f"distill settings: {exc}") from None
    return run_distill(
        cfg,
        task=task if isinstance(task, Task) else None,
        eval_set=eval_set if isinstance(eval_set, EvalSet) else None,
        source=stream,
        store=store,
        progress=progress,
        echo=echo,
    )


# --------------------------------------------------------------------------- the stages


def _start(
    cfg: DistillConfig,
    task: Task | None,
    eval_set: EvalSet | None,
    source: IO[str] | None,
    store: Store | None,
    progress: bool,
    echo: Callable[[str], None] | None,
) -> _Job:
    """Check what can be checked before any work, tidy a killed run's leftovers."""
    parse_spec(cfg.teacher)
    check_out(cfg.out, cfg.force)
    clean_stale_temp_dirs(cfg.out)
    es = eval_set
    if es is None and cfg.eval_set is not None:
        es = load_eval_set(cfg.eval_set)
    t = _resolve_task(task if task is not None else cfg.task, es)
    if cfg.calibrate is not None and es is None:
        raise ConfigError("--calibrate fits on the eval set's cases: give --eval-set")
    store = store or open_store()
    gold = gold_rows(
        t,
        include_labelled=cfg.include_labelled,
        include_reviewed=cfg.include_reviewed,
        store=store,
    )
    return _Job(
        cfg=cfg,
        task=t,
        eval_set=es,
        store=store,
        progress=progress,
        say=echo or (lambda msg: None),
        gold=gold,
        source=source,
    )


def _label(job: _Job) -> TeacherLabels:
    cfg = job.cfg
    t0 = time.perf_counter()
    if cfg.labels is not None:
        from llmclf.distill.ready_labels import labels_from_file

        labels = labels_from_file(job.task, cfg.labels)
        job.timings["label_s"] = time.perf_counter() - t0
        job.say(
            f"teacher labels: {len(labels.rows)} rows read from {cfg.labels} "
            f"({labels.n_abstained} abstained; no teacher call)"
        )
        return _checked(labels)
    labels = label_unlabeled(
        job.task,
        cfg.teacher,
        job.source if job.source is not None else cfg.unlabeled,
        store=job.store,
        prompt=cfg.prompt,
        concurrency=cfg.concurrency,
        limit=cfg.limit,
        text_field=cfg.text_field,
        few_shot_pool=cfg.few_shot_pool,
        progress=job.progress,
    )
    job.timings["label_s"] = time.perf_counter() - t0
    job.say(
        f"teacher labels: {len(labels.rows)} of {labels.n_texts} texts "
        f"({labels.n_new} new, {len(labels.rows) - labels.n_new} resumed/cached in store, "
        f"{labels.n_abstained} abstained, {labels.n_skipped} skipped) "
        f"in {job.timings['label_s']:.1f}s"
    )
    if cfg.export_labels is not None:
        path = export_teacher_labels(labels.rows, job.task, cfg.export_labels)
        job.say(f"teacher labels exported to {path}")
    return _checked(labels)


def _checked(labels: TeacherLabels) -> TeacherLabels:
    if not labels.labelled:
        raise DistillError(
            f"{labels.source}: the teacher abstained on every one of its {len(labels.rows)} "
            "texts; nothing to train on"
        )
    return labels


def _score_teacher(job: _Job, labels: TeacherLabels) -> EvalRun | None:
    es = job.eval_set
    if es is None:
        return None
    overlap = {c.text for c in es.cases} & {r.text for r in labels.rows}
    if overlap:
        job.warn(
            f"{len(overlap)} unlabelled text(s) also appear in eval set {es.name!r}: "
            "its metrics will be optimistic"
        )
    t0 = time.perf_counter()
    run = score_teacher(
        es,
        job.cfg.teacher,
        prompt=job.cfg.prompt,
        few_shot_pool=job.cfg.few_shot_pool,
        concurrency=job.cfg.concurrency,
        store=job.store,
        progress=job.progress,
    )
    job.timings["teacher_eval_s"] = time.perf_counter() - t0
    return run


def _select(job: _Job, labels: TeacherLabels, teacher_run: EvalRun | None) -> Selection:
    cfg = job.cfg
    threshold = cfg.min_confidence
    chosen_from = "given" if threshold is not None else "default (no eval set)"
    if threshold is None and teacher_run is not None and job.eval_set is not None:
        threshold, how = min_confidence_from_eval(job.task, teacher_run)
        chosen_from = f"chosen on eval set {job.eval_set.name}: {how}"
    sel = select_training_set(
        labels.rows,
        job.task,
        min_confidence=0.0 if threshold is None else float(threshold),
        balance_ratio=cfg.balance_ratio,
        max_per_label=cfg.max_per_label,
        min_per_label=cfg.min_per_label,
        gold=job.gold,
        seed=cfg.seed,
    )
    sel.min_confidence_source = chosen_from
    for w in sel.warnings:
        job.warn(w)
    job.say(
        f"training set: {len(sel.rows)} examples (min confidence {sel.min_confidence:g}, "
        f"{sel.n_low_confidence} dropped, {sel.n_capped} capped, {sel.n_gold} gold); per label: "
        + ", ".join(f"{k}={v}" for k, v in sel.counts.items())
    )
    if not sel.rows:
        raise DistillError(
            f"no teacher label has confidence >= {sel.min_confidence:g}; lower --min-confidence"
        )
    return sel


def _train(job: _Job, sel: Selection, tmp: Path) -> TrainedStudent:
    cfg = job.cfg
    t0 = time.perf_counter()
    job.say(f"training the student ({cfg.mode}) ...")
    student = train_student(
        [r.text for r in sel.rows],
        [r.labels for r in sel.rows],
        job.task,
        body=cfg.body,
        mode=cfg.mode,
        max_steps=cfg.max_steps,
        max_seconds=cfg.max_seconds,
        head_c=cfg.head_c,
        epochs=cfg.epochs,
        seed=cfg.seed,
        work_dir=tmp / "_train",
        progress=job.progress,
    )
    shutil.rmtree(tmp / "_train", ignore_errors=True)
    job.timings["train_s"] = time.perf_counter() - t0
    save_student(student, job.task, tmp)
    steps = {
        "contrastive": f"{student.steps} contrastive steps",
        "gradient": f"{student.steps} gradient steps",
    }.get(student.step_kind or "", "body frozen")
    job.say(f"student trained in {student.seconds:.1f}s ({steps})")
    return student


def _export(job: _Job, sel: Selection, tmp: Path) -> Exported:
    cfg = job.cfg
    t0 = time.perf_counter()
    exported = export_onnx_models(
        tmp,
        [c.text for c in job.eval_set.cases] if job.eval_set is not None else [],
        [r.text for r in sel.rows],
        int8=cfg.int8,
        fp32_bound=cfg.fp32_bound,
        int8_bound=cfg.int8_bound,
    )
    job.timings["export_s"] = time.perf_counter() - t0
    for w in exported.warnings:
        job.warn(w)
    for p in exported.parity:
        job.say(
            f"parity {p.runtime}: max score difference vs torch {p.max_diff:.3g} "
            f"(bound {p.bound:g}) over {p.n_texts} texts"
        )
    return exported


def _score_student(job: _Job, tmp: Path) -> StudentScore | None:
    if job.eval_set is None:
        return None
    t0 = time.perf_counter()
    scored = score_student(
        tmp, f"setfit:{job.cfg.out}", job.eval_set, store=job.store, progress=job.progress
    )
    job.timings["student_eval_s"] = time.perf_counter() - t0
    return scored


def _calibrate(
    job: _Job, tmp: Path, scored: StudentScore | None, teacher_run: EvalRun | None
) -> dict[str, Any]:
    escalation = no_eval_set()
    if scored is not None and teacher_run is not None and job.eval_set is not None:
        escalation = calibrate(
            scored.run.predictions,
            [c.labels for c in job.eval_set.cases],
            teacher_run.predictions,
            eval_set=job.eval_set.name,
            runtime=scored.runtime,
        )
    write_json(tmp / "router.json", escalation)
    if job.cfg.calibrate is not None:
        job.calibration = _fit_calibration(job, tmp)
    return escalation


def _fit_calibration(job: _Job, tmp: Path) -> dict[str, Any]:
    """Fit the student's calibrator on eval cases of hash half 0 (never trained on) and
    report it on half 1; writes ``calibration.json`` next to the model."""
    from llmclf.calibrate import calibrate_student, card_entry
    from llmclf.metrics import split_half

    if job.eval_set is None:
        raise ConfigError("--calibrate fits on the eval set's cases: give --eval-set")
    cases = list(job.eval_set.cases)
    fit = [c for c in cases if split_half(c.id) == 0]
    report = [c for c in cases if split_half(c.id) != 0]
    if not fit or not report:
        raise ConfigError(f"eval set {job.eval_set.name} is too small to split for calibration")
    assert job.cfg.calibrate is not None
    t0 = time.perf_counter()
    rep = calibrate_student(
        tmp,
        job.task,
        fit,
        report,
        method=job.cfg.calibrate,
        where=f"eval set {job.eval_set.name}, hash half 0 of {len(cases)} cases",
        spec=f"setfit:{job.cfg.out}",  # where the student will be, not its staging directory
    )
    job.timings["calibrate_s"] = time.perf_counter() - t0
    entry = card_entry(rep)
    job.say(
        f"calibrated ({entry['method']}): ECE {entry['before']['ece']:.3f} -> "
        f"{entry['after']['ece']:.3f} on {entry['report_cases']} held-out eval cases"
    )
    return entry


def _result(
    job: _Job,
    labels: TeacherLabels,
    sel: Selection,
    student: TrainedStudent,
    exported: Exported,
    escalation: dict[str, Any],
    teacher_run: EvalRun | None,
    scored: StudentScore | None,
) -> DistillResult:
    cfg, t = job.cfg, job.task
    parity = [p.to_json() for p in exported.parity]
    agree = (
        agreement(scored.run.predictions, teacher_run.predictions)
        if scored is not None and teacher_run is not None
        else None
    )
    card: dict[str, Any] = {
        "name": cfg.out.name,
        "path": str(cfg.out),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "llmclf_version": version(),
        "task": {
            "name": t.name,
            "kind": t.kind,
            "labels": list(t.label_names),
            "fingerprint": t.fingerprint(),
        },
        "teacher": redact_spec(cfg.teacher),
        "prompt_id": labels.prompt_id,
        "few_shot_pool": None if cfg.few_shot_pool is None else str(cfg.few_shot_pool),
        "job_id": labels.job,
        "data": {
            "source": labels.source,
            "source_hash": labels.source_hash,
            "n_texts": labels.n_texts,
            "n_labelled": len(labels.labelled),
            "n_abstained": labels.n_abstained,
            "n_skipped": labels.n_skipped,
            "min_confidence": sel.min_confidence,
            "min_confidence_source": sel.min_confidence_source,
            "n_low_confidence": sel.n_low_confidence,
            "n_capped": sel.n_capped,
            "n_gold": sel.n_gold,
            "teacher_counts": sel.teacher_counts,
            "counts": sel.counts,
            "n_train": len(sel.rows),
            "train_hash": data_hash(sel.rows),
            "balance_ratio": cfg.balance_ratio,
            "max_per_label": cfg.max_per_label,
        },
        "student": {
            "body": student.body_source,
            "mode": student.mode,
            "steps": student.steps,
            "step_kind": student.step_kind,
            "max_steps": cfg.max_steps,
            "max_seconds": cfg.max_seconds,
            "epochs": cfg.epochs,
            "seconds": round(student.seconds, 3),
            "head": student.head.kind,
            "head_c": student.head_c,
            "decision_threshold": student.head.threshold,
            "seed": cfg.seed,
            "dim": int(student.head.coef.shape[1]),
        },
        "export": {"parity": parity, "int8": cfg.int8},
        "router": escalation,
        "calibration": job.calibration,
        "warnings": job.warnings,
        "config": cfg.card_json(),
    }
    result = DistillResult(
        out_dir=cfg.out,
        job_id=labels.job,
        teacher=redact_spec(cfg.teacher),
        n_texts=labels.n_texts,
        n_labelled=len(labels.labelled),
        n_abstained=labels.n_abstained,
        n_new_labels=labels.n_new,
        n_skipped=labels.n_skipped,
        selection=sel,
        mode=student.mode,
        train_steps=student.steps,
        train_seconds=student.seconds,
        parity=parity,
        escalation=escalation,
        card=card,
        usage=labels.usage,
        timings=job.timings,
        warnings=job.warnings,
        agreement=agree,
    )
    if scored is not None and teacher_run is not None and job.eval_set is not None:
        result.teacher_metrics = teacher_run.metrics
        result.student_metrics = scored.run.metrics
        result.teacher_run_id = teacher_run.run_id
        result.student_run_id = scored.run.run_id
        result.student_latency_ms = scored.latency_ms
        card["evaluation"] = {
            "eval_set": job.eval_set.name,
            "n": len(job.eval_set.cases),
            "teacher": headline(teacher_run.metrics),
            "student": headline(scored.run.metrics),
            "agreement": agree,
            "teacher_run_id": teacher_run.run_id,
            "table": result.comparison(),
        }
    return result


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
