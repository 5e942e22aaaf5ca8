"""The review page and its API: a person works through the review queue in the browser.

- ``GET /review``: the page (HTML, JS and CSS shipped in ``llmclf/review_ui/``, nothing fetched
  from elsewhere; a Content-Security-Policy allows only the server's own scripts).
- ``GET /v1/review/tasks``: the tasks in the queue, their labels and counts.
- ``GET /v1/review/items``: rows, filtered by ``task``, ``status`` (pending, labelled, skipped,
  all), a confidence band (``min_conf``/``max_conf``) and ``route`` (student, escalated,
  shadow: a disagreement with the shadow backend).
- ``POST /v1/review/items/{id}/decide``: ``{"action": "label", "labels": [...]}``,
  ``{"action": "accept"}`` (the model's labels) or ``{"action": "skip"}``.
- ``POST /v1/review/decisions/{id}/undo``; ``POST /v1/review/bulk-accept`` ``{"ids": [...]}``.

The API lives under ``/v1/``, so the service's API key and rate limit apply to it; actions are
POSTs. A row already decided answers 409 naming the decision made (one decision per row).

The page alone (``llmclf review ui``) is `llmclf.service.app.create_review_app`.

Example:
    >>> add_review_routes(app, lambda: store, auth_required=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from llmclf.errors import ReviewConflict, StoreError
from llmclf.store import Store

__all__ = ["add_review_routes", "row_for_page"]

_STATIC = {
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
Route = Literal["student", "escalated", "shadow"]


class DecideIn(BaseModel):
    """One decision: give labels, accept the model's, or skip."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["label", "accept", "skip"]
    labels: list[str] | None = Field(default=None, max_length=500)
    reviewer: str | None = Field(default=None, max_length=200)


class BulkIn(BaseModel):
    """Accept the model's labels for these rows."""

    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(min_length=1, max_length=1000)
    reviewer: str | None = Field(default=None, max_length=200)


def _asset(name: str) -> str:
    return resources.files("llmclf").joinpath("review_ui", name).read_text(encoding="utf-8")


def _task_info(row: dict[str, Any]) -> dict[str, Any]:
    pred = row["prediction"] if isinstance(row["prediction"], dict) else {}
    info = pred.get("task")
    if isinstance(info, dict) and info.get("labels"):
        return {"name": row["task"], "kind": info.get("kind"), "labels": list(info["labels"])}
    return {"name": row["task"], "kind": None, "labels": sorted(pred.get("scores") or {})}


def _route_kind(pred: dict[str, Any]) -> str:
    if pred.get("shadow") is not None or pred.get("review_strategy") == "disagreement":
        return "shadow"
    route = pred.get("route") or []
    reason = str(pred.get("route_reason") or "")
    return "escalated" if len(route) > 1 or reason.startswith("escalated") else "student"


