"""``llmclf label``: teacher labels for unlabelled texts, online, by Batch API, or on Ray.

Example:
    $ llmclf label --task sst2 --teacher llm:openai/gpt-4o-mini --input texts.jsonl \\
        --out labels.parquet --engine batch --wait
    {"job": "tj-…", "engine": "batch", "labelled": 2000, "missing": 0, "complete": true, …}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmclf.cli.common import DbOpt, print_json_line, resolve_task, use_db


def label_command(
    task: Annotated[
        str, typer.Option("--task", "-t", help="task.yaml path or eval-set name.")
    ] = ...,  # type: ignore[assignment]
    teacher: Annotated[
        str, typer.Option("--teacher", "-b", help="Teacher backend spec, e.g. llm:local.")
    ] = "llm:local",
    input_: Annotated[
        str,
        typer.Option(
            "--input", "-i", help="Unlabelled texts: JSONL/CSV/TSV/Parquet/text file, '-' = stdin."
        ),
    ] = ...,  # type: ignore[assignment]
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Labels to write: .jsonl, .parquet, or a datasets directory."
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="async (online calls from this process), batch (the provider's Batch API: "
            "half price, results within a day) or ray (Ray Data actors on a cluster)."
        ),
    ] = "async",
    prompt: Annotated[str | None, typer.Option(help="Prompt template (name or name.vN).")] = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    limit: Annotated[int | None, typer.Option(help="Label only the first N texts.")] = None,
    few_shot_pool: Annotated[
        Path | None, typer.Option(help="Labelled pool for nearest-neighbour few-shot examples.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(help="Requests in flight (per actor with --engine ray).")
    ] = 4,
    status: Annotated[
        bool,
        typer.Option("--status", help="batch: poll and download finished batches; submit nothing."),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="batch: block until every batch is done.")
    ] = False,
    poll_s: Annotated[float, typer.Option(help="batch: seconds between polls.")] = 30.0,
    max_requests: Annotated[
        int, typer.Option(help="batch: requests per batch file (provider limit 50,000).")
    ] = 50_000,
    max_online_retries: Annotated[
        int, typer.Option(help="batch: invalid or failed result lines retried online.")
    ] = 100,
    ray_address: Annotated[
        str | None,
        typer.Option(help="ray: cluster address (ray://host:10001, auto); default a local Ray."),
    ] = None,
    actors: Annotated[int, typer.Option(help="ray: labelling actors.")] = 2,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    db: DbOpt = None,
) -> None:
    """Label unlabelled texts with a teacher; resumable with any engine (a re-run labels only
    what is missing). Prints a JSON summary."""
    from llmclf.labelling import label
    from llmclf.labelling.batch import BatchOptions

    use_db(db)
    batch_options = None
    if engine == "batch":
        batch_options = BatchOptions(
            max_requests=max_requests,
            poll_s=poll_s,
            wait=wait,
            status_only=status,
            max_online_retries=max_online_retries,
            progress=progress,
        )
    elif status or wait:
        raise typer.BadParameter("--status and --wait go with --engine batch")
    result = label(
        resolve_task(task),
        teacher,
        input_,
        out,
        engine=engine,
        prompt=prompt,
        text_field=text_field,
        limit=limit,
        few_shot_pool=few_shot_pool,
        concurrency=concurrency,
        progress=progress,
        batch_options=batch_options,
        ray_address=ray_address,
        actors=actors,
    )
    print_json_line(result.summary())
    if result.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("label")(label_command)
