"""``llmclf runs list|show|diff``: the eval runs kept in the store, and what changed between two.

Run ids accept a unique prefix.

Example:
    $ llmclf runs list --eval-set sst2
    $ llmclf runs show 20250101-1200
    $ llmclf runs diff 20250101-1200 20250102-0900
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmclf.cli.common import DbOpt, use_db
from llmclf.evaluate import compare_runs, get_metric, load_run, per_label_rows
from llmclf.store import open_store

runs_app = typer.Typer(
    name="runs",
    help="Eval runs kept in the store: list, show, diff.",
    no_args_is_help=True,
)


# ------------------------------------------------------------------------------ rendering


def fmt(value: Any, digits: int = 4) -> str:
    """A metric value for a table: 4 decimals, integers as is, '-' when absent."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{round(value)}"
    return str(value)


def fmt_delta(value: float | None, lower_is_better: bool = False, digits: int = 4) -> str:
    """A signed delta, coloured green when better and red when worse."""
    if value is None:
        return "-"
    if abs(value) < 1e-12:
        return "0"
    better = value < 0 if lower_is_better else value > 0
    colour = "green" if better else "red"
    return f"[{colour}]{value:+.{digits}f}[/{colour}]"


_COUNTS = {"total_tokens", "cache_hits"}


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("cases", "n"),
    ("accuracy", "accuracy"),
    ("macro F1", "macro_f1"),
    ("micro F1", "micro_f1"),
    ("weighted F1", "weighted_f1"),
    ("AUC-ROC", "auc_roc"),
    ("ECE (10 bins)", "calibration.ece"),
    ("ECE before calibration", "calibration_raw.ece"),
    ("hamming loss", "hamming_loss"),
    ("abstain rate", "abstain_rate"),
    ("errors", "errors"),
    ("latency p50 ms (uncached)", "latency_ms.p50"),
    ("latency p95 ms (uncached)", "latency_ms.p95"),
    ("tokens", "usage.total_tokens"),
    ("LLM calls", "usage.llm_calls"),
    ("cost USD", "usage.cost_usd"),
    ("cache hits", "cache_hits"),
)


def metrics_table(metrics: Mapping[str, Any], title: str = "metrics") -> Table:
    """The headline metrics of a run as a two-column table."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, path in SUMMARY_ROWS:
        if path == "hamming_loss" and metrics.get("kind") != "multilabel":
            continue
        v = get_metric(metrics, path)
        if path == "calibration_raw.ece" and v is None:
            continue  # no prediction was calibrated
        if path in {"n", "errors", "cache_hits", "usage.total_tokens", "usage.llm_calls"}:
            table.add_row(label, fmt(None if v is None else int(v)))
        elif path.startswith("latency"):
            table.add_row(label, fmt(v, 1))
        else:
            table.add_row(label, fmt(v))
    if metrics.get("latency_method"):
        table.add_row("latency measured", _plain(str(metrics["latency_method"])))
    if metrics.get("error_kinds"):
        kinds = ", ".join(f"{k}: {n}" for k, n in metrics["error_kinds"].items())
        table.add_row("error kinds", kinds)
    if metrics.get("auc_roc_note"):
        table.add_row("AUC note", _plain(str(metrics["auc_roc_note"])))
    tuning = (metrics.get("multilabel") or {}).get("threshold_tuning") or {}
    if tuning.get("thresholds"):
        tuned = tuning["held_out_tuned"]
        model = tuning["held_out_model"]
        table.add_row(
            "tuned thresholds, held-out half",
            f"micro F1 {fmt(model['micro_f1'])} -> {fmt(tuned['micro_f1'])}, "
            f"subset acc {fmt(model['subset_accuracy'])} -> {fmt(tuned['subset_accuracy'])} "
            f"(n={tuned['n']})",
        )
    return table


def per_label_table(metrics: Mapping[str, Any]) -> Table:
    """Precision, recall, F1, support and AUC per label (and the tuned threshold if any)."""
    table = Table(title="per label", show_header=True, header_style="bold")
    for col in ("label", "precision", "recall", "F1", "support", "AUC"):
        table.add_column(col, justify="left" if col == "label" else "right")
    thresholds = (
        ((metrics.get("multilabel") or {}).get("threshold_tuning") or {}).get("thresholds")
    ) or {}
    if thresholds:
        table.add_column("tuned threshold", justify="right")
    auc = metrics.get("auc_roc_per_label") or {}
    hidden = 0
    for lab, row in per_label_rows(metrics):
        if row.get("support") == 0 and row.get("predicted") == 0:
            hidden += 1
            continue
        cells: list[Any] = [
            _plain(lab),
            fmt(row["precision"]),
            fmt(row["recall"]),
            fmt(row["f1"]),
            fmt(row["support"]),
            fmt(auc.get(lab)),
        ]
        if thresholds:
            cells.append(fmt(thresholds.get(lab)))
        table.add_row(*cells)
    if hidden:
        table.caption = f"{hidden} labels neither in the gold labels nor predicted are not shown"
    return table


def print_run(console: Console, run: Any, *, per_label: bool = True) -> None:
    """Print a run's header, metrics table and per-label table."""
    console.print(
        f"[bold]run[/bold] {escape(run.run_id)}  eval set [bold]{escape(run.eval_set)}[/bold]  "
        f"backend {escape(run.backend)}  prompt {escape(run.prompt_id or '-')}  "
        f"status {run.status}",
        highlight=False,
    )
    console.print(metrics_table(run.metrics))
    if per_label and run.metrics.get("per_label"):
        console.print(per_label_table(run.metrics))


