"""Metrics of a run over an eval set, computed with `sklearn.metrics`; the result is plain JSON.

`compute_metrics` takes the gold labels and the predictions of every case (``None`` for a case
whose backend call failed) and returns one JSON-serialisable dict.

Conventions (what a number means):

- **accuracy**: exact match over *all* cases. An abstained prediction and a failed call
  (``None``) count as wrong. For a multi-label task ``accuracy`` is the subset accuracy (the
  predicted label set equals the gold set), so one regression gate works for every task kind.
- **per-label precision / recall / F1 / support / predicted** and **macro / micro / weighted
  F1**: an abstention or an error predicts no label, so it costs recall of the gold label and no
  precision. Macro averages run over the labels that occur in the gold labels or in the
  predictions (``labels_averaged``): a label absent from both, common in a small sample of a
  many-label task, has no F1 to average.
- **auc_roc**: from the scores, over the cases that have scores (errors are left out; abstained
  predictions keep their scores). Binary: the positive label's score. Multi-class: one-vs-rest
  per label, macro-averaged over the labels that occur in the gold labels (and not on every
  case); labels left out are named in ``auc_roc_note``. Multi-label: per label, macro-averaged.
- **calibration**: the expected calibration error (``ece``, 10 equal-width bins) and the
  reliability curve (per bin: mean confidence, accuracy, count). Single-label: top-label
  confidence, i.e. the score of the label answered, against whether it is right; abstentions and
  errors are left out (they make no claim). Multi-label: every (case, label) decision, with
  confidence ``max(s, 1 - s)``. When some predictions were calibrated (`llmclf.calibration`),
  ``calibration_raw`` is the same over their raw scores, labels at the task's own threshold.
- **coverage_curve**: for k = 10, 20 ... 100 %, the accuracy of the k % most confident cases
  (`case_confidence`; abstentions and errors rank last and count as wrong, so k = 100 equals
  ``accuracy``).
- **latency_ms**: p50 / p95 / mean over the predictions that really called the backend
  (cache hits left out: their latency is a lookup); ``latency_ms_all`` includes cache hits.
- **usage**: tokens, LLM calls, retries and cost summed over predictions (a cache hit costs 0);
  ``cache_hits`` counts them.
- Multi-label only, ``multilabel``: subset accuracy, Hamming loss, micro / macro F1 from a
  label-indicator matrix, and per-label thresholds tuned on half of the cases (chosen by a stable
  hash of the case id) with the metrics those thresholds give on the other half.

Example:
    >>> from llmclf.types import Label, Prediction, Task
    >>> task = Task(name="t", kind="multiclass",
    ...             labels=[Label(name="a"), Label(name="b"), Label(name="c")])
    >>> def p(lab, s): return Prediction(labels=(lab,), scores=s, score_source="model", backend="x")
    >>> preds = [p("a", {"a": .8, "b": .1, "c": .1}), p("a", {"a": .6, "b": .3, "c": .1}),
    ...          p("c", {"a": .1, "b": .1, "c": .8})]
    >>> m = compute_metrics(task, [("a",), ("b",), ("c",)], preds)
    >>> round(m["accuracy"], 3), m["per_label"]["b"]["recall"]
    (0.667, 0.0)
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from llmclf.decision import decide
from llmclf.errors import ConfigError
from llmclf.types import Prediction, Task, Usage

#: Placeholder "predicted label" of an abstention / a failed call in single-label arrays.
ABSTAINED = "(abstained)"
ERRORED = "(error)"
N_BINS = 10
COVERAGE_STEPS = tuple(range(10, 101, 10))

#: Metrics where a smaller number is better (a regression gate reads an increase as a drop).
LOWER_IS_BETTER = frozenset(
    {"ece", "ece_uncalibrated", "error_rate", "abstain_rate", "hamming_loss"}
)


def _f(x: Any) -> float | None:
    """A JSON-safe float (NaN and inf become None)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``p50``, ``p95``, ``mean`` and ``max`` of ``values`` (None when empty).

    Example:
        >>> percentiles([1.0, 2.0, 3.0])["p50"]
        2.0
    """
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": _f(np.percentile(arr, 50)),
        "p95": _f(np.percentile(arr, 95)),
        "mean": _f(arr.mean()),
        "max": _f(arr.max()),
    }


def split_half(case_id: str) -> int:
    """0 (tuning half) or 1 (held-out half), by a stable hash of a case id.

    Example:
        >>> split_half("case-1") in (0, 1)
        True
    """
    return hashlib.sha256(case_id.encode("utf-8")).digest()[0] & 1


def calibration(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS
) -> dict[str, Any]:
    """ECE and the reliability curve over equal-width confidence bins (the last bin holds 1.0).

    Example:
        >>> c = calibration([0.95, 0.95, 0.55, 0.55], [True, False, True, True])
        >>> round(c["ece"], 3)
        0.45
    """
    conf = np.clip(np.asarray(confidences, dtype=float), 0.0, 1.0)
    ok = np.asarray(correct, dtype=float)
    bins: list[dict[str, Any]] = []
    ece = 0.0
    n = len(conf)
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1) if n else np.array([], dtype=int)
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        mean_conf = float(conf[mask].mean()) if count else None
        acc = float(ok[mask].mean()) if count else None
        if count and mean_conf is not None and acc is not None:
            ece += count / n * abs(acc - mean_conf)
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "confidence": mean_conf,
                "accuracy": acc,
                "count": count,
            }
        )
    return {"ece": _f(ece) if n else None, "n": n, "n_bins": n_bins, "bins": bins}


def brier(task: Task, scores: Any, golds: Sequence[Sequence[str]]) -> float | None:
    """The Brier score of score rows (task label order) against gold answers: for a binary
    task the squared error of the positive label's score (`sklearn.metrics.brier_score_loss`);
    for a multiclass task the squared error summed over labels; for a multi-label one the
    squared error averaged over labels. None without cases.

    Example:
        >>> from llmclf.types import Label
        >>> t = Task(name="t", kind="binary", positive_label="p",
        ...          labels=[Label(name="n"), Label(name="p")])
        >>> round(brier(t, [[0.2, 0.8], [0.6, 0.4]], [["p"], ["n"]]), 3)
        0.1
    """
    p = np.asarray(scores, dtype=float)
    if not len(golds):
        return None
    names = list(task.label_names)
    y = np.array([[int(n in g) for n in names] for g in golds])
    if task.kind == "binary":
        pos = names.index(task.positive_label or names[1])
        return _f(skm.brier_score_loss(y[:, pos], np.clip(p[:, pos], 0.0, 1.0)))
    sq = (np.clip(p, 0.0, 1.0) - y) ** 2
    return _f(sq.mean(axis=1).mean() if task.is_multilabel else sq.sum(axis=1).mean())


_RAW_NOTE = "before calibration: the raw scores, labels at the task's own threshold"


def _uncalibrated_view(
    task: Task, preds: Sequence[Prediction | None]
) -> list[tuple[tuple[str, ...], dict[str, float]] | None] | None:
    """Per prediction, the labels and scores it would have had uncalibrated (None for errors
    and abstentions); None when no prediction was calibrated."""
    if not any(p is not None and p.calibrated and p.raw_scores for p in preds):
        return None
    out: list[tuple[tuple[str, ...], dict[str, float]] | None] = []
    for p in preds:
        if p is None or p.abstained:
            out.append(None)
        elif p.calibrated and p.raw_scores:
            out.append((decide(task, p.raw_scores).labels, p.raw_scores))
        else:
            out.append((p.labels, p.scores))
    return out


def coverage_curve(confidences: Sequence[float], correct: Sequence[bool]) -> list[dict[str, Any]]:
    """Accuracy of the k % most confident cases, k = 10..100 (ties keep input order).

    Example:
        >>> [round(r["accuracy"], 2) for r in coverage_curve([0.9, 0.8, 0.2, 0.1],
        ...                                                   [True, True, False, True])][-1]
        0.75
    """
    n = len(confidences)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-confidences[i], i))
    ok = [bool(correct[i]) for i in order]
    out = []
    for k in COVERAGE_STEPS:
        m = max(1, math.ceil(k * n / 100))
        out.append(
            {
                "coverage": k / 100,
                "n": m,
                "accuracy": sum(ok[:m]) / m,
                "min_confidence": _f(confidences[order[m - 1]]),
            }
        )
    return out


def _some(names: Sequence[str], k: int = 10) -> str:
    """A list of names for a message, cut after ``k``."""
    head = ", ".join(repr(n) for n in names[:k])
    return f"[{head}]" if len(names) <= k else f"[{head}, ... {len(names) - k} more]"


def case_confidence(task: Task, pred: Prediction | None) -> float:
    """How sure a prediction is, as the coverage curve ranks it: the score of the label answered
    (single-label), or the least sure label decision, ``s`` if chosen else ``1 - s``
    (multi-label); -1 for an abstention or a failed call, so they rank last.

    Example:
        >>> p = Prediction(labels=("a",), scores={"a": 0.8, "b": 0.3}, score_source="model",
        ...                backend="x")
        >>> case_confidence(Task(name="t", kind="multilabel", labels={"a": "", "b": ""}), p)
        0.7
    """
    if pred is None or pred.abstained or not pred.scores:
        return -1.0
    if task.is_multilabel:
        return float(min(v if lab in pred.labels else 1.0 - v for lab, v in pred.scores.items()))
    if pred.label is None:
        return -1.0
    return float(pred.scores.get(pred.label, 0.0))


def _binary_auc(y: Sequence[int], s: Sequence[float]) -> float | None:
    if len(set(y)) < 2:
        return None
    return _f(skm.roc_auc_score(y, s))


def _check_gold(task: Task, golds: Sequence[tuple[str, ...]]) -> None:
    names = set(task.label_names)
    for i, g in enumerate(golds):
        unknown = [lab for lab in g if lab not in names]
        if unknown:
            raise ConfigError(
                f"case #{i}: gold labels {unknown} are not labels of task {task.name!r}"
            )
        if not task.is_multilabel and len(g) != 1:
            raise ConfigError(
                f"case #{i}: a {task.kind} task takes exactly one gold label, got {g}"
            )


def _usage(preds: Sequence[Prediction | None]) -> dict[str, Any]:
    total = Usage()
    for p in preds:
        if p is not None:
            total = total + p.usage
    return {
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": total.prompt_tokens + total.completion_tokens,
        "llm_calls": total.llm_calls,
        "retries": total.retries,
        "cost_usd": _f(total.cost_usd),
    }


def compute_metrics(
    task: Task,
    golds: Sequence[tuple[str, ...]],
    preds: Sequence[Prediction | None],
    *,
    ids: Sequence[str] | None = None,
    errors: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Every metric of a run, as a JSON-serialisable dict (see the module docstring).

    ``golds[i]`` is case i's gold label tuple, ``preds[i]`` its prediction or ``None`` when the
    backend failed on it (``errors[i]`` may then name the error kind). ``ids`` are the case ids
    (used to split multi-label cases for threshold tuning; default: positions).

    Example:
        >>> m = compute_metrics(task, [("a",)], [pred])                      # doctest: +SKIP
        >>> m["accuracy"], m["macro_f1"], m["calibration"]["ece"]           # doctest: +SKIP
    """
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    if ids is not None and len(ids) != len(golds):
        raise ValueError(f"{len(ids)} ids but {len(golds)} cases")
    golds = [tuple(g) for g in golds]
    _check_gold(task, golds)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(golds))]
    labels = list(task.label_names)
    n = len(golds)
    ok_preds = [p for p in preds if p is not None]
    n_err = n - len(ok_preds)
    err_kinds: Counter[str] = Counter()
    if errors is not None:
        err_kinds.update(e or "error" for e, p in zip(errors, preds, strict=True) if p is None)
    elif n_err:
        err_kinds["error"] = n_err
    n_abstained = sum(1 for p in ok_preds if p.abstained)

    out: dict[str, Any] = {
        "task": task.name,
        "kind": task.kind,
        "labels": labels,
        "n": n,
        "errors": n_err,
        "error_rate": n_err / n if n else 0.0,
        "error_kinds": dict(sorted(err_kinds.items())),
        "abstained": n_abstained,
        "abstain_rate": n_abstained / n if n else 0.0,
        "cache_hits": sum(1 for p in ok_preds if p.cached),
        "usage": _usage(preds),
        "latency_ms": percentiles([p.latency_ms for p in ok_preds if not p.cached]),
        "latency_ms_all": percentiles([p.latency_ms for p in ok_preds]),
        "score_sources": dict(Counter(p.score_source for p in ok_preds)),
        "backends": dict(Counter(p.backend for p in ok_preds)),
    }
    if n == 0:
        out.update(accuracy=None, macro_f1=None, micro_f1=None, weighted_f1=None)
        return out
    if task.is_multilabel:
        out.update(_multilabel(task, golds, preds, ids))
    else:
        out.update(_single_label(task, golds, preds))
    return out


