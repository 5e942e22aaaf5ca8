"""Calibration methods: fit a map from raw scores to probabilities, apply it, store it as JSON.

- ``temperature`` (any task, labelled cases): one temperature T, ``softmax(log p / T)``
  (a per-label sigmoid of ``logit p / T`` for multi-label);
- ``platt`` (any task, labelled cases): logistic regression on the log scores (binary: on the
  positive label's logit; multi-label: one regression per label);
- ``isotonic`` (any task, at least `MIN_ISOTONIC_CASES` labelled cases): a monotone map per
  label, renormalised for single-label;
- ``contextual`` (single-label, no labels): the prompt's label bias ``p_cf``, estimated from
  content-free inputs, divided out: ``p / p_cf``, renormalised (Zhao et al. 2021).

Platt and isotonic are scikit-learn's own estimators (`LogisticRegression`,
`IsotonicRegression`); temperature is a one-parameter `scipy.optimize.minimize_scalar` of the
negative log-likelihood. A fitted calibrator is plain numbers: it is saved and loaded as JSON,
never pickled.

Example:
    >>> import numpy as np
    >>> raw = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05]] * 25)
    >>> gold = np.array([0, 1, 1, 0] * 25)
    >>> cal = fit("temperature", raw, gold, kind="binary")
    >>> cal.method, cal.apply(raw)[0].round(2).tolist() != raw[0].tolist()
    ('temperature', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmclf.errors import ConfigError
from llmclf.types import CalibrationMethod, TaskKind

__all__ = [
    "CONTENT_FREE_INPUTS",
    "METHODS",
    "MIN_ISOTONIC_CASES",
    "Calibrator",
    "fit",
    "fit_contextual",
]

METHODS: tuple[CalibrationMethod, ...] = ("temperature", "platt", "isotonic", "contextual")
#: Content-free inputs whose scores estimate a prompt's label bias (Zhao et al. 2021).
CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")
#: Isotonic regression overfits small sets: below this many labelled cases it is refused.
MIN_ISOTONIC_CASES = 50

_EPS = 1e-6


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)


def _logit(p: np.ndarray) -> np.ndarray:
    q = _clip(p)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _renormalise(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


class Calibrator:
    """A fitted calibration map for one task kind, over the task's labels in order.

    ``apply`` takes raw score rows (n, n_labels) and returns calibrated ones; a single-label
    task's rows sum to 1. ``params`` is JSON (numbers and lists only).
    """

    def __init__(self, method: CalibrationMethod, kind: TaskKind, params: dict[str, Any]) -> None:
        self.method = method
        self.kind = kind
        self.params = params

    def __repr__(self) -> str:
        return f"Calibrator({self.method!r}, {self.kind!r})"

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated scores for raw score rows (n, n_labels)."""
        p = np.atleast_2d(np.asarray(scores, dtype=float))
        m, prm = self.method, self.params
        if m == "temperature":
            t = float(prm["temperature"])
            if self.multilabel:
                return _sigmoid(_logit(p) / t)
            return _softmax(np.log(_clip(p)) / t)
        if m == "platt":
            if self.multilabel or self.kind == "binary":
                a, b = np.asarray(prm["a"], float), np.asarray(prm["b"], float)
                if self.multilabel:
                    return _sigmoid(a * _logit(p) + b)
                pos = int(prm["positive_index"])
                q = _sigmoid(a[0] * _logit(p[:, pos]) + b[0])
                out = np.empty_like(p)
                out[:, pos], out[:, 1 - pos] = q, 1.0 - q
                return out
            coef, icpt = np.asarray(prm["coef"], float), np.asarray(prm["intercept"], float)
            return _softmax(np.log(_clip(p)) @ coef.T + icpt)
        if m == "isotonic":
            cols = []
            for j, (xs, ys) in enumerate(zip(prm["x"], prm["y"], strict=True)):
                cols.append(np.interp(p[:, j], xs, ys) if xs else p[:, j])
            out = np.stack(cols, axis=1)
            return out if self.multilabel else _renormalise(out)
        if m == "contextual":
            bias = np.maximum(np.asarray(prm["bias"], float), _EPS)
            return _renormalise(p / bias)
        raise ConfigError(f"unknown calibration method {m!r}; methods: {', '.join(METHODS)}")

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "params": self.params}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibrator:
        return cls(data["method"], data["kind"], dict(data["params"]))


def _nll(p: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        q = _clip(p)
        return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())
    return float(-np.log(_clip(p[np.arange(len(y)), y])).mean())


def _fit_temperature(p: np.ndarray, y: np.ndarray, kind: TaskKind) -> dict[str, Any]:
    from scipy.optimize import minimize_scalar

    ml = kind == "multilabel"

    def loss(log_t: float) -> float:
        return _nll(Calibrator("temperature", kind, {"temperature": np.exp(log_t)}).apply(p), y, ml)

    res = minimize_scalar(loss, bounds=(np.log(0.02), np.log(50.0)), method="bounded")
    return {"temperature": float(np.exp(res.x))}


