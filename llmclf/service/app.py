"""The HTTP service: `create_app(backends, settings)` builds a FastAPI app around routers.

Endpoints:

- ``POST /v1/classify``: ``{"text": "..."}`` or ``{"texts": [...]}``, optional ``"task"`` (needed
  when several tasks are served) and ``"hints"`` (``max_latency_ms``, ``backend``,
  ``min_confidence``, ``request_key``, ``request_id``). Answers
  ``{"task", "prediction": {...}}`` or ``{"task", "predictions": [...]}``.
- ``GET /v1/tasks``: the tasks served, with their labels.
- ``GET /review`` and ``/v1/review/*``: the review page and its API, when a store is given.
- ``GET /healthz``: liveness (always 200 while the process answers), with the store's state:
  ``{"status": "ok"|"degraded", ..., "store": {"ok", "error", "since", "spooled", "url"}}``;
  ``degraded`` while the store is unreachable or spooled review rows wait for it.
  ``GET /metrics``: Prometheus text. ``GET /openapi.json``, ``/docs``.

Every error is ``{"error": {"type": ..., "message": ...}}``: 4xx for bad input (422 for an
invalid body, 413 for a body or batch over the limit, 401 without a valid API key, 404 for an
unknown task, 429 over the rate limit), 502 when every backend failed, 503 with ``Retry-After``
when too many requests are in flight. A stack trace never reaches the client.

Concurrent requests to the router's student are micro-batched (see `MicroBatcher`).

Example:
    >>> from llmclf.router import Router                                  # doctest: +SKIP
    >>> app = create_app([Router.from_yaml("router.yaml")],
    ...                  ServiceSettings(api_keys=frozenset({"s3cret"})))
    >>> import uvicorn; uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmclf.backends.base import Backend, Hints
from llmclf.classifier import validate_texts
from llmclf.errors import BackendError, ConfigError, LLMClfError, error_kind
from llmclf.review_writer import review_writer
from llmclf.service.batching import MicroBatcher
from llmclf.service.metrics import CONTENT_TYPE, ServiceMetrics
from llmclf.service.review_api import add_review_routes
from llmclf.store import Store

log = logging.getLogger("llmclf.service")

_ENDPOINTS = ("/v1/classify", "/v1/tasks", "/healthz", "/metrics", "/openapi.json", "/docs")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and options of the service.

    ``api_keys``: when non-empty, ``/v1/*`` needs one in ``X-API-Key`` or
    ``Authorization: Bearer``. ``rate_limit_per_s``/``rate_burst``: a token bucket per API key
    (per client address without auth). ``max_in_flight``: requests answered at once before
    503s. ``microbatch_wait_ms``/``microbatch_max``: the student's micro-batching.

    Example:
        >>> ServiceSettings(max_batch_size=64).max_batch_size
        64
    """

    api_keys: frozenset[str] = frozenset()
    rate_limit_per_s: float | None = None
    rate_burst: int | None = None
    max_body_bytes: int = 1_000_000
    max_batch_size: int = 256
    max_in_flight: int = 512
    retry_after_s: int = 1
    microbatch: bool = True
    microbatch_wait_ms: float = 2.0
    microbatch_max: int = 64


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, type_: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.type = type_
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)


# -- request / response models (they make the OpenAPI spec) ---------------------------------------
class HintsIn(BaseModel):
    """Per-request routing hints."""

    model_config = ConfigDict(extra="forbid")

    max_latency_ms: float | None = Field(
        default=None, gt=0, strict=True, description="Never escalate past this"
    )
    backend: str | None = Field(default=None, max_length=200, description="Force one backend")
    min_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        strict=True,
        description="Escalate when the top score is below this",
    )
    request_key: str | None = Field(default=None, max_length=500, description="A/B sticky key")
    request_id: str | None = Field(
        default=None, max_length=500, description="Idempotency key (review queue)"
    )