def _single_label(
    task: Task, golds: Sequence[tuple[str, ...]], preds: Sequence[Prediction | None]
) -> dict[str, Any]:
    labels = list(task.label_names)
    y_true = [g[0] for g in golds]
    y_pred = [
        ERRORED if p is None else ABSTAINED if p.abstained or p.label is None else p.label
        for p in preds
    ]
    correct = [t == p for t, p in zip(y_true, y_pred, strict=True)]
    prec, rec, f1, sup = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    n_pred = Counter(y_pred)
    per_label = {
        lab: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(sup[i]),
            "predicted": n_pred.get(lab, 0),
        }
        for i, lab in enumerate(labels)
    }
    seen = set(y_true) | set(y_pred)
    present = [lab for lab in labels if lab in seen]
    idx = [labels.index(lab) for lab in present]

    def f1_avg(average: str) -> float:
        return float(skm.f1_score(y_true, y_pred, labels=present, average=average, zero_division=0))

    res: dict[str, Any] = {
        "accuracy": sum(correct) / len(correct),
        "macro_f1": f1_avg("macro"),
        "micro_f1": f1_avg("micro"),
        "weighted_f1": f1_avg("weighted"),
        "macro_precision": float(np.mean(prec[idx])),
        "macro_recall": float(np.mean(rec[idx])),
        "labels_averaged": len(present),
        "per_label": per_label,
    }
    extra = [c for c in (ABSTAINED, ERRORED) if c in y_pred]
    cols = labels + extra
    cm = skm.confusion_matrix(y_true, y_pred, labels=cols)
    res["confusion_matrix"] = {
        "rows": labels,
        "columns": cols,
        "matrix": cm[: len(labels)].tolist(),
        "note": "rows are gold labels, columns predicted labels",
    }

    # AUC-ROC from the scores of the cases that have them
    scored = [(g, p) for g, p in zip(y_true, preds, strict=True) if p is not None and p.scores]
    auc_per_label: dict[str, float | None] = {}
    note = None
    auc: float | None = None
    if task.kind == "binary":
        pos = task.positive_label
        assert pos is not None
        auc = _binary_auc(
            [int(g == pos) for g, _ in scored], [p.scores.get(pos, 0.0) for _, p in scored]
        )
        if auc is None:
            note = "AUC-ROC needs both labels among the gold labels of the scored cases"
        else:
            # the negative label's score is 1 - the positive's: the same ranking, the same AUC
            auc_per_label = dict.fromkeys(labels, auc)
    else:
        skipped = []
        for lab in labels:
            y = [int(g == lab) for g, _ in scored]
            a = _binary_auc(y, [p.scores.get(lab, 0.0) for _, p in scored])
            auc_per_label[lab] = a
            if a is None:
                skipped.append(lab)
        vals = [v for v in auc_per_label.values() if v is not None]
        auc = float(np.mean(vals)) if vals else None
        if skipped:
            note = (
                f"one-vs-rest macro AUC over {len(vals)} of {len(labels)} labels; left out "
                f"(absent from the gold labels, or on every case): {_some(skipped)}"
            )
    res["auc_roc"] = auc
    res["auc_roc_per_label"] = auc_per_label
    res["auc_roc_note"] = note

    # calibration: top-label confidence = the score of the label answered
    conf, ok = [], []
    for g, p in zip(y_true, preds, strict=True):
        if p is None or p.abstained or p.label is None:
            continue
        conf.append(float(p.scores.get(p.label, p.confidence)))
        ok.append(p.label == g)
    res["calibration"] = calibration(conf, ok)
    raw = _uncalibrated_view(task, preds)
    if raw is not None:
        conf, ok = [], []
        for g, view in zip(y_true, raw, strict=True):
            if view is None or not view[0]:
                continue
            labs, sc = view
            conf.append(float(sc.get(labs[0], 0.0)))
            ok.append(labs[0] == g)
        res["calibration_raw"] = calibration(conf, ok)
        res["calibration_raw"]["note"] = _RAW_NOTE

    # coverage: abstentions and errors rank last
    rank_conf = [case_confidence(task, p) for p in preds]
    res["coverage_curve"] = coverage_curve(rank_conf, correct)
    return res


