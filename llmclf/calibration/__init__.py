"""Scores that are probabilities: fit, store and apply calibrators for every backend.

- `methods`: temperature, Platt (per label for multi-label), isotonic and contextual
  calibration, as `Calibrator` maps from raw score rows to calibrated ones;
- `storage`: `Calibration` (a calibrator with what it was fitted for), saved and loaded as
  JSON keyed by backend spec, prompt id and task fingerprint (a student's in its model
  directory as ``calibration.json``).

Backends apply a stored calibrator automatically; their answers then say so
(``score_source="logprobs+temperature"``, ``calibrated=True``). `llmclf calibrate` fits one.

Example:
    >>> from llmclf.calibration import fit_contextual
    >>> fit_contextual([[0.3, 0.7]], kind="binary").apply([[0.3, 0.7]]).round(2).tolist()
    [[0.5, 0.5]]
"""

from llmclf.calibration.methods import (
    CONTENT_FREE_INPUTS,
    METHODS,
    MIN_ISOTONIC_CASES,
    Calibrator,
    fit,
    fit_contextual,
)
from llmclf.calibration.storage import (
    STUDENT_FILE,
    Calibration,
    CalibrationWarning,
    calibration_dir,
    calibration_path,
    find_calibration,
    load_calibration,
    save_calibration,
)

__all__ = [
    "CONTENT_FREE_INPUTS",
    "METHODS",
    "MIN_ISOTONIC_CASES",
    "STUDENT_FILE",
    "Calibration",
    "CalibrationWarning",
    "Calibrator",
    "calibration_dir",
    "calibration_path",
    "find_calibration",
    "fit",
    "fit_contextual",
    "load_calibration",
    "save_calibration",
]
