"""``llmclf calibrate``: fit a backend's calibrator on labelled cases, report it on others.

Example:
    $ llmclf calibrate --eval-set sst2 --backend llm:local --method temperature
    $ llmclf calibrate -e sst2 -b llm:local --prompt zero_shot --method contextual
    $ llmclf calibrate -e sst2 -b setfit:models/sst2 --method platt --split pool

The calibrator is saved where the backend finds it (``$LLMCLF_HOME/calibration/`` for an LLM,
``calibration.json`` in a student's directory) and applied from then on; ``--no-save`` only
measures. Exit status 2 on a usage or config error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmclf.calibrate import calibrate
from llmclf.calibration import METHODS
from llmclf.cli.common import BackendOpt, DbOpt, EvalSetOpt, ProgressOpt, use_db
from llmclf.datasets import load_eval_set
from llmclf.errors import ConfigError
from llmclf.evaluate import default_pool
from llmclf.store import open_store


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def calibrate_command(
    eval_set: EvalSetOpt = ...,  # type: ignore[assignment]
    backend: BackendOpt = "llm:local",
    method: Annotated[
        str, typer.Option("--method", "-m", help=f"One of {', '.join(METHODS)}.")
    ] = "temperature",
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="Where the fitting cases come from: 'half' (hash half 0 of the eval set; the "
            "report is on half 1), 'other-half' (the other way round) or 'pool' (the set's "
            "pool.jsonl; the report is on all cases).",
        ),
    ] = "half",
    calibration_file: Annotated[
        Path | None,
        typer.Option("--calibration-file", help="Labelled cases to fit on (report: all cases)."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt template; llm: only.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Use only the first N cases.")
    ] = None,
    save: Annotated[
        bool,
        typer.Option("--save/--no-save", help="Save the calibrator (default) or only measure."),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    db: DbOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Fit a calibrator for a backend and print accuracy, ECE and Brier before and after, on
    cases it was not fitted on."""
    use_db(db)
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    es = load_eval_set(eval_set)
    pool = default_pool(es, prompt) if prompt is not None and backend.startswith("llm:") else None
    show = sys.stderr.isatty() if progress is None else progress
    rep = calibrate(
        es,
        backend,
        method=method,  # type: ignore[arg-type]
        split=split,
        calibration_file=calibration_file,
        prompt=prompt,
        few_shot_pool=pool,
        limit=limit,
        save=save,
        store=open_store(),
        progress=show and not as_json,
    )
    cal = rep.calibration
    if as_json:
        out = {
            "method": cal.method,
            "backend": cal.backend,
            "prompt_id": cal.prompt_id,
            "task": cal.task,
            "fitted_on": cal.fitted_on,
            "report_cases": rep.report_cases,
            "errors": rep.errors,
            "before": rep.before,
            "after": rep.after,
            "params": cal.params,
            "path": None if rep.path is None else str(rep.path),
            "notes": rep.notes,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    console = Console()
    console.print(
        f"{escape(cal.backend)} {escape(cal.prompt_id or '')} on {escape(cal.task)}: "
        f"{cal.method} fitted on {rep.fit_cases} cases ({escape(str(cal.fitted_on['source']))}), "
        f"measured on {rep.report_cases} other cases",
        highlight=False,
    )
    table = Table("metric", "before", "after")
    for key in ("accuracy", "ece", "brier"):
        table.add_row(key, _fmt(rep.before[key]), _fmt(rep.after[key]))
    console.print(table)
    for note in rep.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if rep.errors:
        console.print(f"{rep.errors} texts failed and were left out", highlight=False)
    if rep.path is not None:
        console.print(f"saved: {escape(str(rep.path))}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
