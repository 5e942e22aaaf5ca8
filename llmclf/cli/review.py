"""``llmclf review``: the human review queue the router fills with low-confidence answers.

Example:
    $ llmclf review list --task sst2
    $ llmclf review label 7 positive
    $ llmclf review export --task sst2 --out reviewed.jsonl   # gold for the next distill
    $ llmclf review suggest --task sst2 --unlabeled texts.jsonl --student models/sst2 --k 100
    $ llmclf review ui --port 8001                             # the review page alone
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from llmclf.cli.common import use_db
from llmclf.errors import ConfigError
from llmclf.storage.url import ENV_VAR
from llmclf.store import Store, open_store

review_app = typer.Typer(
    help="Review low-confidence predictions: list them, label them, export them as gold.",
    no_args_is_help=True,
)

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--store",
        envvar=ENV_VAR,
        show_envvar=False,
        help="Store URL (sqlite:///PATH, postgresql://...) or SQLite path; default "
        "$LLMCLF_DATABASE_URL, else $LLMCLF_HOME/llmclf.db.",
    ),
]


def _store(db: str | None) -> Store:
    use_db(db)
    return open_store()


def _task_info(row: dict[str, Any]) -> dict[str, Any]:
    """The task's kind and labels as the router recorded them with the prediction."""
    pred = row["prediction"]
    info = pred.get("task") if isinstance(pred, dict) else None
    if isinstance(info, dict) and info.get("labels"):
        return info
    labels = sorted((pred.get("scores") or {}).keys()) if isinstance(pred, dict) else []
    return {"name": row["task"], "kind": None, "labels": labels}


def _get_row(store: Store, review_id: int) -> dict[str, Any] | None:
    return store.review_get(review_id)