def _indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    index = {lab: j for j, lab in enumerate(labels)}
    m = np.zeros((len(label_sets), len(labels)), dtype=int)
    for i, s in enumerate(label_sets):
        for lab in s:
            if lab in index:
                m[i, index[lab]] = 1
    return m


def _present_columns(y: np.ndarray, yp: np.ndarray) -> list[int]:
    """Label columns that occur in the gold labels or the predictions (all when none does)."""
    cols = [j for j in range(y.shape[1]) if y[:, j].any() or yp[:, j].any()]
    return cols or list(range(y.shape[1]))


def _ml_scores(y: np.ndarray, yp: np.ndarray) -> dict[str, Any]:
    if len(y) == 0:
        return {
            "n": 0,
            "subset_accuracy": None,
            "hamming_loss": None,
            "micro_f1": None,
            "macro_f1": None,
        }
    return {
        "n": len(y),
        "subset_accuracy": float(skm.accuracy_score(y, yp)),
        "hamming_loss": float(skm.hamming_loss(y, yp)),
        "micro_f1": float(skm.f1_score(y, yp, average="micro", zero_division=0)),
        "macro_f1": float(
            skm.f1_score(y, yp, labels=_present_columns(y, yp), average="macro", zero_division=0)
        ),
    }


def tune_thresholds(
    y: np.ndarray, s: np.ndarray, labels: Sequence[str], default: float
) -> dict[str, float]:
    """Per label, the score threshold that maximises F1 on (y, s); ties go to the one nearest
    ``default``. A label with no positive case keeps ``default``."""
    out = {}
    for j, lab in enumerate(labels):
        yj, sj = y[:, j], s[:, j]
        if yj.sum() == 0:
            out[lab] = default
            continue
        best: tuple[float, float, float] | None = None
        for t in sorted({*sj.tolist(), default}):
            f = float(skm.f1_score(yj, (sj >= t).astype(int), zero_division=0))
            key = (f, -abs(t - default), t)
            if best is None or key[:2] > best[:2]:
                best = key
        assert best is not None
        out[lab] = round(best[2], 6)
    return out


