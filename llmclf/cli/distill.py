"""``llmclf distill``: label unlabelled texts with an LLM teacher and train a fast student.

Example:
    $ llmclf distill --task sst2 --teacher llm:local --unlabeled texts.jsonl \\
        --out models/sst2 --eval-set sst2 --mode head-only
    $ llmclf distill --from-pool --eval-set banking77 --out models/banking77-pool
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmclf.cli.common import DbOpt, use_db


def _render_table(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from llmclf.distill import DistillResult

    assert isinstance(result, DistillResult)
    console = Console(stderr=True)
    sel = result.selection
    counts = Table(title="training examples per label")
    counts.add_column("label")
    counts.add_column("teacher labels", justify="right")
    counts.add_column("kept for training", justify="right")
    for name, n in sel.counts.items():
        counts.add_row(name, str(sel.teacher_counts.get(name, 0)), str(n))
    console.print(counts)
    if result.teacher_metrics is None:
        return
    table = Table(title=f"teacher vs student on the eval set ({result.escalation.get('n')} cases)")
    table.add_column("metric")
    table.add_column(f"teacher {result.teacher}")
    table.add_column(f"student setfit:{result.out_dir}")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    for name, tv, sv in result.comparison():
        table.add_row(name, fmt(tv), fmt(sv))
    console.print(table)
    esc = result.escalation
    if esc.get("escalation_threshold") is not None:
        console.print(
            f"router escalation threshold {esc['escalation_threshold']}: the student answers "
            f"{esc.get('coverage', 0):.0%} of eval cases, cascade accuracy "
            f"{esc.get('cascade_accuracy')}"
        )
    console.print(
        f"runs stored: teacher {result.teacher_run_id}, student {result.student_run_id}"
    )


def distill_command(
    teacher: Annotated[
        str, typer.Option("--teacher", help="Teacher backend spec, e.g. llm:local.")
    ] = "llm:local",
    unlabeled: Annotated[
        str | None,
        typer.Option(
            "--unlabeled",
            "-u",
            help="Unlabelled texts: JSONL/CSV/Parquet/text file, '-' = stdin (required unless "
            "--from-pool).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Model directory to write.")
    ] = ...,  # type: ignore[assignment]
    task: Annotated[
        str | None,
        typer.Option(
            "--task", "-t", help="task.yaml path or eval-set name (default: the eval set's)."
        ),
    ] = None,
    eval_set: Annotated[
        str | None, typer.Option("--eval-set", "-e", help="Eval set (name or directory).")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="'head-only' (frozen body, seconds), 'full' (SetFit contrastive body "
            "fine-tuning, then the head) or 'end-to-end' (body and head trained together on the "
            "teacher's labels: closest to the teacher, about 35 s an epoch per 2,000 texts)."
        ),
    ] = "",
    body: Annotated[
        str | None, typer.Option(help="Sentence-transformers body: a local path or name.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Training steps (full, end-to-end).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training set (end-to-end; default 4).")
    ] = None,
    max_seconds: Annotated[
        float | None, typer.Option(help="Wall-clock budget of body training (full, end-to-end).")
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            help="Drop teacher labels below this confidence (default: chosen on the eval set)."
        ),
    ] = None,
    balance_ratio: Annotated[
        float, typer.Option(help="Cap each label at this multiple of the smallest (0 = off).")
    ] = 3.0,
    max_per_label: Annotated[
        int | None, typer.Option(help="Cap on training examples per label.")
    ] = None,
    min_per_label: Annotated[
        int, typer.Option(help="Warn about labels with fewer training examples.")
    ] = 8,
    limit: Annotated[
        int | None, typer.Option(help="Label only the first N texts.")
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="Also write model.int8.onnx.")
    ] = True,
    int8_bound: Annotated[
        float,
        typer.Option(
            help="Largest score difference allowed between model.int8.onnx and torch on the "
            "parity texts; MatMuls that drift most stay fp32 until it holds. A sharp "
            "(end-to-end) head needs more of them in fp32: a looser bound is faster.",
        ),
    ] = 0.05,
    force: Annotated[bool, typer.Option(help="Replace an existing --out directory.")] = False,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Teacher prompt template.")
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(help="Few-shot pool for a few-shot teacher prompt (as in `llmclf eval`)."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Teacher requests in flight.")] = 4,
    text_field: Annotated[str, typer.Option(help="Field/column holding the text.")] = "text",
    include_labelled: Annotated[
        list[Path] | None,
        typer.Option(help="Gold-labelled cases file(s) to add to the training set."),
    ] = None,
    include_reviewed: Annotated[
        bool, typer.Option(help="Add the review queue's labelled rows as gold examples.")
    ] = False,
    export_labels: Annotated[
        Path | None,
        typer.Option(help="Write teacher labels: FILE.jsonl, or a directory (datasets.Dataset)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Teacher labels made already (llmclf label --out FILE: .jsonl, .parquet or a "
            "dataset directory); no teacher call labels texts (--teacher still scores the "
            "--eval-set).",
        ),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="Calibrate the student's scores: temperature, platt or isotonic, fitted on the "
            "--eval-set's hash half 0 (never trained on) and reported on half 1; writes "
            "calibration.json, which the student then applies.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    db: DbOpt = None,
    from_pool: Annotated[
        bool,
        typer.Option(
            "--from-pool",
            help="No teacher: train the first student on the --eval-set's labelled few-shot "
            "pool (gold), e.g. for an LLM's shortlist on day one (llmclf.pool_student).",
        ),
    ] = False,
) -> None:
    """Label unlabelled texts with a teacher and distill them into a SetFit student."""
    use_db(db)
    from llmclf.distill import DEFAULT_MODE, MODES, DistillConfig, result_summary, run_distill

    chosen_mode = mode or DEFAULT_MODE
    if chosen_mode not in MODES:
        raise typer.BadParameter(f"must be one of {', '.join(MODES)}", param_hint="--mode")

    def echo(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    if calibrate is not None and calibrate not in ("temperature", "platt", "isotonic"):
        raise typer.BadParameter(
            "must be one of temperature, platt, isotonic", param_hint="--calibrate"
        )
    if from_pool:
        _from_pool(
            eval_set, out, chosen_mode, body=body, max_steps=max_steps, max_seconds=max_seconds,
            epochs=epochs, seed=seed, int8=int8, int8_bound=int8_bound, force=force,
            quiet=quiet, as_json=as_json, echo=echo,
        )  # fmt: skip
        return
    if unlabeled is None and labels is None:
        raise typer.BadParameter(
            "give the texts to label (or --labels FILE, or --from-pool)", param_hint="--unlabeled"
        )

    config = DistillConfig(
        teacher=teacher,
        unlabeled=str(unlabeled if unlabeled is not None else labels),
        labels=labels,
        out=out,
        task=task,
        eval_set=eval_set,
        prompt=prompt,
        few_shot_pool=pool,
        concurrency=concurrency,
        limit=limit,
        text_field=text_field,
        export_labels=export_labels,
        min_confidence=min_confidence,
        balance_ratio=balance_ratio,
        max_per_label=max_per_label,
        min_per_label=min_per_label,
        include_labelled=tuple(include_labelled or ()),
        include_reviewed=include_reviewed,
        mode=chosen_mode,  # type: ignore[arg-type]
        body=body,
        max_steps=max_steps,
        max_seconds=max_seconds,
        epochs=epochs,
        seed=seed,
        int8=int8,
        int8_bound=int8_bound,
        calibrate=calibrate,  # type: ignore[arg-type]
        force=force,
    )
    result = run_distill(config, progress=not quiet, echo=echo)
    if not quiet:
        _render_table(result)
    if as_json:
        sys.stdout.write(json.dumps(result_summary(result), ensure_ascii=False) + "\n")


def _from_pool(
    eval_set: str | None, out: Path, mode: str, *, quiet: bool, as_json: bool, **options: object
) -> None:
    """``--from-pool``: `llmclf.pool_student.train_pool_student` on the eval set's pool."""
    from llmclf.pool_student import train_pool_student

    if eval_set is None:
        raise typer.BadParameter(
            "--from-pool trains on an eval set's pool", param_hint="--eval-set"
        )
    result = train_pool_student(
        eval_set, out, mode=mode, progress=not quiet, **options  # type: ignore[arg-type]
    )
    if as_json:
        sys.stdout.write(json.dumps(result.summary(), ensure_ascii=False) + "\n")


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