class ClassifyRequest(BaseModel):
    """One text (``text``) or a batch (``texts``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a gorgeous, witty film", "task": "sst2"}]},
    )

    text: str | None = None
    texts: list[str] | None = Field(default=None, min_length=1)
    task: str | None = Field(default=None, max_length=200)
    hints: HintsIn | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list)")
        return self


class PredictionOut(BaseModel):
    """A prediction as the service returns it."""

    model_config = ConfigDict(extra="allow")

    label: str | None
    labels: list[str]
    scores: dict[str, float]
    confidence: float
    backend: str
    route: list[str]
    route_reason: str | None
    latency_ms: float
    abstained: bool
    score_source: str
    cached: bool
    #: whether the scores went through a fitted calibrator (``score_source`` names it)
    calibrated: bool = False
    #: the decision threshold, when it is not 0.5 (a label may then score below another)
    threshold: float | None = None


class ClassifyResponse(BaseModel):
    task: str
    prediction: PredictionOut | None = None
    predictions: list[PredictionOut] | None = None


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        400: "malformed request (a body that is not UTF-8 JSON, a bad Content-Length)",
        401: "missing or invalid API key",
        404: "unknown task",
        413: "body or batch over the limit",
        422: "invalid request",
        429: "rate limit exceeded (see Retry-After)",
        502: "every backend failed",
        503: "overloaded (see Retry-After)",
    }.items()
}


def error_response(
    status: int, type_: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body of the service."""
    return JSONResponse(
        {"error": {"type": type_, "message": message}}, status_code=status, headers=headers
    )


# -- rate limiting --------------------------------------------------------------------------------
class TokenBuckets:
    """One token bucket per identity: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when allowed, else the seconds to wait for a token."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _has_length(scope: Scope) -> bool:
    return any(k.lower() == b"content-length" for k, _ in scope["headers"])


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class GuardMiddleware:
    """ASGI middleware: request metrics, body-size limit, API-key auth, rate limit, and a JSON
    500 for anything unexpected (the trace goes to the server log only)."""

    def __init__(self, app: ASGIApp, *, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.buckets = (
            TokenBuckets(settings.rate_limit_per_s, settings.rate_burst or max(1, math.ceil(
                settings.rate_limit_per_s)))
            if settings.rate_limit_per_s
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        start = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        async def reply(resp: Response) -> None:
            await resp(scope, receive, send_wrapper)

        try:
            early = self._check(scope, path)
            if early is not None:
                await reply(early)
                return
            if scope.get("method") in ("POST", "PUT", "PATCH") and not _has_length(scope):
                # a chunked body: read it here, up to the limit, then replay it to the app
                body = await self._read_limited(receive)
                if body is None:
                    await reply(self._error(413, "body_too_large", self._too_large_message()))
                    return
                await self.app(scope, _replay(body), send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not state["started"]:
                await reply(
                    self._error(500, "internal", "internal error; the server log has the details")
                )
        finally:
            status = str(state["status"])
            self.metrics.http_requests.labels(endpoint, status).inc()
            self.metrics.http_latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _read_limited(self, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large_message(self) -> str:
        return f"request body is over the limit of {self.settings.max_body_bytes} bytes"

    def _error(
        self, status: int, type_: str, message: str, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        self.metrics.errors.labels(type_).inc()
        return error_response(status, type_, message, headers)

    def _check(self, scope: Scope, path: str) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.settings.max_body_bytes
            except ValueError:
                return self._error(400, "bad_request", "invalid Content-Length header")
            if too_big:
                return self._error(413, "body_too_large", self._too_large_message())
        if not path.startswith("/v1/"):
            return None
        who = None
        if self.settings.api_keys:
            key = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if key is None and auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
            if not key:
                return self._error(
                    401, "unauthorized",
                    "an API key is required: send it in X-API-Key or Authorization: Bearer",
                    {"WWW-Authenticate": "Bearer"},
                )
            match = None
            for valid in self.settings.api_keys:
                if hmac.compare_digest(key.encode(), valid.encode()):
                    match = valid
            if match is None:
                return self._error(
                    401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"}
                )
            who = "key:" + match
        if self.buckets is not None:
            if who is None:
                client = scope.get("client")
                who = "addr:" + (client[0] if client else "?")
            wait = self.buckets.take(who)
            if wait > 0:
                return self._error(
                    429, "rate_limited",
                    f"rate limit of {self.settings.rate_limit_per_s:g} requests/s exceeded",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return None


# -- the app --------------------------------------------------------------------------------------
@dataclass
class ServiceState:
    """What the request handlers share."""

    backends: dict[str, Backend]
    settings: ServiceSettings
    metrics: ServiceMetrics
    in_flight: int = 0
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)

    def backend_for(self, task: str | None) -> tuple[str, Backend]:
        if task is None:
            if len(self.backends) == 1:
                return next(iter(self.backends.items()))
            raise ApiError(
                422, "bad_input",
                f"this service serves several tasks; give 'task': one of {sorted(self.backends)}",
            )
        if task not in self.backends:
            raise ApiError(
                404, "unknown_task", f"unknown task {task!r}; tasks: {sorted(self.backends)}"
            )
        return task, self.backends[task]


def _warm_up(backend: Backend) -> None:
    """Call ``warm_up()`` on every backend of ``backend``'s tree (routers and wrappers too)."""
    for b in backend.walk():
        try:
            b.warm_up()
        except Exception as exc:  # the first request will report it properly
            log.warning("warm-up of %s failed: %s", b.name, exc)


