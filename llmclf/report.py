"""A self-contained static HTML report of an eval run: no network, no JavaScript.

The page holds the summary metrics, the per-label table, a confusion-matrix heatmap, a
reliability diagram, the accuracy-coverage curve (inline SVG drawn from numbers computed here),
the most confident errors with their texts, and the failed calls. It is rendered by Jinja with
autoescape on, so every text from a case, a label or a config is HTML-escaped; a
Content-Security-Policy forbids scripts and remote loads on top of that.

Example:
    >>> from llmclf.evaluate import load_run                             # doctest: +SKIP
    >>> write_report(load_run("20250101-1200"), "report.html")  # doctest: +SKIP
    PosixPath('report.html')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from llmclf.evaluate import EvalRun, get_metric, load_run, per_label_rows
from llmclf.metrics import case_confidence
from llmclf.store import Store

__all__ = ["render_html", "write_report"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "report"
MAX_LABEL_CHARS = 24


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.1f}%"
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{round(value):,}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _blue(f: float) -> str:
    """White (0) to a strong blue (1)."""
    f = min(1.0, max(0.0, f))
    r, g, b = (round(255 - f * (255 - c)) for c in (31, 95, 191))
    return f"rgb({r},{g},{b})"


def heatmap(cm: dict[str, Any], hidden: Sequence[str] = ()) -> dict[str, Any] | None:
    """Geometry of the confusion-matrix heatmap: cells coloured by the row share. Labels in
    ``hidden`` (neither gold nor predicted) are left out as rows and columns."""
    all_rows: list[str] = cm.get("rows") or []
    all_cols: list[str] = cm.get("columns") or []
    full: list[list[int]] = cm.get("matrix") or []
    keep_r = [i for i, r in enumerate(all_rows) if r not in hidden]
    keep_c = [j for j, c in enumerate(all_cols) if c not in hidden]
    rows = [all_rows[i] for i in keep_r]
    cols = [all_cols[j] for j in keep_c]
    matrix = [[full[i][j] for j in keep_c] for i in keep_r]
    if not rows or not cols:
        return None
    cell = max(12, min(44, 560 // max(len(cols), 1)))
    font = min(11, cell - 1)
    vertical = cell < 24  # narrow columns: vertical labels, or they overlap
    left = 12 + int(6.5 * max(len(_short(r)) for r in rows))
    col_chars = max(len(_short(c)) for c in cols)
    top = 16 + int((6.5 if vertical else 4.5) * font / 11 * col_chars)
    cells = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            cells.append(
                {
                    "x": left + j * cell,
                    "y": top + i * cell,
                    "fill": _blue(share),
                    "count": count,
                    "share": share,
                    "dark": share > 0.55,
                    "diag": i < len(cols) and rows[i] == cols[j],
                    "title": f"{rows[i]} -> {cols[j]}: {count} ({100 * share:.1f}% of the row)",
                }
            )
    return {
        "cell": cell,
        "left": left,
        "top": top,
        "width": left + cell * len(cols) + 10,
        "height": top + cell * len(rows) + 10,
        "rows": [
            {"y": top + i * cell + cell / 2, "label": _short(r), "full": r}
            for i, r in enumerate(rows)
        ],
        "cols": [
            {
                "x": left + j * cell + cell / 2 + (font / 3 if vertical else 0),
                "label": _short(c),
                "full": c,
            }
            for j, c in enumerate(cols)
        ],
        "font": font,
        "angle": -90 if vertical else -40,
        "cells": cells,
        "show_counts": cell >= 20,
        "note": cm.get("note", ""),
    }


PLOT = {"left": 52, "top": 16, "size": 300}


def _xy(x: float, y: float) -> tuple[float, float]:
    s = PLOT["size"]
    return PLOT["left"] + x * s, PLOT["top"] + (1 - y) * s


def reliability(cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """Geometry of the reliability diagram: per bin, accuracy bars against the diagonal."""
    if not cal or not cal.get("n"):
        return None
    s = PLOT["size"]
    bars = []
    for b in cal["bins"]:
        if not b["count"]:
            continue
        x0, _ = _xy(b["lo"], 0)
        w = (b["hi"] - b["lo"]) * s
        _, y_acc = _xy(0, b["accuracy"])
        _, y_conf = _xy(0, b["confidence"])
        bars.append(
            {
                "x": x0 + 1,
                "w": w - 2,
                "y": y_acc,
                "h": PLOT["top"] + s - y_acc,
                "gap_y": min(y_acc, y_conf),
                "gap_h": abs(y_acc - y_conf),
                "cx": _xy(b["confidence"], 0)[0],
                "cy": y_conf,
                "label_y": min(y_acc, y_conf) - 4,
                "count": b["count"],
                "title": (
                    f"confidence {b['lo']:.1f}-{b['hi']:.1f}: {b['count']} predictions, "
                    f"mean confidence {b['confidence']:.3f}, accuracy {b['accuracy']:.3f}"
                ),
            }
        )
    return {"bars": bars, "ece": cal.get("ece"), "unit": cal.get("unit", "prediction"), **_axes()}


def _axes() -> dict[str, Any]:
    s = PLOT["size"]
    ticks = [i / 5 for i in range(6)]
    return {
        "plot": PLOT,
        "width": PLOT["left"] + s + 16,
        "height": PLOT["top"] + s + 44,
        "xticks": [{"x": _xy(t, 0)[0], "y": PLOT["top"] + s, "label": f"{t:.1f}"} for t in ticks],
        "yticks": [{"x": PLOT["left"], "y": _xy(0, t)[1], "label": f"{t:.1f}"} for t in ticks],
        "diag": {"x1": _xy(0, 0)[0], "y1": _xy(0, 0)[1], "x2": _xy(1, 1)[0], "y2": _xy(1, 1)[1]},
    }


def coverage(curve: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Geometry of the accuracy-coverage curve."""
    if not curve:
        return None
    points = []
    for r in curve:
        x, y = _xy(r["coverage"], r["accuracy"])
        points.append(
            {
                "x": x,
                "y": y,
                "title": f"the {100 * r['coverage']:.0f}% most confident ({r['n']} cases): "
                f"accuracy {r['accuracy']:.3f}",
            }
        )
    return {
        "points": points,
        "polyline": " ".join(f"{p['x']:.1f},{p['y']:.1f}" for p in points),
        **_axes(),
    }


