"""Where llmclf keeps its state: one directory, ``$LLMCLF_HOME`` or ``~/.llmclf``.

Example:
    >>> import os; os.environ["LLMCLF_HOME"] = "/tmp/llmclf-doc"
    >>> str(home())
    '/tmp/llmclf-doc'
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.llmclf")


def home() -> Path:
    """The state directory (created on first use): cache, run store, review queue, local server."""
    p = Path(os.environ.get("LLMCLF_HOME") or DEFAULT_HOME).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def store_path() -> Path:
    """The SQLite file holding the response cache, runs, teacher labels and review queue."""
    return home() / "llmclf.db"


def local_server_dir() -> Path:
    """Files of the embedded llama.cpp server: state, lock and log."""
    p = home() / "local-llm"
    p.mkdir(parents=True, exist_ok=True)
    return p