def _batcher(
    backend: Backend, settings: ServiceSettings, metrics: ServiceMetrics, task: str, name: str
) -> MicroBatcher:
    histogram = metrics.batch_size.labels(task, name)
    return MicroBatcher(
        backend,
        max_wait_ms=settings.microbatch_wait_ms,
        max_batch=settings.microbatch_max,
        on_batch=histogram.observe,
    )


def create_app(
    backends: Backend | Sequence[Backend] | Mapping[str, Backend],
    settings: ServiceSettings | None = None,
    *,
    metrics: ServiceMetrics | None = None,
    close_backends: bool = True,
    review_store: Store | None = None,
) -> FastAPI:
    """A FastAPI app serving one backend (usually a `Router`) per task.

    ``backends`` may be one backend, a list (keyed by their task names) or a mapping
    task name → backend. Routers get their student micro-batched and report to /metrics.
    With ``review_store``, the review page (``GET /review``) and its API (``/v1/review/*``)
    are served too (`llmclf.service.review_api`).

    Example:
        >>> app = create_app(Router.from_yaml("router.yaml"))            # doctest: +SKIP
    """
    settings = settings or ServiceSettings()
    metrics = metrics or ServiceMetrics()
    if isinstance(backends, Backend):
        by_task = {backends.task.name: backends}
    elif isinstance(backends, Mapping):
        by_task = dict(backends)
    else:
        by_task = {}
        for b in backends:
            if b.task.name in by_task:
                raise ConfigError(f"two backends serve task {b.task.name!r}")
            by_task[b.task.name] = b
    if not by_task:
        raise ConfigError("create_app needs at least one backend")
    state = ServiceState(backends=by_task, settings=settings, metrics=metrics)
    stores = _stores_of(by_task.values(), review_store)
    for st in stores:
        st.health.on_error.append(lambda kind: metrics.store_errors.labels(kind).inc())
    for task_name, backend in list(by_task.items()):
        metrics.watch(backend, task_name)
        if settings.microbatch:
            # the parts that answer a batch in one pass (a router's student, a bare student);
            # an LLM answers text by text: a batch would wait for its slowest call
            def batcher(name: str, b: Backend, task_name: str = task_name) -> Backend:
                bt = _batcher(b, settings, metrics, task_name, name)
                state.batchers[f"{task_name}/{name}"] = bt
                return bt

            by_task[task_name] = backend.microbatched(batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # load what the backends load lazily (litellm, instructor: seconds) before the first
        # request, not during it
        for b in list(state.backends.values()):
            await asyncio.to_thread(_warm_up, b)
        for st in stores:  # write what a stopped process left spooled (in the background)
            writer = await asyncio.to_thread(review_writer, st)
            writer.on_pending.append(metrics.review_spooled.set)
            metrics.review_spooled.set(writer.pending)
        yield
        if close_backends:
            for b in state.backends.values():
                with contextlib.suppress(Exception):
                    b.close()

    app = FastAPI(
        title="llmclf",
        summary="Text classification: a distilled student first, an LLM when it matters.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(GuardMiddleware, settings=settings, metrics=metrics)

    def count_error(type_: str) -> None:
        metrics.errors.labels(type_).inc()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        count_error(exc.type)
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_error("invalid_request")
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the body could not be parsed: it must be UTF-8 JSON"
        count_error(type_)
        return error_response(exc.status_code, type_, message, exc.headers)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERRORS,
        summary="Classify one text or a batch",
    )
    async def classify(body: ClassifyRequest) -> Response:
        task_name, backend = state.backend_for(body.task)
        texts = [body.text] if body.text is not None else list(body.texts or [])
        if len(texts) > settings.max_batch_size:
            raise ApiError(
                413, "batch_too_large",
                f"{len(texts)} texts in one request; the limit is {settings.max_batch_size}",
            )
        try:
            texts = validate_texts(texts, backend.task.max_text_chars)
        except ConfigError as exc:
            raise ApiError(422, "bad_input", str(exc)) from None
        hints = Hints(**body.hints.model_dump()) if body.hints is not None else None
        if state.in_flight >= settings.max_in_flight:
            raise ApiError(
                503, "overloaded",
                f"{state.in_flight} requests in flight (the limit is {settings.max_in_flight}); "
                "retry later",
                {"Retry-After": str(settings.retry_after_s)},
            )
        state.in_flight += 1
        metrics.in_flight.inc()
        try:
            preds = await backend.apredict_batch(texts, hints)
        except ConfigError as exc:
            raise ApiError(422, "bad_input", str(exc)) from None
        except BackendError as exc:
            raise ApiError(502, error_kind(exc), _clip(str(exc))) from None
        except LLMClfError as exc:
            raise ApiError(500, error_kind(exc), _clip(str(exc))) from None
        finally:
            state.in_flight -= 1
            metrics.in_flight.dec()
        metrics.count_texts(task_name, preds)
        out = [p.to_json_dict() for p in preds]
        if body.text is not None:
            return JSONResponse({"task": task_name, "prediction": out[0]})
        return JSONResponse({"task": task_name, "predictions": out})

    @app.get("/v1/tasks", summary="The tasks this service answers", responses=_ERRORS)
    async def tasks() -> dict[str, Any]:
        out = []
        for name, b in state.backends.items():
            t = b.task
            out.append(
                {
                    "name": name,
                    "kind": t.kind,
                    "description": t.description,
                    "labels": [{"name": lab.name, "description": lab.description}
                               for lab in t.labels],
                    "positive_label": t.positive_label,
                    "max_text_chars": t.max_text_chars,
                    "backend": b.name,
                }
            )
        return {"tasks": out}

    @app.get("/healthz", summary="Liveness, and the store's state")
    async def healthz() -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok", "tasks": sorted(state.backends), "in_flight": state.in_flight,
        }  # fmt: skip
        if stores:
            store = _store_state(stores)
            out["store"] = store
            if not store["ok"] or store["spooled"]:
                out["status"] = "degraded"
        return out

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if review_store is not None:
        add_review_routes(app, lambda: review_store, auth_required=bool(settings.api_keys))

    return app


