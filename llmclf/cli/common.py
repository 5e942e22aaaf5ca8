"""Helpers shared by CLI commands: loading a task by path or eval-set name, printing JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from llmclf.errors import TaskFileError
from llmclf.types import Task


def resolve_task(ref: str) -> Task:
    """A task from a YAML path, an eval-set directory, or an eval-set name under ``eval_sets/``."""
    p = Path(ref)
    if p.is_dir():
        p = p / "task.yaml"
    elif not p.exists() and not ref.endswith((".yaml", ".yml")):
        candidate = Path("eval_sets") / ref / "task.yaml"
        if candidate.exists():
            p = candidate
        else:
            shipped = Path(__file__).resolve().parents[2] / "eval_sets" / ref / "task.yaml"
            if shipped.exists():
                p = shipped
    if not p.exists():
        raise TaskFileError("task not found (give a task.yaml path or an eval-set name)", path=ref)
    return Task.from_yaml(p)


def print_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