def _worst_errors(run: EvalRun, n: int) -> list[dict[str, Any]]:
    wrong: list[dict[str, Any]] = []
    for case, pred in zip(run.cases, run.predictions, strict=True):
        if pred is None or pred.abstained or pred.matches(case.labels):
            continue
        order = {lab: i for i, lab in enumerate(run.task.label_names)}
        top = sorted(pred.scores.items(), key=lambda kv: (-kv[1], order.get(kv[0], 0)))[:3]
        wrong.append(
            {
                "id": case.id,
                "text": case.text,
                "gold": ", ".join(case.labels) or "(none)",
                "pred": ", ".join(pred.labels) or "(none)",
                "confidence": case_confidence(run.task, pred),
                "scores": ", ".join(f"{k} {v:.3f}" for k, v in top),
            }
        )
    wrong.sort(key=lambda w: -float(w["confidence"]))
    return wrong[:n]


def _failed(run: EvalRun, n: int) -> list[dict[str, Any]]:
    out = []
    for case, err in zip(run.cases, run.errors, strict=True):
        if err is not None:
            out.append({"id": case.id, "text": case.text, **err})
    return out[:n]


def render_html(run: EvalRun, *, max_errors: int = 25) -> str:
    """The report page of ``run`` as one HTML string (inline CSS and SVG, no scripts).

    Example:
        >>> html = render_html(run)                                      # doctest: +SKIP
        >>> html.startswith("<!DOCTYPE html>")  # doctest: +SKIP
        True
    """
    m = run.metrics

    def card(name: str, path: str, digits: int = 3) -> tuple[str, float | None, int]:
        return name, get_metric(m, path), digits

    cards = [
        card("accuracy", "accuracy"),
        card("macro F1", "macro_f1"),
        card("micro F1", "micro_f1"),
        card("AUC-ROC", "auc_roc"),
        card("ECE", "ece"),
        card("abstain rate", "abstain_rate"),
        card("errors", "errors", 0),
        card("latency p50 ms", "latency_ms.p50", 1),
        card("latency p95 ms", "latency_ms.p95", 1),
        card("tokens", "usage.total_tokens", 0),
        card("cost USD", "usage.cost_usd", 4),
        card("cache hits", "cache_hits", 0),
    ]
    if m.get("kind") == "multilabel":
        cards.insert(3, card("hamming loss", "hamming_loss"))
    if m.get("calibration_raw"):
        i = next(i for i, c in enumerate(cards) if c[0] == "ECE")
        cards.insert(i + 1, card("ECE before calibration", "calibration_raw.ece"))
    created = (
        dt.datetime.fromtimestamp(run.created).strftime("%Y-%m-%d %H:%M:%S") if run.created else "-"
    )
    tuning = (m.get("multilabel") or {}).get("threshold_tuning")
    hidden = [
        lab
        for lab, row in per_label_rows(m)
        if row.get("support") == 0 and row.get("predicted") == 0
    ]
    per_label = [
        {"label": lab, **row, "auc": (m.get("auc_roc_per_label") or {}).get(lab)}
        for lab, row in per_label_rows(m)
        if lab not in hidden
    ]
    config = [
        (k, v)
        for k, v in sorted(run.config.items())
        if k not in {"task"} and v is not None and not isinstance(v, dict | list)
    ]
    template = _env().get_template("report.html")
    return template.render(
        run=run,
        created=created,
        m=m,
        cards=cards,
        per_label=per_label,
        heatmap=heatmap(m.get("confusion_matrix") or {}, hidden),
        hidden=hidden,
        reliability=reliability(m.get("calibration")),
        reliability_raw=reliability(m.get("calibration_raw")),
        coverage=coverage(m.get("coverage_curve")),
        worst=_worst_errors(run, max_errors),
        failed=_failed(run, max_errors),
        tuning=tuning,
        config=config,
        labels=list(run.task.label_names),
    )


def write_report(
    run: EvalRun | str, path: str | Path, *, store: Store | None = None, max_errors: int = 25
) -> Path:
    """Write the HTML report of ``run`` (an `EvalRun` or a stored run id) to ``path``.

    Example:
        >>> write_report("20250101-1200", "out.html")                    # doctest: +SKIP
        PosixPath('out.html')
    """
    r = run if isinstance(run, EvalRun) else load_run(run, store)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(r, max_errors=max_errors), encoding="utf-8")
    return out