def _stores_of(backends: Any, review_store: Store | None) -> list[Store]:
    """The stores the request path writes to: the review store, the routers' review stores."""
    found: dict[int, Store] = {}
    for st in [review_store, *(getattr(b, "review_store", None) for b in backends)]:
        if isinstance(st, Store):
            found.setdefault(id(st), st)
    return list(found.values())


def _store_state(stores: list[Store]) -> dict[str, Any]:
    """``{"ok", "error", "since", "spooled", "url"}`` of the stores (the first one's URL), as
    the request path last found them (a degraded store is probed in the background)."""
    ok, error, since, spooled = True, None, None, 0
    for st in stores:
        snap = st.health.snapshot()
        if not snap["ok"]:
            ok = False
            error = error or snap["error"]
            since = since or snap["since"]
        spooled += review_writer(st).pending
    return {"ok": ok, "error": error, "since": since, "spooled": spooled, "url": stores[0].path}


def create_review_app(store: Store, settings: Any = None) -> FastAPI:
    """The review page and its API alone (``llmclf review ui``), with the service's guard.

    Example:
        >>> app = create_review_app(open_store(), ServiceSettings(api_keys=frozenset({"k"})))
        ... # doctest: +SKIP
    """
    settings = settings or ServiceSettings()
    app = FastAPI(title="llmclf review", version="1")
    app.add_middleware(GuardMiddleware, settings=settings, metrics=ServiceMetrics())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    add_review_routes(app, lambda: store, auth_required=bool(settings.api_keys))
    return app


def _clip(message: str, limit: int = 2000) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing" and not where:
            msg = "a JSON body is required"
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


__all__ = [
    "ApiError",
    "ClassifyRequest",
    "ClassifyResponse",
    "GuardMiddleware",
    "ServiceSettings",
    "ServiceState",
    "TokenBuckets",
    "create_app",
    "create_review_app",
    "error_response",
]