def print_diff(console: Console, diff: Mapping[str, Any], *, max_cases: int = 20) -> None:
    """Print metric deltas, per-label F1 deltas and the flipped cases of `compare_runs`."""
    from llmclf.evaluate import _lower_is_better

    a, b = diff["a"], diff["b"]
    for tag, r in (("a", a), ("b", b)):
        console.print(
            f"[bold]{tag}[/bold] {escape(r['id'])}  {escape(r['backend'])}  "
            f"prompt {escape(r['prompt_id'] or '-')}",
            highlight=False,
        )
    if not diff["same_eval_set"]:
        console.print(
            f"[yellow]different eval sets: {escape(a['eval_set'])} vs "
            f"{escape(b['eval_set'])}[/yellow]"
        )
    elif not diff["same_cases"]:
        console.print("[yellow]the runs were made on different cases (limit or edits)[/yellow]")
    table = Table(title="metrics (b - a)", header_style="bold")
    for col in ("metric", "a", "b", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, row in diff["metrics"].items():
        digits = 0 if name in _COUNTS else 1 if name.startswith("latency") else 4
        table.add_row(
            name,
            fmt(row["a"], digits),
            fmt(row["b"], digits),
            fmt_delta(row["delta"], _lower_is_better(name), digits),
        )
    console.print(table)
    if diff["per_label"]:
        pl = Table(title="per-label F1 (b - a)", header_style="bold")
        for col in ("label", "a", "b", "delta", "support"):
            pl.add_column(col, justify="left" if col == "label" else "right")
        for lab, row in diff["per_label"].items():
            pl.add_row(
                _plain(lab), fmt(row["a_f1"]), fmt(row["b_f1"]), fmt_delta(row["delta"]),
                fmt(row["support"]),
            )  # fmt: skip
        console.print(pl)
    console.print(
        f"{diff['n_common']} cases in both runs: {diff['n_fixed']} fixed, "
        f"{diff['n_broken']} broken, {diff['n_changed']} changed but still wrong"
        + (f"; only in a: {diff['only_in_a']}" if diff["only_in_a"] else "")
        + (f"; only in b: {diff['only_in_b']}" if diff["only_in_b"] else "")
    )
    flipped = diff["flipped"]
    if flipped:
        ft = Table(
            title=f"flipped cases (first {min(max_cases, len(flipped))})", header_style="bold"
        )
        for col in ("change", "id", "gold", "before", "after", "text"):
            ft.add_column(col, overflow="fold")
        for f in flipped[:max_cases]:
            colour = {"fixed": "green", "broken": "red"}.get(f["change"], "yellow")
            text = f["text"] if len(f["text"]) <= 120 else f["text"][:117] + "..."
            ft.add_row(
                f"[{colour}]{f['change']}[/{colour}]",
                _plain(f["id"]),
                _plain(", ".join(f["gold"])),
                _plain(", ".join(f["before"])),
                _plain(", ".join(f["after"])),
                _plain(text),
            )
        console.print(ft)


def _plain(s: str) -> Any:
    """User text as a rich Text, so '[bold]' in a case is printed, not interpreted."""
    from rich.text import Text

    return Text(s)


def _json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


# ------------------------------------------------------------------------------ commands


@runs_app.command("list")
def list_runs(
    eval_set: Annotated[
        str | None, typer.Option("--eval-set", "-e", help="Only runs on this eval set.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = None,
) -> None:
    """List eval runs, newest first."""
    use_db(db)
    rows = [
        r for r in open_store().list_runs(eval_set=eval_set, limit=limit) if r["kind"] == "eval"
    ]
    if as_json:
        _json(
            [
                {k: r[k] for k in ("id", "created", "eval_set", "backend", "prompt_hash", "status")}
                | {
                    "n": (r["metrics"] or {}).get("n"),
                    "accuracy": (r["metrics"] or {}).get("accuracy"),
                    "macro_f1": (r["metrics"] or {}).get("macro_f1"),
                }
                for r in rows
            ]
        )
        return
    console = Console()
    if not rows:
        console.print("no eval runs yet" + (f" on {eval_set!r}" if eval_set else ""))
        return
    # the id starts with the creation time, so there is no separate "created" column
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=22)
    table.add_column("eval set", overflow="fold")
    table.add_column("backend", overflow="fold", ratio=2)
    table.add_column("prompt", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    for col in ("n", "acc", "F1"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        m = r["metrics"] or {}
        table.add_row(
            r["id"], _plain(r["eval_set"]), _plain(r["backend"]), _plain(r["prompt_hash"] or "-"),
            r["status"], fmt(m.get("n", r["config"].get("n_cases"))),
            fmt(m.get("accuracy"), 3), fmt(m.get("macro_f1"), 3),
        )  # fmt: skip
    console.print(table)


@runs_app.command("show")
def show_run(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print config and metrics as JSON.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Show a run's config and metrics."""
    use_db(db)
    r = load_run(run)
    if as_json:
        cfg = {k: v for k, v in r.config.items() if k != "task"}
        _json(
            {
                "id": r.run_id,
                "created": r.created,
                "status": r.status,
                "eval_set": r.eval_set,
                "backend": r.backend,
                "prompt_id": r.prompt_id,
                "config": cfg,
                "metrics": r.metrics,
            }
        )
        return
    console = Console()
    if r.status != "done":
        console.print(
            f"[yellow]run {r.run_id} is unfinished ({len(r.cases)} cases stored); "
            "re-run the same `llmclf eval` command to resume it[/yellow]"
        )
        return
    console.print(f"created {when(r.created)}; {len(r.cases)} cases")
    print_run(console, r)


@runs_app.command("diff")
def diff_runs(
    a: Annotated[str, typer.Argument(help="The earlier run (id or unique prefix).")],
    b: Annotated[str, typer.Argument(help="The later run (id or unique prefix).")],
    max_cases: Annotated[int, typer.Option(help="Flipped cases to print.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole diff as JSON.")] = False,
    db: DbOpt = None,
) -> None:
    """What changed from run A to run B: metric deltas, per-label F1 deltas, flipped cases."""
    use_db(db)
    diff = compare_runs(a, b)
    if as_json:
        _json(diff)
        return
    print_diff(Console(), diff, max_cases=max_cases)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
