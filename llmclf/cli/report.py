"""``llmclf report RUN --html out.html``: one self-contained HTML page for a stored eval run.

Example:
    $ llmclf report 20250101-1200 --html report.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmclf.cli.common import DbOpt, use_db


def report(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix), or 'last'.")],
    html: Annotated[
        Path, typer.Option("--html", "-o", help="Where to write the HTML page.")
    ] = Path("report.html"),
    eval_set: Annotated[
        str | None, typer.Option("--eval-set", "-e", help="With RUN 'last': the eval set.")
    ] = None,
    max_errors: Annotated[int, typer.Option(help="Most-confident errors to list.")] = 25,
    db: DbOpt = None,
) -> None:
    """Write a static HTML report (no network needed to view it) for a stored eval run."""
    use_db(db)
    from llmclf.errors import ConfigError
    from llmclf.evaluate import latest_run_id
    from llmclf.report import write_report

    if run == "last":
        if not eval_set:
            raise ConfigError("`llmclf report last` needs --eval-set")
        found = latest_run_id(eval_set)
        if found is None:
            raise ConfigError(f"no finished eval run on {eval_set!r}")
        run = found
    out = write_report(run, html, max_errors=max_errors)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app`` (once, whether main.py or `llmclf.cli.runs` registers it)."""
    if any(c.name == "report" for c in app.registered_commands):
        return
    app.command("report")(report)
