"""``llmclf serve``: the HTTP service (FastAPI on uvicorn) in front of one or more routers.

Example:
    $ llmclf serve --router router.yaml --port 8000
    $ llmclf serve --router router.yaml --workers 4 --db postgresql://llmclf@db/llmclf
    $ curl -s localhost:8000/v1/classify -H 'content-type: application/json' \\
        -d '{"text": "a gorgeous, witty film"}'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmclf.cli.common import use_db
from llmclf.storage.url import ENV_VAR


def serve(
    router: Annotated[
        list[Path],
        typer.Option("--router", "-r", help="Router config YAML; repeat to serve several tasks."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Environment variable holding the API key (several: comma-separated); "
            "/v1/* then needs one in X-API-Key or Authorization: Bearer."
        ),
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option(help="Requests per second allowed per API key (per client without auth)."),
    ] = None,
    rate_burst: Annotated[
        int | None, typer.Option(help="Burst size of the rate limit (default: the rate).")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most texts in one request.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    max_in_flight: Annotated[
        int, typer.Option(help="Requests answered at once; more get 503 + Retry-After.")
    ] = 512,
    batch_wait_ms: Annotated[
        float, typer.Option(help="Micro-batching: longest wait for more texts.")
    ] = 2.0,
    micro_batch: Annotated[int, typer.Option(help="Micro-batching: largest batch.")] = 64,
    no_microbatch: Annotated[
        bool, typer.Option("--no-microbatch", help="Send each request on its own.")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--db",
            "--store",
            envvar=ENV_VAR,
            show_envvar=False,
            help="Store URL of the cache and review queue: sqlite:///PATH or postgresql://...; "
            "default $LLMCLF_DATABASE_URL, else $LLMCLF_HOME/llmclf.db.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes sharing the port and the store; /metrics adds them up "
            "and the embedded LLM server is started once for all.",
        ),
    ] = 1,
) -> None:
    """Serve routers over HTTP: POST /v1/classify, GET /v1/tasks, /review, /healthz, /metrics,
    /docs."""
    import uvicorn

    from llmclf.router import Router
    from llmclf.service import ServiceSettings, create_app
    from llmclf.service.workers import WorkerSpec, api_keys_from_env, run_workers
    from llmclf.store import open_store

    keys = api_keys_from_env(api_key_env)
    options = {
        "rate_limit_per_s": rate_limit,
        "rate_burst": rate_burst,
        "max_body_bytes": max_body_bytes,
        "max_batch_size": max_batch,
        "max_in_flight": max_in_flight,
        "microbatch": not no_microbatch,
        "microbatch_wait_ms": batch_wait_ms,
        "microbatch_max": micro_batch,
    }
    settings = ServiceSettings(api_keys=keys, **options)  # type: ignore[arg-type]
    use_db(store)
    auth = f"; API key from ${api_key_env}" if keys else ""
    if workers > 1:
        typer.echo(
            f"llmclf: starting {workers} workers for {', '.join(str(p) for p in router)} on "
            f"http://{host}:{port} (docs at /docs{auth})",
            err=True,
        )
        sys.stderr.flush()
        spec = WorkerSpec([str(p) for p in router], options, api_key_env)
        run_workers(spec, workers=workers, host=host, port=port, log_level=log_level)
        return
    st = open_store(store) if store else None
    routers: list[Router] = []
    try:
        for path in router:
            routers.append(Router.from_yaml(path, store=st))
        review_store = next(
            (r.review_store for r in routers if r.review_store is not None), None
        ) or (st if st is not None else open_store())
        app = create_app(routers, settings, review_store=review_store)
    except BaseException:
        for r in routers:
            r.close()
        raise
    tasks = ", ".join(r.task.name for r in routers)
    typer.echo(
        f"llmclf: serving {tasks} on http://{host}:{port} (docs at /docs, review page at "
        f"/review{auth})", err=True
    )
    for r in routers:
        if r.threshold_note:
            typer.echo(f"llmclf: {r.task.name}: {r.threshold_note}", err=True)
    sys.stderr.flush()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
