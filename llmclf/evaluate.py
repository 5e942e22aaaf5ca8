"""Run a backend over an eval set, store the run, compare runs, and gate on regressions.

`evaluate` asks the backend for every case with bounded concurrency, writes each case to the
SQLite store as soon as it is answered, computes `llmclf.metrics.compute_metrics` and finishes
the run. An interrupted eval (Ctrl-C, a crash, ``kill -9``) is resumed by the next `evaluate`
with the same resume key (eval set, its cases, the task, the backend spec, the prompt template
and the few-shot pool): cases already answered are read back from the store and never sent to
the backend again.

A case whose backend call raises a `BackendError` (after the backend's own retries), or whose
text the task rejects (`InputTextError`), is recorded as an error: its prediction is ``None``,
it counts as wrong for accuracy and in ``metrics["errors"]`` / ``metrics["error_kinds"]``, and
the run still finishes. Errored cases of an *interrupted* run are asked again on resume. Any
other exception is a bug: it stops the eval and leaves the run resumable.

The run config records the backend spec with secret options (``api_key`` and the like)
removed, the prompt template id (``name.vN@hash``), the eval set, the case hash, the limit and
the task itself, so stored runs can be shown, diffed and reported without the eval set.

Example:
    >>> from llmclf.datasets import load_eval_set                        # doctest: +SKIP
    >>> run = evaluate(load_eval_set("sst2"), "llm:local", limit=50)  # doctest: +SKIP
    >>> run.run_id, round(run.metrics["accuracy"], 2)  # doctest: +SKIP
    ('20250101-120000-ab12cd', 0.86)
    >>> diff = compare_runs(baseline_id, run.run_id)  # doctest: +SKIP
    >>> regression_check(baseline.metrics, run.metrics, max_drop=0.01)  # doctest: +SKIP
    []
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmclf.backends.base import Backend
from llmclf.classifier import Classifier
from llmclf.datasets import Case, EvalSet
from llmclf.errors import BackendError, ConfigError, InputTextError, StoreError, error_kind
from llmclf.jobs import Outcome, run_job
from llmclf.metrics import ABSTAINED, ERRORED, LOWER_IS_BETTER, compute_metrics, percentiles
from llmclf.prompts import PromptTemplate
from llmclf.redaction import redact, redact_spec, secrets_of_spec
from llmclf.specs import parse_spec
from llmclf.store import Store, open_store
from llmclf.types import Prediction, Task

__all__ = [
    "HEADLINE_METRICS",
    "EvalRun",
    "RegressionFailure",
    "compare_runs",
    "default_pool",
    "evaluate",
    "get_metric",
    "latest_run_id",
    "load_run",
    "per_label_rows",
    "regression_check",
]

RUN_KIND = "eval"
#: Texts per request for a backend that is not an LLM (a student answers a batch in one pass).
BATCH_SIZE = 16
#: Eval texts timed one per call for the latency of a batching backend (see `evaluate`).
LATENCY_SAMPLE = 50

#: Metrics shown in summaries and diffs: (name, path in the metrics dict).
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro_f1"),
    ("micro_f1", "micro_f1"),
    ("weighted_f1", "weighted_f1"),
    ("auc_roc", "auc_roc"),
    ("ece", "calibration.ece"),
    ("ece_uncalibrated", "calibration_raw.ece"),
    ("hamming_loss", "hamming_loss"),
    ("abstain_rate", "abstain_rate"),
    ("error_rate", "error_rate"),
    ("latency_p50_ms", "latency_ms.p50"),
    ("latency_p95_ms", "latency_ms.p95"),
    ("total_tokens", "usage.total_tokens"),
    ("cost_usd", "usage.cost_usd"),
    ("cache_hits", "cache_hits"),
)
_ALIASES = dict(HEADLINE_METRICS)
_LOWER_BETTER_NAMES = LOWER_IS_BETTER | {
    "latency_p50_ms", "latency_p95_ms", "total_tokens", "cost_usd",
}  # fmt: skip

# --------------------------------------------------------------------------------- the run


@dataclass
class EvalRun:
    """One eval run: its id, config, metrics and, aligned with ``cases``, the predictions
    (``None`` where the backend failed; ``errors[i]`` then holds ``{"kind", "message"}``)."""

    run_id: str
    eval_set: str
    task: Task
    backend: str
    prompt_id: str | None
    cases: list[Case]
    predictions: list[Prediction | None]
    errors: list[dict[str, str] | None]
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "done"
    created: float | None = None
    resumed_cases: int = 0

    @property
    def golds(self) -> list[tuple[str, ...]]:
        return [c.labels for c in self.cases]


def _cases_hash(cases: Sequence[Case]) -> str:
    blob = json.dumps([[c.id, c.text, list(c.labels)] for c in cases], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _file_hash(path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def default_pool(eval_set: EvalSet, prompt: str | None) -> Path | None:
    """The eval set's ``pool.jsonl`` when the prompt (or the task's default prompt) is a few-shot
    template, else None.

    Example:
        >>> default_pool(load_eval_set("sst2"), "few_shot")              # doctest: +SKIP
        PosixPath('eval_sets/sst2/pool.jsonl')
    """
    template = PromptTemplate.load(prompt or eval_set.task.prompt)
    if template.spec.few_shot and eval_set.pool_path is not None:
        return eval_set.pool_path
    return None


@dataclass(frozen=True)
class _Indexed:
    """A case and its place in the run (an item of the eval's job)."""

    index: int
    case: Case

    @property
    def text(self) -> str:
        return self.case.text


def _latency(
    clf: Classifier, cases: Sequence[Case], metrics: Mapping[str, Any], batch_size: int
) -> dict[str, Any]:
    """The run's latency entries: ``latency_ms`` (p50/p95/mean/max per text) and
    ``latency_method``, which says how it was measured.

    An LLM is asked one text per request: each case's own call is its latency (cache hits
    left out). A backend that answers a batch in one pass (a student) was asked
    `BATCH_SIZE` texts at a time, so each case's time there is its batch's wall time; its
    per-text latency is measured instead by asking up to `LATENCY_SAMPLE` eval texts one per
    call after the run (warm), and the batched figures stay as ``latency_ms_batched``.
    """
    if batch_size == 1:
        return {
            "latency_method": "one text per request: each case's own call (cache hits left out)"
        }
    if not clf.backend.capabilities.batches:
        return {
            "latency_method": f"per answer as the backend reported it, asked in batches of "
            f"{batch_size} (a batched part's time is shared by the texts of its batch)"
        }
    sample = [c.text for c in cases[:LATENCY_SAMPLE]]
    timings = []
    for text in sample:
        t0 = time.perf_counter()
        try:
            clf.predict(text)
        except (BackendError, InputTextError):  # counted among the run's errors already
            continue
        timings.append((time.perf_counter() - t0) * 1000)
    return {
        "latency_ms": percentiles(timings),
        "latency_ms_all": percentiles(timings),
        "latency_ms_batched": metrics.get("latency_ms"),
        "latency_method": f"one text per call: {len(sample)} eval texts timed after the run "
        f"(warm); latency_ms_batched is the wall time of a batch of {batch_size}, "
        "shared by its texts",
    }


def _prediction_record(case: Case, pred: Prediction | None, err: dict[str, str] | None) -> dict:
    return {
        "text": case.text,
        "prediction": None if pred is None else pred.model_dump(mode="json"),
        "error": err,
    }


def evaluate(
    eval_set: EvalSet,
    backend: str | Backend,
    *,
    prompt: str | None = None,
    limit: int | None = None,
    store: Store | None = None,
    concurrency: int = 4,
    progress: bool = True,
    few_shot_pool: str | Path | None = None,
    resume: bool = True,
) -> EvalRun:
    """Evaluate ``backend`` on ``eval_set`` (its first ``limit`` cases) and store the run.

    ``backend`` is a spec (``llm:local``, ``llm:openai/gpt-4o-mini``, ``setfit:DIR``,
    ``router:YAML``) or a `Backend`. ``prompt`` (a template name, ``name.vN`` or path) and
    ``few_shot_pool`` (a labelled file; see `default_pool`) apply to ``llm:`` specs only.
    ``concurrency`` bounds the requests in flight. With ``resume`` (the default) an unfinished
    run with the same resume key is continued instead of starting a new one.

    Example:
        >>> run = evaluate(load_eval_set("sst2"), fake.spec(), limit=20)  # doctest: +SKIP
        >>> run.metrics["n"]  # doctest: +SKIP
        20
    """
    task = eval_set.task
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    cases = list(eval_set.cases[:limit] if limit else eval_set.cases)
    store = store or open_store()

    options: dict[str, Any] = {}
    secrets = secrets_of_spec(None if isinstance(backend, Backend) else backend)
    if isinstance(backend, Backend):
        if prompt is not None or few_shot_pool is not None:
            raise ConfigError(
                "prompt and few_shot_pool are options of llm: specs, not of a Backend"
            )
        spec = backend.name
    else:
        kind, _, _ = parse_spec(backend)
        if kind != "llm" and (prompt is not None or few_shot_pool is not None):
            raise ConfigError(
                f"--prompt and --pool apply to llm: backends only, not to {redact_spec(backend)!r}"
            )
        if prompt is not None:
            options["prompt"] = prompt
        if few_shot_pool is not None:
            pool_file = Path(few_shot_pool)
            if not pool_file.is_file():
                raise ConfigError(f"few-shot pool not found: {pool_file}")
            options["few_shot_pool"] = str(pool_file)
        spec = redact_spec(backend)

    clf = Classifier(task, backend=backend, store=store, **options)
    try:
        template = getattr(clf.backend, "template", None)
        prompt_id: str | None = getattr(template, "id", None)
        cases_hash = _cases_hash(cases)
        pool_str = str(few_shot_pool) if few_shot_pool is not None else None
        config: dict[str, Any] = {
            "eval_set": eval_set.name,
            "eval_set_dir": str(eval_set.dir),
            "cases_hash": cases_hash,
            "n_cases": len(cases),
            "limit": limit,
            "backend": spec,
            "prompt": prompt,
            "prompt_id": prompt_id,
            "few_shot_pool": pool_str,
            "few_shot_pool_hash": _file_hash(pool_str) if pool_str else None,
            "task_fingerprint": task.fingerprint(),
            "task": task.model_dump(mode="json"),
            "concurrency": concurrency,
        }
        resume_key = hashlib.sha256(
            json.dumps(
                [
                    RUN_KIND, eval_set.name, cases_hash, task.fingerprint(), spec, prompt_id,
                    pool_str, config["few_shot_pool_hash"],
                ]
            ).encode()
        ).hexdigest()  # fmt: skip

        run_id = store.find_unfinished_run(resume_key) if resume else None
        done: dict[str, dict[str, Any]] = {}
        if run_id is not None:
            for row in store.run_cases(run_id):
                rec = row["prediction"]
                if rec.get("prediction") is not None:  # errors are asked again
                    done[row["id"]] = rec
        else:
            run_id = store.create_run(
                kind=RUN_KIND,
                eval_set=eval_set.name,
                backend=spec,
                config=config,
                prompt=prompt,
                prompt_hash=prompt_id,
                resume_key=resume_key,
            )

        preds: list[Prediction | None] = [None] * len(cases)
        errors: list[dict[str, str] | None] = [None] * len(cases)
        for i, case in enumerate(cases):
            rec = done.get(case.id)
            if rec is not None:
                preds[i] = Prediction.model_validate(rec["prediction"])

        # LLM backends are asked one text per request (the job bounds concurrency);
        # other backends (students, routers) get small batches.
        batch_size = 1 if clf.backend.capabilities.prompted else BATCH_SIZE

        def ask(texts: list[str]) -> list[Prediction]:
            return clf.predict_many(texts) if len(texts) > 1 else [clf.predict(texts[0])]

        def commit(outcome: Outcome[_Indexed]) -> None:
            i, case = outcome.item.index, outcome.item.case
            err = None
            if outcome.error is not None:
                message = redact(str(outcome.error), secrets)[:2000]
                err = {"kind": error_kind(outcome.error), "message": message}
            preds[i], errors[i] = outcome.prediction, err
            # written at once: a crash loses at most the cases in flight
            store.add_run_case(
                run_id, case.id, i, list(case.labels), _prediction_record(case, preds[i], err)
            )

        run_job(
            [_Indexed(i, c) for i, c in enumerate(cases)],
            ask,
            commit,
            total=len(cases),
            label=eval_set.name,
            key=lambda it: it.case.id,
            done=done.keys(),
            batch_size=batch_size,
            concurrency=concurrency,
            progress=progress,
            thread_name="llmclf-eval",
        )

        metrics = compute_metrics(
            task,
            [c.labels for c in cases],
            preds,
            ids=[c.id for c in cases],
            errors=[e["kind"] if e else None for e in errors],
        )
        metrics["resumed_cases"] = len(done)
        metrics.update(_latency(clf, cases, metrics, batch_size))
        store.finish_run(run_id, metrics)
    finally:
        clf.close()
    return EvalRun(
        run_id=run_id,
        eval_set=eval_set.name,
        task=task,
        backend=spec,
        prompt_id=prompt_id,
        cases=cases,
        predictions=preds,
        errors=errors,
        metrics=metrics,
        config=config,
        status="done",
        created=(store.get_run(run_id) or {}).get("created", time.time()),
        resumed_cases=len(done),
    )


# --------------------------------------------------------------------------- stored runs


def load_run(ref: str, store: Store | None = None) -> EvalRun:
    """A stored eval run by id or unique id prefix, with its cases and predictions.

    Example:
        >>> run = load_run("20250101-1200")                              # doctest: +SKIP
        >>> run.metrics["accuracy"]  # doctest: +SKIP
        0.86
    """
    store = store or open_store()
    row = store.get_run(ref)
    if row is None:
        raise StoreError(f"no run {ref!r} in {store.path} (see `llmclf runs list`)")
    config = row["config"]
    if row["kind"] != RUN_KIND or "task" not in config:
        raise StoreError(f"run {row['id']} is a {row['kind']!r} run, not an eval run")
    task = Task.model_validate(config["task"])
    cases: list[Case] = []
    preds: list[Prediction | None] = []
    errors: list[dict[str, str] | None] = []
    for r in store.run_cases(row["id"]):
        rec = r["prediction"]
        cases.append(Case(id=r["id"], text=rec.get("text", ""), labels=tuple(r["gold"])))
        p = rec.get("prediction")
        preds.append(None if p is None else Prediction.model_validate(p))
        errors.append(rec.get("error"))
    return EvalRun(
        run_id=row["id"],
        eval_set=row["eval_set"],
        task=task,
        backend=row["backend"],
        prompt_id=row["prompt_hash"],
        cases=cases,
        predictions=preds,
        errors=errors,
        metrics=row["metrics"] or {},
        config=config,
        status=row["status"],
        created=row["created"],
    )


def latest_run_id(
    eval_set: str, store: Store | None = None, *, exclude: str | None = None
) -> str | None:
    """The id of the latest finished eval run on ``eval_set`` (``--baseline last``).

    Example:
        >>> latest_run_id("sst2")                                        # doctest: +SKIP
        '20250101-120000-ab12cd'
    """
    store = store or open_store()
    for row in store.list_runs(eval_set=eval_set, limit=1000):
        if row["kind"] == RUN_KIND and row["status"] == "done" and row["id"] != exclude:
            return str(row["id"])
    return None


def get_metric(metrics: Mapping[str, Any], name: str) -> float | None:
    """A metric by name (``accuracy``, ``ece``, ``latency_p95_ms``...) or dotted path
    (``per_label.spam.f1``, ``calibration.ece``); None when absent.

    Example:
        >>> get_metric({"calibration": {"ece": 0.1}}, "ece")
        0.1
    """
    path = _ALIASES.get(name, name)
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def per_label_rows(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``metrics["per_label"]`` in the task's label order (the store sorts JSON keys).

    Example:
        >>> per_label_rows({"labels": ["b", "a"], "per_label": {"a": {}, "b": {}}})
        [('b', {}), ('a', {})]
    """
    per_label = metrics.get("per_label") or {}
    order = [lab for lab in metrics.get("labels") or [] if lab in per_label]
    order += [lab for lab in per_label if lab not in order]
    return [(lab, per_label[lab]) for lab in order]


def _outcome(pred: Prediction | None) -> list[str]:
    if pred is None:
        return [ERRORED]
    if pred.abstained:
        return [ABSTAINED]
    return list(pred.labels)


def compare_runs(a: EvalRun | str, b: EvalRun | str, *, store: Store | None = None) -> dict:
    """What changed from run ``a`` (before) to run ``b`` (after): metric deltas, per-label F1
    deltas and the flipped cases (the answer changed; ``change`` is ``fixed``, ``broken`` or
    ``changed`` when it is wrong both times). Runs are `EvalRun`s or run ids.

    Example:
        >>> d = compare_runs("20250101-1200", "20250102-0900")          # doctest: +SKIP
        >>> d["metrics"]["accuracy"]["delta"], d["n_fixed"], d["n_broken"]  # doctest: +SKIP
        (0.02, 5, 3)
    """
    ra = a if isinstance(a, EvalRun) else load_run(a, store)
    rb = b if isinstance(b, EvalRun) else load_run(b, store)
    deltas: dict[str, dict[str, float | None]] = {}
    for name, _ in HEADLINE_METRICS:
        va, vb = get_metric(ra.metrics, name), get_metric(rb.metrics, name)
        if va is None and vb is None:
            continue
        deltas[name] = {
            "a": va,
            "b": vb,
            "delta": None if va is None or vb is None else vb - va,
        }
    per_label: dict[str, dict[str, Any]] = {}
    pla, plb = ra.metrics.get("per_label") or {}, rb.metrics.get("per_label") or {}
    labels = [lab for lab, _ in per_label_rows(rb.metrics)]
    labels += [lab for lab, _ in per_label_rows(ra.metrics) if lab not in labels]
    for lab in labels:
        fa = pla.get(lab, {}).get("f1")
        fb = plb.get(lab, {}).get("f1")
        per_label[lab] = {
            "a_f1": fa,
            "b_f1": fb,
            "delta": None if fa is None or fb is None else fb - fa,
            "support": plb.get(lab, pla.get(lab, {})).get("support"),
        }
    index_a = {c.id: i for i, c in enumerate(ra.cases)}
    flipped = []
    common = 0
    for j, case in enumerate(rb.cases):
        i = index_a.get(case.id)
        if i is None:
            continue
        common += 1
        pa, pb = ra.predictions[i], rb.predictions[j]
        before, after = _outcome(pa), _outcome(pb)
        if sorted(before) == sorted(after):
            continue
        ca = pa is not None and pa.matches(case.labels)
        cb = pb is not None and pb.matches(case.labels)
        change = "fixed" if cb and not ca else "broken" if ca and not cb else "changed"
        flipped.append(
            {
                "id": case.id,
                "text": case.text,
                "gold": list(case.labels),
                "before": before,
                "after": after,
                "before_confidence": None if pa is None else round(pa.confidence, 6),
                "after_confidence": None if pb is None else round(pb.confidence, 6),
                "change": change,
            }
        )
    order = {"broken": 0, "fixed": 1, "changed": 2}
    flipped.sort(key=lambda f: (order[str(f["change"])], str(f["id"])))
    ids_b = {c.id for c in rb.cases}

    def summary(r: EvalRun) -> dict[str, Any]:
        return {
            "id": r.run_id,
            "eval_set": r.eval_set,
            "backend": r.backend,
            "prompt_id": r.prompt_id,
            "n": len(r.cases),
            "status": r.status,
            "cases_hash": r.config.get("cases_hash"),
        }

    return {
        "a": summary(ra),
        "b": summary(rb),
        "same_eval_set": ra.eval_set == rb.eval_set,
        "same_cases": ra.config.get("cases_hash") == rb.config.get("cases_hash"),
        "metrics": deltas,
        "per_label": per_label,
        "n_common": common,
        "only_in_a": sum(1 for c in ra.cases if c.id not in ids_b),
        "only_in_b": sum(1 for c in rb.cases if c.id not in index_a),
        "n_fixed": sum(1 for f in flipped if f["change"] == "fixed"),
        "n_broken": sum(1 for f in flipped if f["change"] == "broken"),
        "n_changed": sum(1 for f in flipped if f["change"] == "changed"),
        "flipped": flipped,
    }


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class RegressionFailure:
    """One metric that got worse than the gate allows (``drop`` is positive when worse)."""

    metric: str
    baseline: float | None
    current: float | None
    drop: float | None
    max_drop: float

    @property
    def message(self) -> str:
        if self.baseline is None or self.current is None:
            where = "baseline" if self.baseline is None else "this run"
            return f"{self.metric}: missing from the {where}; cannot check it"
        worse = "rose" if _lower_is_better(self.metric) else "dropped"
        return (
            f"{self.metric} {worse} by {self.drop:.4f} ({self.baseline:.4f} -> {self.current:.4f}),"
            f" more than the allowed {self.max_drop:.4f}"
        )

    def __str__(self) -> str:
        return self.message


def _lower_is_better(name: str) -> bool:
    return name in _LOWER_BETTER_NAMES or name.rsplit(".", 1)[-1] in _LOWER_BETTER_NAMES


def regression_check(
    baseline_metrics: Mapping[str, Any],
    metrics: Mapping[str, Any],
    max_drop: float,
    metric_names: Sequence[str] = ("accuracy", "macro_f1"),
) -> list[RegressionFailure]:
    """The metrics that dropped by more than ``max_drop`` (absolute) from the baseline.

    For metrics where lower is better (``ece``, ``error_rate``, ``hamming_loss``, latency, cost)
    a rise counts as the drop. A metric missing from either side is a failure: the gate cannot
    vouch for it. Empty list: the gate passes.

    Example:
        >>> regression_check({"accuracy": 0.90}, {"accuracy": 0.85}, max_drop=0.01)[0].message
        'accuracy dropped by 0.0500 (0.9000 -> 0.8500), more than the allowed 0.0100'
    """
    if max_drop < 0:
        raise ConfigError(f"max_drop must be >= 0, got {max_drop}")
    failures = []
    for name in metric_names:
        base, cur = get_metric(baseline_metrics, name), get_metric(metrics, name)
        if base is None or cur is None:
            failures.append(RegressionFailure(name, base, cur, None, max_drop))
            continue
        drop = (cur - base) if _lower_is_better(name) else (base - cur)
        if drop > max_drop + 1e-12:
            failures.append(RegressionFailure(name, base, cur, drop, max_drop))
    return failures