def row_for_page(row: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one queued row."""
    pred = row["prediction"] if isinstance(row["prediction"], dict) else {}
    return {
        "id": row["id"],
        "task": row["task"],
        "text": row["text"],
        "created": row["created"],
        "status": row["status"],
        "gold": row["gold"],
        "decision": row.get("decision"),
        "labels": list(pred.get("labels") or []),
        "scores": dict(pred.get("scores") or {}),
        "confidence": float(pred.get("confidence") or 0.0),
        "backend": pred.get("backend"),
        "route": list(pred.get("route") or []),
        "route_reason": pred.get("route_reason"),
        "route_kind": _route_kind(pred),
        "review_reason": pred.get("review_reason"),
        "shadow": pred.get("shadow"),
        "kind": _task_info(row)["kind"],
    }


def _error(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse(_body(type_, message), status_code=status)


def _check_labels(row: dict[str, Any], labels: list[str]) -> str | None:
    info = _task_info(row)
    unknown = [lab for lab in labels if lab not in info["labels"]]
    if unknown:
        return (
            f"unknown label(s) {unknown} for task {row['task']!r}; "
            f"valid: {', '.join(info['labels'])}"
        )
    if not labels:
        return "give at least one label"
    if info["kind"] != "multilabel" and len(labels) != 1:
        return f"task {row['task']!r} takes exactly one label, got {len(labels)}"
    return None


def add_review_routes(
    app: FastAPI, store: Callable[[], Store], *, auth_required: bool = False
) -> None:
    """Add ``/review`` and ``/v1/review/*`` to ``app``; ``store()`` gives the queue's store.

    ``auth_required`` tells the page to ask for the API key before its first call."""

    def page_headers() -> dict[str, str]:
        return {
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }

    @app.get("/review", include_in_schema=False)
    async def review_page() -> Response:
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                        headers=page_headers())  # fmt: skip

    @app.get("/review/config", include_in_schema=False)
    async def review_config() -> dict[str, Any]:
        return {"auth_required": auth_required}

    @app.get("/review/static/{name}", include_in_schema=False)
    async def review_static(name: str) -> Response:
        if name not in _STATIC:
            return _error(404, "not_found", f"no such file: {name}")
        return Response(_asset(name), media_type=_STATIC[name], headers=page_headers())

    @app.get("/v1/review/tasks", summary="Tasks in the review queue, with labels and counts")
    async def review_tasks() -> dict[str, Any]:
        def read() -> list[dict[str, Any]]:
            st = store()
            out = []
            for name in st.review_tasks():
                (first,) = st.review_list(task=name, status=None, limit=1)
                info = _task_info(first)
                out.append({**info, "counts": st.review_counts(name)})
            return out

        return {"tasks": await asyncio.to_thread(read)}

    @app.get("/v1/review/items", summary="Queued rows, filtered")
    async def review_items(
        task: str | None = Query(default=None, max_length=200),
        status: Literal["pending", "labelled", "skipped", "all"] = "pending",
        min_conf: float = Query(default=0.0, ge=0.0, le=1.0),
        max_conf: float = Query(default=1.0, ge=0.0, le=1.0),
        route: Route | None = None,
        limit: int = Query(default=200, ge=1, le=1000),
    ) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            st = store()
            items: list[dict[str, Any]] = []
            after: int | None = None
            while len(items) < limit:
                rows = st.review_list(
                    task=task, status=None if status == "all" else status, limit=500,
                    after_id=after,
                )  # fmt: skip
                if not rows:
                    break
                after = rows[-1]["id"]
                for row in rows:
                    item = row_for_page(row)
                    conf = item["confidence"]
                    in_band = min_conf <= conf and (conf < max_conf or max_conf >= 1.0)
                    if in_band and (route is None or item["route_kind"] == route):
                        items.append(item)
                        if len(items) >= limit:
                            break
            return {"items": items, "counts": st.review_counts(task)}

        return await asyncio.to_thread(read)

    @app.post("/v1/review/items/{review_id}/decide", summary="Label, accept or skip one row")
    async def review_decide(review_id: int, body: DecideIn) -> JSONResponse:
        status, data = await asyncio.to_thread(
            _decide, store(), review_id, body.action, body.labels, body.reviewer
        )
        return JSONResponse(data, status_code=status)

    @app.post("/v1/review/decisions/{decision_id}/undo", summary="Undo a decision")
    async def review_undo(decision_id: str) -> JSONResponse:
        def run() -> JSONResponse:
            st = store()
            try:
                row = st.review_undo(decision_id)
            except ReviewConflict as exc:
                return JSONResponse(
                    {"error": {"type": "conflict", "message": str(exc), "current": exc.current}},
                    status_code=409,
                )
            except StoreError as exc:
                return _error(404, "not_found", str(exc))
            return JSONResponse(
                {"item": row_for_page(row), "counts": st.review_counts(row["task"])}
            )

        return await asyncio.to_thread(run)

    @app.post("/v1/review/bulk-accept", summary="Accept the model's labels for several rows")
    async def review_bulk(body: BulkIn) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            st = store()
            accepted, refused = [], []
            for rid in body.ids:
                status, data = _decide(st, rid, "accept", None, body.reviewer)
                if status == 200:
                    accepted.append(data["decision"])
                else:
                    refused.append({"id": rid, "message": data["error"]["message"]})
            return {"accepted": accepted, "refused": refused, "counts": st.review_counts()}

        return await asyncio.to_thread(run)


def _decide(
    st: Store, review_id: int, action: str, labels: list[str] | None, reviewer: str | None
) -> tuple[int, dict[str, Any]]:
    """One decision on one row: (HTTP status, body)."""
    row = st.review_get(review_id)
    if row is None:
        return 404, _body("not_found", f"no review row with id {review_id}")
    gold: list[str] | None = None
    if action == "accept":
        gold = list(row_for_page(row)["labels"])
    elif action == "label":
        gold = list(dict.fromkeys(labels or []))
    if gold is not None:
        bad = _check_labels(row, gold)
        if bad:
            return 422, _body("bad_input", f"review #{review_id}: {bad}")
    try:
        d = st.review_decide(
            review_id, "skipped" if action == "skip" else "labelled", gold, reviewer=reviewer
        )
    except ReviewConflict as exc:
        return 409, {"error": {"type": "conflict", "message": str(exc), "current": exc.current}}
    return 200, {"decision": d, "counts": st.review_counts(row["task"])}


def _body(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}
