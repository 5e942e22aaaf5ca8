"""The student's sentence body: loading it (offline) and encoding texts with it.

Example:
    >>> st, source = load_body(None)                                     # doctest: +SKIP
    >>> encode(st, ["a joy"]).shape, source
    ((1, 384), 'all-MiniLM-L6-v2')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmclf.errors import ConfigError

__all__ = ["encode", "load_body"]


def encode(body: Any, texts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings of ``texts`` (float64, one row a text)."""
    vecs = body.encode(list(texts), batch_size=64, show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float64)


def load_body(body: str | None) -> tuple[Any, str]:
    """The body (a local path or name; default MiniLM from its package) and how to name it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from llmclf.embeddings import default_body_path

    ref = body or default_body_path()
    try:
        return SentenceTransformer(ref, device="cpu"), (body or "all-MiniLM-L6-v2")
    except Exception as exc:
        raise ConfigError(f"cannot load the sentence body {ref!r}: {exc}") from None