def _multilabel(
    task: Task,
    golds: Sequence[tuple[str, ...]],
    preds: Sequence[Prediction | None],
    ids: Sequence[str],
) -> dict[str, Any]:
    labels = list(task.label_names)
    y = _indicator(golds, labels)
    pred_sets = [() if p is None or p.abstained else p.labels for p in preds]
    yp = _indicator(pred_sets, labels)
    correct = [
        p is not None and p.matches(g)
        for g, p in zip(golds, preds, strict=True)
    ]
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, yp, zero_division=0)
    per_label = {
        lab: {
            "precision": float(prec[j]),
            "recall": float(rec[j]),
            "f1": float(f1[j]),
            "support": int(sup[j]),
            "predicted": int(yp[:, j].sum()),
        }
        for j, lab in enumerate(labels)
    }
    idx = _present_columns(y, yp)
    base = _ml_scores(y, yp)
    res: dict[str, Any] = {
        "accuracy": sum(correct) / len(correct),
        "subset_accuracy": sum(correct) / len(correct),
        "hamming_loss": base["hamming_loss"],
        "macro_f1": base["macro_f1"],
        "micro_f1": base["micro_f1"],
        "weighted_f1": float(skm.f1_score(y, yp, average="weighted", zero_division=0)),
        "macro_precision": float(np.mean(prec[idx])),
        "macro_recall": float(np.mean(rec[idx])),
        "labels_averaged": len(idx),
        "per_label": per_label,
    }
    mcm = skm.multilabel_confusion_matrix(y, yp)
    res["confusion_matrix"] = {
        "rows": labels,
        "columns": ["TP", "FP", "FN", "TN"],
        "matrix": [[int(m[1, 1]), int(m[0, 1]), int(m[1, 0]), int(m[0, 0])] for m in mcm],
        "note": "one row per label: true/false positives and negatives of that label",
    }

    has_scores = [i for i, p in enumerate(preds) if p is not None and p.scores]
    ys = y[has_scores]
    s = np.zeros((len(has_scores), len(labels)), dtype=float)
    for row, i in enumerate(has_scores):
        p = preds[i]
        assert p is not None
        s[row] = [p.scores.get(lab, 0.0) for lab in labels]
    auc_per_label = {
        lab: _binary_auc(ys[:, j].tolist(), s[:, j].tolist()) for j, lab in enumerate(labels)
    }
    vals = [v for v in auc_per_label.values() if v is not None]
    skipped = [lab for lab, v in auc_per_label.items() if v is None]
    res["auc_roc"] = float(np.mean(vals)) if vals else None
    res["auc_roc_per_label"] = auc_per_label
    res["auc_roc_note"] = (
        f"macro AUC over {len(vals)} of {len(labels)} labels; left out (no positive or no "
        f"negative gold case): {_some(skipped)}"
        if skipped
        else None
    )

    # calibration over every (case, label) decision of the cases that have scores
    conf, ok = [], []
    for row, i in enumerate(has_scores):
        p = preds[i]
        assert p is not None
        if p.abstained:
            continue
        for j, lab in enumerate(labels):
            sc = s[row, j]
            chosen = lab in p.labels
            conf.append(float(sc if chosen else 1.0 - sc))
            ok.append(chosen == bool(ys[row, j]))
    res["calibration"] = calibration(conf, ok)
    res["calibration"]["unit"] = "label decision"
    raw = _uncalibrated_view(task, preds)
    if raw is not None:
        conf, ok = [], []
        for row, i in enumerate(has_scores):
            view = raw[i]
            if view is None:
                continue
            labs, sc = view
            for j, lab in enumerate(labels):
                v = float(sc.get(lab, 0.0))
                chosen = lab in labs
                conf.append(v if chosen else 1.0 - v)
                ok.append(chosen == bool(ys[row, j]))
        res["calibration_raw"] = calibration(conf, ok)
        res["calibration_raw"]["unit"] = "label decision"
        res["calibration_raw"]["note"] = _RAW_NOTE

    # coverage: a case's confidence is its least sure label decision
    rank_conf = [case_confidence(task, p) for p in preds]
    res["coverage_curve"] = coverage_curve(rank_conf, correct)

    # per-label thresholds: tune on one half of the cases, measure on the other
    halves = [split_half(ids[i]) for i in has_scores]
    tune = [r for r, h in enumerate(halves) if h == 0]
    held = [r for r, h in enumerate(halves) if h == 1]
    tuning: dict[str, Any] = {
        "split": "sha256(case id) first byte, low bit: 0 tunes, 1 is held out",
        "n_tune": len(tune),
        "n_held_out": len(held),
    }
    if len(tune) < 2 or len(held) < 2:
        tuning["note"] = "too few scored cases to tune thresholds on one half and test on the other"
        tuning["thresholds"] = None
    else:
        th = tune_thresholds(ys[tune], s[tune], labels, task.threshold)
        t_vec = np.array([th[lab] for lab in labels])
        held_pred = (s[held] >= t_vec).astype(int)
        model_pred = yp[[has_scores[r] for r in held]]
        tuning["thresholds"] = th
        tuning["held_out_tuned"] = _ml_scores(ys[held], held_pred)
        tuning["held_out_model"] = _ml_scores(ys[held], model_pred)
    res["multilabel"] = {
        "subset_accuracy": res["subset_accuracy"],
        "hamming_loss": res["hamming_loss"],
        "micro_f1": res["micro_f1"],
        "macro_f1": res["macro_f1"],
        "threshold_tuning": tuning,
    }
    return res
