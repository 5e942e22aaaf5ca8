"""Helpers shared by CLI commands: loading a task by path or eval-set name, printing JSON, and
the options several commands take with one meaning (``--db``, ``--eval-set``, ``--backend``,
``--progress``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmclf.storage.url import ENV_VAR
from llmclf.store import open_store
from llmclf.task_refs import load_task
from llmclf.types import Task


def resolve_task(ref: str) -> Task:
    """A task from a YAML path, an eval-set directory, or an eval-set name (`llmclf.task_refs`)."""
    return load_task(ref)


def print_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


#: ``--db``: the store of a command (what ``$LLMCLF_DATABASE_URL`` also sets).
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=ENV_VAR,
        show_envvar=False,
        help="Store URL: sqlite:///PATH (default $LLMCLF_HOME/llmclf.db) or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB; default $LLMCLF_DATABASE_URL.",
    ),
]


def use_db(db: str | Path | None) -> None:
    """Make ``db`` (a store URL or SQLite path) the store of this command and of the processes
    it starts; a bad URL or an unreachable database fails here, at start-up, naming the URL
    without its password."""
    if not db:
        return
    os.environ[ENV_VAR] = str(db)
    open_store(str(db))


#: ``--eval-set``: what a command evaluates or calibrates on (required).
EvalSetOpt = Annotated[
    str, typer.Option("--eval-set", "-e", help="Eval-set name, directory or task.yaml.")
]

#: ``--backend``: what answers (default: the embedded LLM).
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Backend spec, e.g. llm:local.")]

#: ``--progress/--no-progress``: a progress bar; ``None`` shows it on a terminal only.
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal)."),
]
