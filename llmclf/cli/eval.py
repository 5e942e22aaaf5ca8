"""``llmclf eval``: run a backend over an eval set, store the run, and gate on regressions.

Example:
    $ llmclf eval --eval-set sst2 --backend llm:local --prompt zero_shot.v1 --limit 100
    $ llmclf eval -e sst2 -b llm:local --prompt few_shot --baseline last --max-drop 0.01

Exit status: 0 when the run finished (and the gate, if any, passed); 1 when the regression gate
failed (each failing metric and its drop is printed); 2 on a usage or config error; 130 when
interrupted (run the same command again to resume).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llmclf.cli.common import BackendOpt, DbOpt, EvalSetOpt, ProgressOpt, use_db
from llmclf.cli.runs import print_diff, print_run
from llmclf.datasets import load_eval_set
from llmclf.errors import ConfigError
from llmclf.evaluate import (
    EvalRun,
    compare_runs,
    default_pool,
    evaluate,
    latest_run_id,
    load_run,
    regression_check,
)
from llmclf.store import open_store


def eval_command(
    eval_set: EvalSetOpt = ...,  # type: ignore[assignment]
    backend: BackendOpt = "llm:local",
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Prompt template (name, name.vN or path); llm: only."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Evaluate only the first N cases.")
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            help="Labelled few-shot pool (default for a few-shot --prompt: the set's pool.jsonl).",
        ),
    ] = None,
    no_pool: Annotated[
        bool, typer.Option("--no-pool", help="Use no few-shot pool, even for a few-shot prompt.")
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Run id (or prefix) to gate against, or 'last': the latest finished run on "
            "this eval set.",
        ),
    ] = None,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="Largest allowed drop of a gated metric.")
    ] = 0.01,
    gate_metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--gate-metric",
            help="Metric the gate checks (repeatable; default accuracy and macro_f1). Also "
            "ece, error_rate, auc_roc, per_label.<label>.f1 ...",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Requests in flight.")
    ] = 4,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the HTML report here.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    progress: ProgressOpt = None,
    resume: Annotated[
        bool,
        typer.Option("--resume/--no-resume", help="Continue an interrupted run of the same eval."),
    ] = True,
    db: DbOpt = None,
) -> None:
    """Evaluate a backend (and prompt) on an eval set; prints metrics and the run id.

    An interrupted eval is resumed by running the same command again: finished cases are not
    sent to the model twice. With --baseline the command exits 1 when a gated metric dropped by
    more than --max-drop.
    """
    use_db(db)
    if pool is not None and no_pool:
        raise ConfigError("give --pool or --no-pool, not both")
    es = load_eval_set(eval_set)
    store = open_store()

    base_run: EvalRun | None = None
    base_note = None
    if baseline is not None:
        if baseline == "last":
            found = latest_run_id(es.name, store)
            if found is None:
                base_note = (
                    f"no finished run on eval set {es.name!r} yet: nothing to gate against; "
                    "this run becomes the baseline"
                )
            else:
                base_run = load_run(found, store)
        else:
            base_run = load_run(baseline, store)
        if base_run is not None and base_run.eval_set != es.name:
            raise ConfigError(
                f"baseline run {base_run.run_id} is on eval set {base_run.eval_set!r}, "
                f"not {es.name!r}"
            )

    few_shot_pool: Path | None = None
    if pool is not None:
        few_shot_pool = pool
    elif not no_pool and prompt is not None and backend.startswith("llm:"):
        # an explicitly chosen few-shot prompt gets the set's pool; without --prompt the task
        # is measured as configured, exactly as Classifier and the service run it
        few_shot_pool = default_pool(es, prompt)

    show_progress = sys.stderr.isatty() if progress is None else progress
    try:
        run = evaluate(
            es,
            backend,
            prompt=prompt,
            limit=limit,
            store=store,
            concurrency=concurrency,
            progress=show_progress and not as_json,
            few_shot_pool=few_shot_pool,
            resume=resume,
        )
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the finished cases are stored; run the same command again to resume",
            err=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # Every finished case is already committed. Leave now: a normal exit would wait for the
        # requests still in flight (and their retries) in the worker threads.
        os._exit(130)

    names = tuple(gate_metrics) if gate_metrics else ("accuracy", "macro_f1")
    failures = regression_check(base_run.metrics, run.metrics, max_drop, names) if base_run else []
    diff = compare_runs(base_run, run) if base_run is not None else None
    if html is not None:
        from llmclf.report import write_report

        write_report(run, html)

    if as_json:
        out: dict[str, Any] = {
            "run_id": run.run_id,
            "eval_set": run.eval_set,
            "backend": run.backend,
            "prompt_id": run.prompt_id,
            "resumed_cases": run.resumed_cases,
            "metrics": run.metrics,
            "baseline": base_run.run_id if base_run else None,
            "gate": None
            if base_run is None
            else {
                "passed": not failures,
                "max_drop": max_drop,
                "metrics": list(names),
                "failures": [f.message for f in failures],
            },
        }
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        console = Console()
        if run.resumed_cases:
            console.print(
                f"resumed run {run.run_id}: {run.resumed_cases} cases were already done",
                highlight=False,
            )
        print_run(console, run)
        if diff is not None:
            print_diff(console, diff, max_cases=10)
        console.print(f"run id: [bold]{escape(run.run_id)}[/bold]")
        if html is not None:
            console.print(f"report: {escape(str(html))}")
    if base_note:
        typer.echo(f"note: {base_note}", err=True)
    if failures:
        assert base_run is not None
        typer.echo(
            f"regression gate FAILED against baseline {base_run.run_id} (max drop {max_drop}):",
            err=True,
        )
        for f in failures:
            typer.echo(f"  {f.message}", err=True)
        raise typer.Exit(1)
    if base_run is not None and not as_json:
        typer.echo(
            f"regression gate passed against baseline {base_run.run_id} "
            f"({', '.join(names)}; max drop {max_drop})"
        )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