def _lr(c: float = 1e4) -> Any:
    from sklearn.linear_model import LogisticRegression

    # nearly unregularised: Platt scaling is a maximum-likelihood fit
    return LogisticRegression(C=c, max_iter=1000)


def _fit_platt(
    p: np.ndarray, y: np.ndarray, kind: TaskKind, positive_index: int | None
) -> dict[str, Any]:
    if kind == "multilabel":
        a, b = [], []
        for j in range(p.shape[1]):
            yj = y[:, j]
            if yj.min() == yj.max():  # one class only: leave this label as it is
                a.append(1.0)
                b.append(0.0)
                continue
            lr = _lr().fit(_logit(p[:, j]).reshape(-1, 1), yj)
            a.append(float(lr.coef_[0, 0]))
            b.append(float(lr.intercept_[0]))
        return {"a": a, "b": b}
    if kind == "binary":
        assert positive_index is not None
        yb = (y == positive_index).astype(int)
        if yb.min() == yb.max():
            raise ConfigError("platt scaling needs both labels among the calibration cases")
        lr = _lr().fit(_logit(p[:, positive_index]).reshape(-1, 1), yb)
        return {
            "a": [float(lr.coef_[0, 0])],
            "b": [float(lr.intercept_[0])],
            "positive_index": positive_index,
        }
    present = sorted(set(y.tolist()))
    if len(present) != p.shape[1]:
        raise ConfigError(
            f"multiclass platt scaling needs every label among the calibration cases "
            f"({len(present)} of {p.shape[1]} present); use --method temperature"
        )
    lr = _lr(1.0).fit(np.log(_clip(p)), y)
    return {"coef": lr.coef_.tolist(), "intercept": lr.intercept_.tolist()}


def _fit_isotonic(p: np.ndarray, y: np.ndarray, kind: TaskKind) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    if len(p) < MIN_ISOTONIC_CASES:
        raise ConfigError(
            f"isotonic calibration needs at least {MIN_ISOTONIC_CASES} labelled cases, "
            f"got {len(p)}; use --method temperature or platt"
        )
    onehot = y if kind == "multilabel" else np.eye(p.shape[1], dtype=int)[y]
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    for j in range(p.shape[1]):
        yj = onehot[:, j]
        if yj.min() == yj.max():
            xs.append([])
            ys.append([])
            continue
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, j], yj)
        xs.append([float(v) for v in iso.X_thresholds_])
        ys.append([float(v) for v in iso.y_thresholds_])
    return {"x": xs, "y": ys}


def fit(
    method: CalibrationMethod,
    scores: np.ndarray | Sequence[Sequence[float]],
    gold: np.ndarray | Sequence[Any],
    *,
    kind: TaskKind,
    positive_index: int | None = None,
) -> Calibrator:
    """Fit ``method`` on raw score rows (n, n_labels) and gold answers: label indices for a
    single-label task, a 0/1 indicator matrix (n, n_labels) for a multi-label one.

    ``positive_index`` (binary tasks): the column of the positive label (default 1).
    """
    p = np.atleast_2d(np.asarray(scores, dtype=float))
    y = np.asarray(gold, dtype=int)
    if len(p) == 0:
        raise ConfigError("no labelled cases to calibrate on")
    if len(p) != len(y):
        raise ConfigError(f"{len(p)} score rows but {len(y)} gold answers")
    if kind == "binary" and positive_index is None:
        positive_index = 1
    if method == "temperature":
        params = _fit_temperature(p, y, kind)
    elif method == "platt":
        params = _fit_platt(p, y, kind, positive_index)
    elif method == "isotonic":
        params = _fit_isotonic(p, y, kind)
    elif method == "contextual":
        raise ConfigError("contextual calibration needs no labels: use fit_contextual")
    else:
        raise ConfigError(f"unknown calibration method {method!r}; methods: {', '.join(METHODS)}")
    return Calibrator(method, kind, params)


def fit_contextual(
    content_free_scores: np.ndarray | Sequence[Sequence[float]], *, kind: TaskKind
) -> Calibrator:
    """Contextual calibration from the scores a prompt gives content-free inputs
    (`CONTENT_FREE_INPUTS`): their mean is the prompt's label bias, divided out of every
    answer's scores.

    Example:
        >>> cal = fit_contextual([[0.2, 0.8], [0.3, 0.7]], kind="binary")
        >>> cal.apply([[0.25, 0.75]]).round(2).tolist()
        [[0.5, 0.5]]
    """
    if kind == "multilabel":
        raise ConfigError(
            "contextual calibration is for single-label tasks; use platt (per label) instead"
        )
    p = np.atleast_2d(np.asarray(content_free_scores, dtype=float))
    if p.size == 0:
        raise ConfigError("contextual calibration needs the scores of content-free inputs")
    bias = _renormalise(p).mean(axis=0)
    return Calibrator("contextual", kind, {"bias": [float(v) for v in bias]})
