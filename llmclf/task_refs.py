"""The one way a task is named: a ``task.yaml`` path, an eval-set directory, or an eval-set name.

A name (no ``/``, no ``.yaml``) is looked up, in order, under ``<base_dir>/eval_sets/``,
``./eval_sets/`` and the eval sets shipped with llmclf. A path is taken relative to
``base_dir`` (the directory of the file that names it, such as a router config).

Example:
    >>> find_task_file("sst2").name
    'task.yaml'
    >>> load_task("sst2").name
    'sst2'
"""

from __future__ import annotations

import os
from pathlib import Path

from llmclf.errors import TaskFileError
from llmclf.types import Task

__all__ = ["SHIPPED_EVAL_SETS", "find_task_file", "is_name", "load_task", "task_candidates"]

#: The eval sets shipped with the repository.
SHIPPED_EVAL_SETS = Path(__file__).resolve().parent.parent / "eval_sets"


def is_name(ref: str) -> bool:
    """True when ``ref`` reads as an eval-set name rather than a path.

    Example:
        >>> is_name("sst2"), is_name("./sst2"), is_name("my/task.yaml")
        (True, False, False)
    """
    return not (
        "/" in ref or os.sep in ref or ref.startswith(".") or ref.endswith((".yaml", ".yml"))
    )


def task_candidates(ref: str | os.PathLike[str], base_dir: str | Path = ".") -> list[Path]:
    """Where ``ref`` may live, in the order they are tried."""
    ref_str = os.fspath(ref)
    p = Path(ref_str).expanduser()
    base = Path(base_dir)
    candidates = [p] if p.is_absolute() else [base / p]
    if not p.is_absolute() and is_name(ref_str):
        candidates += [
            base / "eval_sets" / ref_str,
            Path.cwd() / "eval_sets" / ref_str,
            SHIPPED_EVAL_SETS / ref_str,
        ]
    return list(dict.fromkeys(candidates))


def find_task_file(ref: str | os.PathLike[str], base_dir: str | Path = ".") -> Path:
    """The ``task.yaml`` that ``ref`` names; `TaskFileError` lists the places tried.

    Example:
        >>> find_task_file("eval_sets/sst2").as_posix()
        'eval_sets/sst2/task.yaml'
    """
    candidates = task_candidates(ref, base_dir)
    for c in candidates:
        if c.is_file():
            return c
        if c.is_dir() and (c / "task.yaml").is_file():
            return c / "task.yaml"
    raise TaskFileError(
        "task not found (give a task.yaml path or an eval-set name; looked at "
        + ", ".join(str(c) for c in candidates)
        + ")",
        path=os.fspath(ref),
    )


def load_task(ref: str | os.PathLike[str] | Task, base_dir: str | Path = ".") -> Task:
    """A `Task` from a `Task`, a path or an eval-set name.

    Example:
        >>> load_task("eval_sets/sst2/task.yaml").kind
        'binary'
    """
    if isinstance(ref, Task):
        return ref
    return Task.from_yaml(find_task_file(ref, base_dir))
