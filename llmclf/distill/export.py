"""Export stage: the trained student as ONNX (fp32, and int8 when it stays within its bound).

`llmclf.export.export_student` writes the models and checks each against torch on the parity
texts (eval texts first, then training texts). An fp32 model over its bound fails the job
(`ParityError`); an int8 model over its bound is left out with a warning (the fp32 model serves),
so a trained student is never lost.

Example:
    >>> ex = export_onnx_models(tmp, eval_texts, train_texts, int8=True)   # doctest: +SKIP
    >>> [p.runtime for p in ex.parity], ex.warnings
    (['onnx', 'int8'], [])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmclf.export import FP32_BOUND, INT8_BOUND, ParityResult, export_student

__all__ = ["PARITY_TEXTS", "Exported", "export_onnx_models", "parity_texts"]

#: Texts of the parity check (eval texts first, then training texts).
PARITY_TEXTS = 192


@dataclass
class Exported:
    """The parity results (fp32 first; a failed int8 result last) and the warnings to show."""

    parity: list[ParityResult]
    warnings: list[str] = field(default_factory=list)


def parity_texts(eval_texts: Sequence[str], train_texts: Sequence[str]) -> list[str]:
    """Up to `PARITY_TEXTS` distinct texts: half from the eval set, the rest from training."""
    texts = list(dict.fromkeys([*eval_texts[: PARITY_TEXTS // 2], *train_texts]))
    return texts[:PARITY_TEXTS]


def export_onnx_models(
    model_dir: Path,
    eval_texts: Sequence[str],
    train_texts: Sequence[str],
    *,
    int8: bool = True,
    fp32_bound: float = FP32_BOUND,
    int8_bound: float = INT8_BOUND,
) -> Exported:
    """Export the student saved in ``model_dir`` and check the exports against torch."""
    parity = export_student(
        model_dir,
        parity_texts(eval_texts, train_texts),
        int8=int8,
        fp32_bound=fp32_bound,
        int8_bound=int8_bound,
        skip_failed_int8=True,
    )
    out = Exported(parity=parity)
    if parity[-1].runtime == "int8" and not parity[-1].passed:
        out.warnings.append(
            f"int8 export left out: max score difference {parity[-1].max_diff:.3g} exceeds "
            f"--int8-bound {parity[-1].bound:g} even with every MatMul in fp32; the fp32 "
            "ONNX model serves (a looser --int8-bound gives the int8 speed-up)"
        )
    return out
