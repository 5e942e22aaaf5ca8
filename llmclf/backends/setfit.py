"""``setfit:DIR``: a distilled SetFit student (sentence body + logistic-regression head).

The directory is written by `llmclf distill` (see `llmclf.distill`); its layout:

```
DIR/
  labels.json            the label names, in the order of the head's rows
  head.json              {"kind": "softmax" | "sigmoid", "threshold": 0.5, "coef": [[...]],
                          "intercept": [...]}
  body/                  the sentence-transformers body (model.safetensors, tokenizer.json, ...)
  model.onnx             body + pooling + normalisation, exported for ONNX Runtime (optional)
  model.int8.onnx        the same, int8 dynamically quantized (optional)
  int8_fp32_nodes.json   MatMuls left in fp32 in the int8 model to stay within its parity bound
  router.json            {"escalation_threshold": 0.83, ...} calibrated on an eval set
  calibration.json       the student's calibrator (`llmclf.calibration`), applied on load
  card.json, README.md   the model card (teacher, prompt hash, data hash, counts, metrics)
  task.json              the task the student was trained for
```

Nothing in the directory is ever unpickled: a ``.pkl``/``.pt``/``.bin``/``.joblib`` file makes
loading fail with `ModelLoadError`. Inference runs on ONNX Runtime when an export is present
(int8 first), tokenizing with the fast ``tokenizers`` library directly, else on torch.

Example:
    >>> from llmclf.backends.setfit import SetFitBackend                 # doctest: +SKIP
    >>> student = SetFitBackend.load("models/sst2")
    >>> p = student.predict_batch(["a gorgeous, witty film"])[0]
    >>> p.label, p.scores
    ('positive', {'negative': 0.04, 'positive': 0.96})
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.calibration import STUDENT_FILE, Calibration, CalibrationWarning, load_calibration
from llmclf.decision import decide
from llmclf.errors import ModelLoadError
from llmclf.types import Prediction, Task

#: File suffixes that deserialize with pickle (or may): never loaded from a model directory.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt", ".npy", ".npz")

ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"

Runtime = Literal["auto", "int8", "onnx", "torch"]


def refuse_pickles(model_dir: Path) -> None:
    """Raise `ModelLoadError` naming the first file in ``model_dir`` that would unpickle."""
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.name.lower().endswith(PICKLE_SUFFIXES):
            raise ModelLoadError(
                f"refusing to load {path}: {path.suffix} files can run code when unpickled; "
                "a llmclf student stores its body as safetensors and its head as JSON"
            )


@dataclass(frozen=True)
class Head:
    """A linear head: ``softmax`` over labels (single-label) or per-label ``sigmoid`` (multi).

    ``threshold`` is the student's own decision threshold (binary: the positive label's score;
    multi-label: each label's score). It is not the task's ``threshold``, which calibrates an
    LLM's scores: the student learnt the teacher's decisions, so 0.5 reproduces them.
    """

    kind: Literal["softmax", "sigmoid"]
    coef: np.ndarray  # (n_labels, dim)
    intercept: np.ndarray  # (n_labels,)
    threshold: float = 0.5

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Label scores for a batch of embeddings, shape (n, n_labels)."""
        logits = embeddings.astype(np.float64) @ self.coef.T + self.intercept
        if self.kind == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
        }

    @classmethod
    def from_json(cls, data: Any, *, path: Path, n_labels: int) -> Head:
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        kind = data.get("kind")
        if kind not in ("softmax", "sigmoid"):
            raise ModelLoadError(f"{path}: kind: must be 'softmax' or 'sigmoid', got {kind!r}")
        try:
            coef = np.asarray(data["coef"], dtype=np.float64)
            intercept = np.asarray(data["intercept"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: coef/intercept missing or not numeric ({exc})") from None
        if coef.ndim != 2 or coef.shape[0] != n_labels or intercept.shape != (n_labels,):
            raise ModelLoadError(
                f"{path}: coef must be (n_labels={n_labels}, dim) and intercept (n_labels,), "
                f"got {coef.shape} and {intercept.shape}"
            )
        threshold = data.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            0.0 <= threshold <= 1.0
        ):
            raise ModelLoadError(
                f"{path}: threshold: must be a number in [0, 1], got {threshold!r}"
            )
        return cls(kind=kind, coef=coef, intercept=intercept, threshold=float(threshold))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path} is missing: the model directory is incomplete "
            "(write one with `llmclf distill`)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None


