"""Helpers shared by CLI commands: loading a task by path or eval-set name, printing JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from llmclf.task_refs import load_task
from llmclf.types import Task


def resolve_task(ref: str) -> Task:
    """A task from a YAML path, an eval-set directory, or an eval-set name (`llmclf.task_refs`)."""
    return load_task(ref)


def print_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
