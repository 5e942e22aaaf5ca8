"""Export a student's sentence body to ONNX (optionally int8), with a parity check against torch.

The exported graph is the whole body: transformer, pooling and normalisation, taking
``input_ids`` and ``attention_mask`` (dynamic batch and length) and returning
``sentence_embedding``. The head stays in ``head.json`` (a tiny matrix product in numpy).
Quantization is ONNX Runtime's dynamic int8 (per-channel weights); when that drifts past the
bound, the MatMuls that cause the most drift stay fp32 until it does not. The parity check runs the
same texts through the torch model and through the exact inference path `SetFitBackend` serves
with, and compares the label scores: the largest difference must stay under a bound
(``1e-3`` for fp32, ``0.05`` for int8), else `ParityError`.

Example:
    >>> from llmclf.export import export_student                     # doctest: +SKIP
    >>> for r in export_student("models/sst2", texts, int8=True):
    ...     print(r.runtime, r.max_diff, r.passed)
    onnx 2.1e-07 True
    int8 0.012 True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmclf.backends.setfit import ONNX_FP32, ONNX_INT8, SetFitBackend
from llmclf.errors import ExportError, ParityError

#: Default bounds on the largest label-score difference from torch, per runtime.
FP32_BOUND = 1e-3
INT8_BOUND = 0.05

log = logging.getLogger("llmclf.export")


@dataclass(frozen=True)
class ParityResult:
    """How far an exported runtime's label scores are from torch's, over ``n_texts`` texts."""

    runtime: str
    max_diff: float
    mean_diff: float
    bound: float
    n_texts: int
    kept_fp32: int = 0

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.bound

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the tracer's and the quantizer's advisory warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def export_onnx(body_dir: str | Path, out_path: str | Path, *, opset: int = 17) -> Path:
    """Export a sentence-transformers body (transformer + pooling + normalise) to ONNX.

    Example:
        >>> export_onnx("models/sst2/body", "models/sst2/model.onnx")     # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    out = Path(out_path)
    st = SentenceTransformer(str(body_dir), device="cpu")
    st.eval()

    class _Body(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            feats = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.model(feats)["sentence_embedding"]

    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                _Body(st).eval(),
                (ids, mask),
                str(out),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many untyped errors
        raise ExportError(f"ONNX export of {body_dir} failed: {exc}") from exc
    return out


def weight_matmuls(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a 2-D weight (what int8 quantizes)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = {i.name: len(i.dims) for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) == 2 and dims.get(n.input[1]) == 2
    ]


def quantize_int8(
    fp32_path: str | Path, out_path: str | Path, *, exclude: Sequence[str] = ()
) -> Path:
    """Dynamic int8 quantization (per-channel weights) of an exported model; the MatMul nodes
    named in ``exclude`` stay fp32.

    Example:
        >>> quantize_int8("models/sst2/model.onnx", "models/sst2/model.int8.onnx")  # doctest: +SKIP
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            quantize_dynamic(
                str(fp32_path),
                str(out_path),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=list(exclude),
            )
    except Exception as exc:
        raise ExportError(f"int8 quantization of {fp32_path} failed: {exc}") from exc
    return Path(out_path)


def parity_check(
    model_dir: str | Path,
    texts: Sequence[str],
    runtime: str,
    bound: float,
    *,
    reference: np.ndarray | None = None,
) -> ParityResult:
    """Compare ``runtime``'s label scores with torch's on ``texts``.

    ``reference`` (torch's score matrix for ``texts``) is computed when not given.

    Example:
        >>> parity_check("models/sst2", ["great", "awful"], "int8", 0.05).passed  # doctest: +SKIP
        True
    """
    if not texts:
        raise ExportError("the parity check needs at least one text")
    if reference is None:
        reference = SetFitBackend(model_dir, runtime="torch").score_matrix(texts)
    got = SetFitBackend(model_dir, runtime=runtime).score_matrix(texts)  # type: ignore[arg-type]
    diff = np.abs(np.asarray(got) - np.asarray(reference))
    return ParityResult(
        runtime=runtime,
        max_diff=float(diff.max()),
        mean_diff=float(diff.mean()),
        bound=bound,
        n_texts=len(texts),
    )


def _body_hash(model_dir: Path) -> str:
    h = hashlib.sha256()
    with open(model_dir / "body" / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def int8_drift_ranking(model_dir: str | Path, texts: Sequence[str]) -> list[str]:
    """The body's weight MatMuls, most int8-sensitive first: each is quantized alone and ranked
    by how far it moves the sentence embeddings of ``texts``. The ranking depends on the body
    only, so it is cached per body (``$LLMCLF_HOME/int8-ranking/<hash>.json``).

    Example:
        >>> int8_drift_ranking("models/sst2", texts)[:1]                 # doctest: +SKIP
        ['/model/model.0/encoder/layer.0/output/dense/MatMul']
    """
    from llmclf.backends.setfit import OnnxEncoder
    from llmclf.paths import home

    model_dir = Path(model_dir)
    fp32 = model_dir / ONNX_FP32
    nodes = weight_matmuls(fp32)
    cache = home() / "int8-ranking" / f"{_body_hash(model_dir)}.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if isinstance(cached, list) and sorted(cached) == sorted(nodes):
                return [str(n) for n in cached]
        except (OSError, ValueError):
            pass
    body = model_dir / "body"
    ref = OnnxEncoder(fp32, body).encode(texts)
    drift: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        for name in nodes:
            quantize_int8(fp32, probe, exclude=[n for n in nodes if n != name])
            got = OnnxEncoder(probe, body).encode(texts)
            drift[name] = float(np.abs(got - ref).mean())
    ranking = sorted(nodes, key=lambda n: -drift[n])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp_file.write_text(json.dumps(ranking, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_file, cache)
    return ranking


def _int8_within_bound(
    model_dir: Path, texts: Sequence[str], reference: np.ndarray, bound: float
) -> tuple[ParityResult, list[str]]:
    """Quantize every weight MatMul; when the scores drift past ``bound``, keep the most
    sensitive MatMuls (`int8_drift_ranking`) in fp32, 1, 2, 4... at a time, up to all of them
    (then the "int8" file computes in fp32: slower, but a trained student is never lost).
    Returns the last parity result and the MatMuls kept in fp32."""
    fp32, int8 = model_dir / ONNX_FP32, model_dir / ONNX_INT8

    def check(exclude: Sequence[str]) -> ParityResult:
        quantize_int8(fp32, int8, exclude=exclude)
        return parity_check(model_dir, texts, "int8", bound, reference=reference)

    result = check(())
    if result.passed:
        return result, []
    # rank on the texts that drift most (borderline ones, where the scores move most)
    got = SetFitBackend(model_dir, runtime="int8").score_matrix(texts)
    worst = np.argsort(-np.abs(got - reference).max(axis=1))[:16]
    ranking = int8_drift_ranking(model_dir, [texts[i] for i in worst])
    k = 1
    while True:
        k = min(k, len(ranking))
        exclude = ranking[:k]
        result = check(exclude)
        log.info("int8 with %d MatMul(s) in fp32: max diff %.3g", k, result.max_diff)
        if result.passed or k == len(ranking):
            return result, exclude
        k *= 2


def export_student(
    model_dir: str | Path,
    texts: Sequence[str],
    *,
    int8: bool = True,
    fp32_bound: float = FP32_BOUND,
    int8_bound: float = INT8_BOUND,
    skip_failed_int8: bool = False,
) -> list[ParityResult]:
    """Write ``model.onnx`` (and ``model.int8.onnx``) into a student directory and check both
    against torch on ``texts``; raises `ParityError` when a bound is exceeded. With
    ``skip_failed_int8`` an int8 model that misses its bound is left out instead (the fp32 ONNX
    model serves) and its failed result is returned last, so a trained student is never lost.

    When plain int8 quantization drifts past ``int8_bound``, the MatMuls that cause the most
    drift are kept in fp32 until it does not (their names go to ``int8_fp32_nodes.json``).

    Example:
        >>> [r.passed for r in export_student("models/sst2", texts)]     # doctest: +SKIP
        [True, True]
    """
    model_dir = Path(model_dir)
    export_onnx(model_dir / "body", model_dir / ONNX_FP32)
    reference = SetFitBackend(model_dir, runtime="torch").score_matrix(texts)
    results = [parity_check(model_dir, texts, "onnx", fp32_bound, reference=reference)]
    if not results[0].passed:
        raise ParityError(results[0])
    if int8:
        result, kept = _int8_within_bound(model_dir, texts, reference, int8_bound)
        result = replace(result, kept_fp32=len(kept))
        results.append(result)
        if not result.passed:
            (model_dir / ONNX_INT8).unlink(missing_ok=True)
            if skip_failed_int8:
                return results
            raise ParityError(result)
        if kept:
            (model_dir / "int8_fp32_nodes.json").write_text(
                json.dumps(kept, indent=2) + "\n", encoding="utf-8"
            )
    return results
