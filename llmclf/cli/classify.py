"""``llmclf classify``: label texts given as arguments, in a file, or on stdin."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer

from llmclf.classifier import Classifier
from llmclf.cli.common import BackendOpt, DbOpt, print_json_line, resolve_task, use_db
from llmclf.unlabeled import TextItem, iter_texts


def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    task: Annotated[str, typer.Option("--task", "-t", help="task.yaml path or eval-set name.")] = (
        ...  # type: ignore[assignment]
    ),
    backend: BackendOpt = "llm:local",
    input: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="JSONL/CSV/TSV/Parquet/text file; '-' reads stdin."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt template name or path.")
    ] = None,
    text_field: Annotated[str, typer.Option(help="Field/column holding the text.")] = "text",
    batch_size: Annotated[int, typer.Option(help="Texts sent to the backend at a time.")] = 32,
    db: DbOpt = None,
) -> None:
    """Classify texts; prints one JSON line per input, in input order.

    With no TEXTS and no --input, texts are read from stdin (one per line, or JSONL).
    """
    use_db(db)
    t = resolve_task(task)
    options: dict[str, Any] = {"prompt": prompt} if prompt else {}
    items: Iterable[TextItem]
    if texts:
        items = (TextItem(text=text, line=i) for i, text in enumerate(texts, 1))
    else:
        # streamed: a file of millions of rows is read a batch at a time
        items = iter_texts(str(input) if input is not None else "-", text_field=text_field)
    with Classifier(t, backend=backend, batch_size=batch_size, **options) as clf:
        it = iter(items)
        while chunk := list(islice(it, max(1, batch_size))):
            preds = clf.predict_many([item.text for item in chunk])
            for item, pred in zip(chunk, preds, strict=True):
                out = pred.to_json_dict()
                if item.id is not None:
                    out = {"id": item.id, **out}
                print_json_line(out)


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)