@review_app.command("list")
def list_(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")] = None,
    status: Annotated[
        str, typer.Option(help="pending, labelled, skipped or all.")
    ] = "pending",
    limit: Annotated[int, typer.Option(help="Most rows to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    store: StoreOpt = None,
) -> None:
    """List queued predictions (lowest id first)."""
    if status not in ("pending", "labelled", "skipped", "all"):
        raise ConfigError(f"--status must be pending, labelled, skipped or all, not {status!r}")
    rows = _store(store).review_list(
        task=task, status=None if status == "all" else status, limit=limit
    )
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"review queue ({status}): {len(rows)} rows")
    for col in ("id", "task", "predicted", "conf", "route", "gold", "text"):
        table.add_column(col, overflow="fold")
    for row in rows:
        pred = row["prediction"]
        table.add_row(
            str(row["id"]),
            row["task"],
            ",".join(pred.get("labels") or []) or "-",
            f"{float(pred.get('confidence') or 0.0):.2f}",
            ">".join(pred.get("route") or []),
            ",".join(row["gold"] or []) if row["gold"] else "",
            row["text"][:120],
        )
    Console().print(table)


@review_app.command("label")
def label(
    review_id: Annotated[int, typer.Argument(help="The row id (see `llmclf review list`).")],
    labels: Annotated[list[str], typer.Argument(help="The gold label (several for multi-label).")],
    store: StoreOpt = None,
) -> None:
    """Give a queued prediction its gold label(s)."""
    st = _store(store)
    row = _get_row(st, review_id)
    if row is None:
        raise ConfigError(f"no review row with id {review_id}")
    info = _task_info(row)
    valid = list(info["labels"])
    unknown = [lab for lab in labels if lab not in valid]
    if unknown:
        raise ConfigError(
            f"unknown label(s) {unknown} for task {row['task']!r}; valid: {', '.join(valid)}"
        )
    if info.get("kind") != "multilabel" and len(labels) != 1:
        raise ConfigError(f"task {row['task']!r} takes exactly one label, got {len(labels)}")
    gold = list(dict.fromkeys(labels))
    st.review_label(review_id, gold)
    typer.echo(f"review #{review_id}: labelled {', '.join(gold)}")


@review_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")] = None,
    store: StoreOpt = None,
) -> None:
    """Write labelled rows as a case file ({"id", "text", "label"|"labels"}), gold for distill."""
    rows = _store(store).review_list(task=task, status="labelled", limit=10_000_000)
    tasks = sorted({r["task"] for r in rows})
    if len(tasks) > 1:
        raise ConfigError(
            f"labelled rows of several tasks ({', '.join(tasks)}): pick one with --task"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            gold = list(row["gold"] or [])
            record: dict[str, Any] = {"id": f"review-{row['id']}", "text": row["text"]}
            multi = _task_info(row).get("kind") == "multilabel" or len(gold) != 1
            if multi:
                record["labels"] = gold
            else:
                record["label"] = gold[0]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    typer.echo(f"wrote {len(rows)} labelled rows to {out}")


@review_app.command("suggest")
def suggest_cmd(
    task: Annotated[str, typer.Option("--task", "-t", help="task.yaml path or eval-set name.")],
    unlabeled: Annotated[
        str, typer.Option("--unlabeled", "-u", help="Unlabelled texts: JSONL/CSV/Parquet/text.")
    ],
    student: Annotated[Path, typer.Option("--student", help="Distilled student directory.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many texts to pick.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the picks to this JSONL file, not the queue."),
    ] = None,
    pool_factor: Annotated[
        int, typer.Option(min=1, help="Diversity is sought among the k x this most uncertain.")
    ] = 5,
    text_field: Annotated[str, typer.Option(help="The field holding the text.")] = "text",
    store: StoreOpt = None,
) -> None:
    """Pick the K unlabelled texts worth a human label (margin + k-center on the student's
    embeddings) and queue them for review, or write them to --out."""
    from llmclf.backends.setfit import SetFitBackend
    from llmclf.cli.common import resolve_task
    from llmclf.review_suggest import enqueue, suggest_for_review, write_suggestions
    from llmclf.unlabeled import iter_texts

    the_task = resolve_task(task)
    items = list(iter_texts(unlabeled, text_field=text_field, skip_empty=True))
    if not items:
        raise ConfigError(f"{unlabeled}: no texts")
    model = SetFitBackend.load(student, task=the_task)
    picks = suggest_for_review(
        [it.text for it in items], model, k,
        ids=[it.id or f"line-{it.line}" for it in items], pool_factor=pool_factor,
    )  # fmt: skip
    if out is not None:
        write_suggestions(picks, the_task, out)
        typer.echo(f"wrote {len(picks)} suggestions of {len(items)} texts to {out}")
        return
    added = enqueue(picks, the_task, _store(store))
    typer.echo(
        f"queued {added} of {len(picks)} suggestions ({len(items)} texts; "
        f"{len(picks) - added} were queued already) for task {the_task.name}"
    )


@review_app.command("ui")
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the API key (several: comma-separated)."),
    ] = None,
    rate_limit: Annotated[
        float | None, typer.Option(help="Requests per second allowed per API key.")
    ] = None,
    rate_burst: Annotated[int | None, typer.Option(help="Burst size of the rate limit.")] = None,
    store: StoreOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the review page (GET /review) without a classifier, on the store's queue."""
    import sys

    import uvicorn

    from llmclf.service import ServiceSettings
    from llmclf.service.app import create_review_app

    keys: frozenset[str] = frozenset()
    if api_key_env:
        raw = os.environ.get(api_key_env, "")
        keys = frozenset(k.strip() for k in raw.split(",") if k.strip())
        if not keys:
            raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is empty")
    settings = ServiceSettings(api_keys=keys, rate_limit_per_s=rate_limit, rate_burst=rate_burst)
    app = create_review_app(_store(store), settings)
    auth = f"; API key from ${api_key_env}" if keys else ""
    typer.echo(f"llmclf: review page on http://{host}:{port}/review{auth}", err=True)
    sys.stderr.flush()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
