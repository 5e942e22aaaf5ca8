"""Where calibrators live, keyed by what they were fitted for, and how they are loaded (JSON only).

An LLM's calibrator is one file under ``$LLMCLF_HOME/calibration/``, keyed by the backend spec
(its name, without options), the prompt template id (``name.vN@hash``) and the task fingerprint.
A student's is ``calibration.json`` in its model directory. A calibrator fitted for another
prompt version or another task is never applied: `find_calibration` warns
(`CalibrationWarning`) and the backend answers uncalibrated.

Example:
    >>> cal = find_calibration("llm:local", "compact_few_shot.v1@3f2a", task)  # doctest: +SKIP
    >>> cal.apply({"negative": 0.575, "positive": 0.425})                     # doctest: +SKIP
    {'negative': 0.31, 'positive': 0.69}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmclf.calibration.methods import Calibrator
from llmclf.decision import DEFAULT_THRESHOLD
from llmclf.errors import ConfigError
from llmclf.paths import home
from llmclf.types import CalibrationMethod, RawScoreSource, Task, TaskKind

__all__ = [
    "FORMAT",
    "STUDENT_FILE",
    "Calibration",
    "CalibrationWarning",
    "calibration_dir",
    "calibration_path",
    "find_calibration",
    "load_calibration",
    "save_calibration",
]

FORMAT = "llmclf-calibration/1"
#: A student's calibrator, in its model directory.
STUDENT_FILE = "calibration.json"


class CalibrationWarning(UserWarning):
    """A calibrator exists but does not fit this backend, prompt or task: it is not applied."""


class Calibration(BaseModel):
    """A fitted calibrator with what it was fitted for; the JSON file's schema.

    ``threshold`` is the binary/multi-label decision threshold on the calibrated scores; it
    replaces the task's own threshold, which was set on raw scores: 0.5 (calibrated scores are
    probabilities) after a method that learns the label bias, and after temperature scaling
    (which keeps it) the task's threshold carried through the calibrator.
    ``metrics`` holds what was measured on held-out cases when it was fitted.
    """

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    method: CalibrationMethod
    kind: TaskKind
    labels: tuple[str, ...] = Field(min_length=2)
    params: dict[str, Any]
    threshold: float = Field(default=DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    backend: str
    prompt_id: str | None = None
    task: str
    task_fingerprint: str
    score_source: RawScoreSource
    fitted_on: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def calibrator(self) -> Calibrator:
        cal = self.__dict__.get("_calibrator")
        if cal is None:
            cal = Calibrator(self.method, self.kind, self.params)
            self.__dict__["_calibrator"] = cal
        return cal

    def apply_matrix(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated score rows for raw ones, columns in ``labels`` order."""
        return self.calibrator.apply(scores)

    def apply(self, scores: dict[str, float]) -> dict[str, float]:
        """Calibrated scores for one answer's raw scores.

        Example:
            >>> cal.apply({"negative": 0.6, "positive": 0.4})         # doctest: +SKIP
            {'negative': 0.47, 'positive': 0.53}
        """
        row = np.array([[float(scores.get(n, 0.0)) for n in self.labels]])
        out = self.apply_matrix(row)[0]
        return {n: float(v) for n, v in zip(self.labels, out, strict=True)}

    def mismatch(
        self, backend: str | None, prompt_id: str | None, task: Task, *, check_task: bool = True
    ) -> str | None:
        """Why this calibrator must not be applied to ``backend``/``prompt_id``/``task``
        (None when it fits). ``backend`` None skips the backend check (a student's file)."""
        if tuple(task.label_names) != self.labels:
            return f"it was fitted for labels {list(self.labels)}, not {list(task.label_names)}"
        if backend is not None and backend != self.backend:
            return f"it was fitted for backend {self.backend}, not {backend}"
        if prompt_id != self.prompt_id:
            return f"it was fitted on prompt {self.prompt_id}, not {prompt_id}"
        if check_task and task.fingerprint() != self.task_fingerprint:
            return (
                f"it was fitted for task {self.task}@{self.task_fingerprint}, "
                f"not {task.name}@{task.fingerprint()} (the task changed)"
            )
        return None


def calibration_dir() -> Path:
    """``$LLMCLF_HOME/calibration``: the calibrators of LLM backends."""
    p = home() / "calibration"
    p.mkdir(parents=True, exist_ok=True)
    return p


def calibration_path(backend: str, prompt_id: str | None, task: Task) -> Path:
    """The file of the calibrator for this backend, prompt and task."""
    key = f"{backend}|{prompt_id}|{task.fingerprint()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task.name}-{backend}")[:80]
    return calibration_dir() / f"{slug}-{digest}.json"


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibrator file: JSON, validated field by field; nothing is ever unpickled.

    Raises `ConfigError` naming the file (and the field) when it is not a calibrator.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such calibration file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not a JSON calibration file ({exc})") from None
    try:
        cal = Calibration.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{p}: {where}: {err['msg']}") from None
    if cal.format != FORMAT:
        raise ConfigError(f"{p}: format: expected {FORMAT!r}, got {cal.format!r}")
    if len(cal.labels) != len(set(cal.labels)):
        raise ConfigError(f"{p}: labels: duplicate label names")
    try:  # the parameters must make sense for the labels: apply once
        cal.apply_matrix(np.full((1, len(cal.labels)), 1.0 / len(cal.labels)))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{p}: params: not valid for method {cal.method} ({exc!r})") from None
    return cal


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON, atomically (a crash leaves the old file or the new one)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cal.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def find_calibration(backend: str, prompt_id: str | None, task: Task) -> Calibration | None:
    """The calibrator stored for this backend, prompt and task, or None.

    A calibrator stored for the same backend and task name but another prompt version or task
    fingerprint is not applied: this warns (`CalibrationWarning`) and returns None.
    """
    path = calibration_path(backend, prompt_id, task)
    if path.exists():
        cal = load_calibration(path)
        why = cal.mismatch(backend, prompt_id, task)
        if why is None:
            return cal
        warnings.warn(
            f"calibrator {path} is not applied: {why}; answering uncalibrated",
            CalibrationWarning,
            stacklevel=2,
        )
        return None
    for other in sorted(calibration_dir().glob("*.json")):
        try:
            cal = load_calibration(other)
        except ConfigError:
            continue
        if cal.backend == backend and cal.task == task.name:
            why = cal.mismatch(backend, prompt_id, task)
            warnings.warn(
                f"calibrator {other} is not applied: {why}; answering uncalibrated "
                "(fit one with `llmclf calibrate`)",
                CalibrationWarning,
                stacklevel=2,
            )
            break
    return None
