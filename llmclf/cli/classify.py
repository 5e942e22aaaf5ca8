"""``llmclf classify``: label texts given as arguments, in a file, or on stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmclf.classifier import Classifier
from llmclf.cli.common import print_json_line, resolve_task
from llmclf.unlabeled import iter_texts


def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    task: Annotated[str, typer.Option("--task", "-t", help="task.yaml path or eval-set name.")] = (
        ...  # type: ignore[assignment]
    ),
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend spec, e.g. llm:local.")
    ] = "llm:local",
    input: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="JSONL/CSV/Parquet/text file; '-' reads stdin."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt template name or path.")
    ] = None,
    text_field: Annotated[str, typer.Option(help="Field/column holding the text.")] = "text",
    batch_size: Annotated[int, typer.Option(help="Texts sent to the backend at a time.")] = 32,
) -> None:
    """Classify texts; prints one JSON line per input, in input order.

    With no TEXTS and no --input, texts are read from stdin (one per line, or JSONL).
    """
    t = resolve_task(task)
    options: dict[str, Any] = {"prompt": prompt} if prompt else {}
    if texts:
        items = list(texts)
        ids: list[str | None] = [None] * len(items)
    else:
        source = str(input) if input is not None else "-"
        rows = list(iter_texts(source, text_field=text_field))
        items = [r.text for r in rows]
        ids = [r.id for r in rows]
    with Classifier(t, backend=backend, batch_size=batch_size, **options) as clf:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            for offset, pred in enumerate(clf.predict_many(chunk)):
                out = pred.to_json_dict()
                if ids[start + offset] is not None:
                    out = {"id": ids[start + offset], **out}
                print_json_line(out)


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)