#: ONNX Runtime intra-op threads per student session (unset: ONNX Runtime's default, a thread
#: per physical core); a ``threads=`` spec option wins.
ORT_THREADS_ENV = "LLMCLF_ORT_THREADS"
#: ``0``: ONNX Runtime's pool threads sleep between runs instead of spin-waiting (``1``, its
#: default, spins: faster back-to-back runs offline, CPU taken from a service's event loop).
ORT_SPIN_ENV = "LLMCLF_ORT_SPIN"


def _ort_env(name: str, *, min_value: int, max_value: int | None = None) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = min_value - 1
    if value < min_value or (max_value is not None and value > max_value):
        bound = f"{min_value}..{max_value}" if max_value is not None else f">= {min_value}"
        raise ModelLoadError(f"${name}={raw!r}: expected an integer {bound}")
    return value


def serving_student_defaults(processes: int = 1) -> None:
    """Student sessions beside a service: ONNX Runtime's threads do not spin-wait, and the
    cores are shared out between the service's ``processes`` (workers) rather than each
    session taking all of them; variables already set are kept.

    Measured on 2 cores (`bench_service.py`, 10 connections, student-only stream): one worker
    with spinning threads answered 318 texts/s at p99 156 ms, without 304 at p99 53 ms; two
    workers with ONNX Runtime's default 302 texts/s at p99 145 ms, with one thread each 382 at
    p99 52 ms. Spinning pool threads take the CPU the event loop needs between micro-batches.

    Example:
        >>> serving_student_defaults(processes=2)  # doctest: +SKIP
    """
    cores = os.cpu_count() or 1
    os.environ.setdefault(ORT_THREADS_ENV, str(max(1, cores // max(1, processes))))
    os.environ.setdefault(ORT_SPIN_ENV, "0")


class OnnxEncoder:
    """Sentence embeddings from an exported body on ONNX Runtime, tokenized with ``tokenizers``.

    ``encode`` sorts a batch by length and runs it in chunks, so padding stays short.
    """

    def __init__(
        self,
        onnx_path: Path,
        body_dir: Path,
        *,
        threads: int | None = None,
        chunk_size: int = 16,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tok_path = body_dir / "tokenizer.json"
        if not tok_path.exists():
            raise ModelLoadError(f"{tok_path} is missing: ONNX inference needs the fast tokenizer")
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.tokenizer.no_padding()
        self.max_length = _max_seq_length(body_dir)
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = _pad_id(body_dir, self.tokenizer)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or _ort_env(ORT_THREADS_ENV, min_value=1)
        if threads:
            opts.intra_op_num_threads = int(threads)
        spin = _ort_env(ORT_SPIN_ENV, min_value=0, max_value=1)
        if spin is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", str(spin))
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.chunk_size = chunk_size
        self._tok_lock = threading.Lock()

    def _run(self, encodings: Sequence[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (out,) = self.session.run(["sentence_embedding"], feeds)
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One embedding row per text, in order."""
        with self._tok_lock:
            if len(texts) == 1:
                encodings = [self.tokenizer.encode(texts[0])]
            else:
                encodings = self.tokenizer.encode_batch(list(texts))
        if len(encodings) == 1:
            return self._run(encodings)
        out: np.ndarray | None = None
        for idx in padding_chunks([len(e.ids) for e in encodings], self.chunk_size):
            vecs = self._run([encodings[i] for i in idx])
            if out is None:
                out = np.empty((len(encodings), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        assert out is not None
        return out


#: A chunk's padded tokens may be at most this many times its real tokens.
PAD_SLACK = 1.25


def padding_chunks(
    lengths: Sequence[int], max_size: int, slack: float = PAD_SLACK
) -> list[list[int]]:
    """Indices of ``lengths`` in chunks of at most ``max_size``, sorted by length, each cut
    where padding to its longest text would cost more than ``slack`` times its real tokens.

    A chunk is padded to its longest text, so a short text batched with a long one pays for
    the long one. Measured on 2 cores (int8 MiniLM-L6, sst2 texts, one ONNX Runtime thread):
    batches of 16 went from 4.2 to 2.9 ms of CPU per text, batches of 8 from 4.0 to 3.1; one
    text is one chunk either way.

    Example:
        >>> padding_chunks([30, 5, 6, 31], max_size=16)
        [[1, 2], [0, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    chunk: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]
        if chunk and (len(chunk) >= max_size or (len(chunk) + 1) * n > slack * (tokens + n)):
            chunks.append(chunk)
            chunk, tokens = [], 0
        chunk.append(i)
        tokens += n
    if chunk:
        chunks.append(chunk)
    return chunks


class TorchEncoder:
    """Sentence embeddings from the body on torch (sentence-transformers)."""

    def __init__(self, body_dir: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError(
                "torch inference needs sentence-transformers: pip install 'llmclf[distill]'"
            ) from exc
        try:
            self.model = SentenceTransformer(str(body_dir), device="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"{body_dir}: sentence-transformers cannot load it ({exc})"
            ) from None
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vecs = self.model.encode(
                list(texts), batch_size=64, show_progress_bar=False, convert_to_numpy=True
            )
        return np.asarray(vecs, dtype=np.float32)


def _max_seq_length(body_dir: Path) -> int:
    cfg = body_dir / "sentence_bert_config.json"
    if cfg.exists():
        value = _read_json(cfg).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    tcfg = body_dir / "tokenizer_config.json"
    if tcfg.exists():
        value = _read_json(tcfg).get("model_max_length")
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return 512


def _pad_id(body_dir: Path, tokenizer: Any) -> int:
    tcfg = body_dir / "tokenizer_config.json"
    pad = _read_json(tcfg).get("pad_token") if tcfg.exists() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    for token in (pad, "[PAD]", "<pad>"):
        if isinstance(token, str):
            tid = tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
    return 0


class SetFitBackend(Backend):
    """Serves a distilled student directory; thread-safe.

    ``runtime``: ``auto`` (int8 ONNX, else fp32 ONNX, else torch), ``int8``, ``onnx`` or
    ``torch``. ``escalation_threshold`` is the router's default cascade threshold (from
    ``router.json``), ``card`` the model card's data.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(batches=True)

    def __init__(
        self,
        model_dir: str | Path,
        *,
        task: Task | None = None,
        runtime: Runtime = "auto",
        threads: int | None = None,
        name: str | None = None,
        calibration: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or f"setfit:{model_dir}"
        if not self.model_dir.is_dir():
            raise ModelLoadError(
                f"model directory {self.model_dir} does not exist "
                "(write one with `llmclf distill --out DIR`)",
                backend=self.name,
            )
        refuse_pickles(self.model_dir)
        labels = _read_json(self.model_dir / "labels.json")
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ModelLoadError(
                f"{self.model_dir / 'labels.json'}: expected a list of label names"
            )
        self.labels: tuple[str, ...] = tuple(labels)
        self.head = Head.from_json(
            _read_json(self.model_dir / "head.json"),
            path=self.model_dir / "head.json",
            n_labels=len(self.labels),
        )
        self.task = self._resolve_task(task)
        if self.task.is_multilabel != (self.head.kind == "sigmoid"):
            raise ModelLoadError(
                f"{self.model_dir}: the head is {self.head.kind!r} but task "
                f"{self.task.name!r} is {self.task.kind}"
            )
        router_file = self.model_dir / "router.json"
        self.router_config: dict[str, Any] = _read_json(router_file) if router_file.exists() else {}
        esc = self.router_config.get("escalation_threshold")
        self.escalation_threshold: float | dict[str, float] | None = (
            float(esc) if esc is not None else None
        )
        card_file = self.model_dir / "card.json"
        self.card: dict[str, Any] = _read_json(card_file) if card_file.exists() else {}
        body_dir = self.model_dir / "body"
        self.runtime, self._encoder = self._open_encoder(runtime, body_dir, threads)
        # the task's label order, as indices into the head's rows
        self._order = [self.labels.index(n) for n in self.task.label_names]
        self.calibration = self._load_calibration(calibration)
        if (
            self.calibration is not None
            and isinstance(self.escalation_threshold, float)
            and self.router_config.get("scores") != "calibrated"
        ):
            self.escalation_threshold = self._calibrated_threshold(self.escalation_threshold)

    def _calibrated_threshold(self, raw: float) -> dict[str, float]:
        """``router.json``'s threshold was chosen on raw scores: the same cut, per label, on
        the calibrated scores the backend now answers with (a raw top score of ``raw`` for a
        label, the rest shared by the other labels)."""
        assert self.calibration is not None
        names = self.task.label_names
        n = len(names)
        out: dict[str, float] = {}
        for i, name in enumerate(names):
            if self.task.is_multilabel:
                row = np.full((1, n), 0.5)
                row[0, i] = raw
            else:
                row = np.full((1, n), (1.0 - raw) / (n - 1))
                row[0, i] = raw
            out[name] = round(float(self.calibration.apply_matrix(row)[0, i]), 6)
        return out

    def _load_calibration(self, choice: str) -> Calibration | None:
        """``auto``: the model directory's ``calibration.json`` when present; ``off``; or a path."""
        if choice == "off":
            return None
        path = self.model_dir / STUDENT_FILE if choice == "auto" else Path(choice)
        if choice == "auto" and not path.exists():
            return None
        cal = load_calibration(path)
        # a student has no prompt; the labels must be the task's
        why = cal.mismatch(None, cal.prompt_id, self.task, check_task=False)
        if why is not None or cal.score_source != "model":
            warnings.warn(
                f"calibrator {path} is not applied: {why or 'it is not for model scores'}; "
                "answering uncalibrated",
                CalibrationWarning,
                stacklevel=3,
            )
            return None
        return cal

    @classmethod
    def load(cls, model_dir: str | Path, task: Task | None = None, **options: Any) -> SetFitBackend:
        """Load from a directory; ``options`` come from a spec's query (strings are converted).

        Example:
            >>> SetFitBackend.load("models/sst2", runtime="torch")          # doctest: +SKIP
        """
        known = {"runtime", "threads", "name", "calibration"}
        unknown = set(options) - known
        if unknown:
            raise ModelLoadError(
                f"unknown setfit option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        runtime = str(options.get("runtime", "auto"))
        if runtime not in ("auto", "int8", "onnx", "torch"):
            raise ModelLoadError(f"runtime must be auto, int8, onnx or torch; got {runtime!r}")
        threads = options.get("threads")
        return cls(
            model_dir,
            task=task,
            runtime=runtime,  # type: ignore[arg-type]
            threads=int(threads) if threads not in (None, "") else None,
            name=options.get("name"),
            calibration=str(options.get("calibration", "auto")),
        )

    def _resolve_task(self, task: Task | None) -> Task:
        task_file = self.model_dir / "task.json"
        saved: Task | None = None
        if task_file.exists():
            try:
                saved = Task.model_validate(_read_json(task_file))
            except ValueError as exc:
                raise ModelLoadError(f"{task_file}: not a valid task ({exc})") from None
        if task is None:
            if saved is None:
                raise ModelLoadError(f"{task_file} is missing and no task was given")
            return saved
        missing = [n for n in task.label_names if n not in self.labels]
        extra = [n for n in self.labels if n not in task.label_names]
        if missing or extra:
            raise ModelLoadError(
                f"{self.model_dir} was trained for labels {list(self.labels)}, but task "
                f"{task.name!r} has {list(task.label_names)} (missing: {missing}, extra: {extra})"
            )
        return task

    def _open_encoder(
        self, runtime: Runtime, body_dir: Path, threads: int | None
    ) -> tuple[str, OnnxEncoder | TorchEncoder]:
        int8, fp32 = self.model_dir / ONNX_INT8, self.model_dir / ONNX_FP32
        choice: str
        if runtime == "auto":
            choice = "int8" if int8.exists() else "onnx" if fp32.exists() else "torch"
        else:
            choice = runtime
        if choice in ("int8", "onnx"):
            path = int8 if choice == "int8" else fp32
            if not path.exists():
                raise ModelLoadError(f"{path} is missing (runtime={runtime!r})")
            if not (body_dir / "tokenizer.json").exists():
                raise ModelLoadError(f"{body_dir / 'tokenizer.json'} is missing")
            try:
                return choice, OnnxEncoder(path, body_dir, threads=threads)
            except ImportError as exc:
                raise ModelLoadError(
                    "ONNX inference needs onnxruntime and tokenizers: pip install 'llmclf[distill]'"
                ) from exc
        if not (body_dir / "model.safetensors").exists():
            raise ModelLoadError(
                f"{body_dir / 'model.safetensors'} is missing and there is no ONNX export"
            )
        return "torch", TorchEncoder(body_dir)

    # -- inference ------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The body's sentence embeddings, one row per text."""
        return self._encoder.encode(texts)

    def score_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Label scores in the task's label order, shape (len(texts), n_labels)."""
        if not texts:
            return np.zeros((0, len(self.labels)))
        return self.head.scores(self.embed(texts))[:, self._order]

    @property
    def threshold(self) -> float:
        """The student's decision threshold (from ``head.json``; see `Head`)."""
        return self.head.threshold

    def _decision_threshold(self, calibrated: bool) -> float:
        if calibrated and self.calibration is not None:
            return self.calibration.threshold
        return self.threshold

    def _shown_threshold(self, calibrated: bool) -> float | None:
        t = self._decision_threshold(calibrated)
        return None if self.task.kind == "multiclass" or t == 0.5 else t

    def _decide(self, scores: dict[str, float], calibrated: bool) -> tuple[str, ...]:
        return decide(self.task, scores, threshold=self._decision_threshold(calibrated)).labels

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        return self.predict_and_embed(texts)[0]

    def predict_and_embed(self, texts: Sequence[str]) -> tuple[list[Prediction], np.ndarray]:
        """The predictions for ``texts`` and the body's embeddings they came from (one pass;
        ``llmclf review suggest`` needs both).

        Example:
            >>> preds, emb = SetFitBackend.load("models/sst2").predict_and_embed(["fine"])
            ... # doctest: +SKIP
        """
        start = time.perf_counter()
        if texts:
            emb = self.embed(texts)
            matrix = self.head.scores(emb)[:, self._order]
        else:
            emb = np.zeros((0, 0))
            matrix = np.zeros((0, len(self.labels)))
        # every text of a batch waited for the whole batch
        elapsed_ms = (time.perf_counter() - start) * 1000
        out = []
        names = self.task.label_names
        cal = self.calibration
        calibrated = cal.apply_matrix(matrix) if cal is not None else None
        source = "model" if cal is None else f"model+{cal.method}"
        for i, row in enumerate(matrix):
            raw = {n: round(float(v), 6) for n, v in zip(names, row, strict=True)}
            scores = raw
            if calibrated is not None:
                scores = {n: round(float(v), 6) for n, v in zip(names, calibrated[i], strict=True)}
            labels = self._decide(scores, calibrated is not None)
            out.append(
                Prediction(
                    labels=labels,
                    scores=scores,
                    score_source=source,
                    backend=self.name,
                    route=(self.name,),
                    latency_ms=elapsed_ms,
                    calibrated=calibrated is not None,
                    raw_scores=raw if calibrated is not None else None,
                    threshold=self._shown_threshold(calibrated is not None),
                )
            )
        return out, emb
