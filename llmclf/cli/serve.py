"""``llmclf serve``: the HTTP service (FastAPI on uvicorn) in front of one or more routers.

Example:
    $ llmclf serve --router router.yaml --port 8000
    $ llmclf serve --router router.yaml --workers 4 --db postgresql://llmclf@db/llmclf
    $ llmclf serve --router router.yaml --ray --replicas 2
    $ llmclf serve --router router.yaml --ray --ray-address auto --autoscale 1,8
    $ curl -s localhost:8000/v1/classify -H 'content-type: application/json' \\
        -d '{"text": "a gorgeous, witty film"}'
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmclf.cli.common import use_db
from llmclf.errors import ConfigError
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
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve as a Ray Serve application: the router in an ingress deployment, the "
            "student in a micro-batching deployment, the LLM in its own (needs llmclf[ray]).",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --ray: the cluster to join (auto, HOST:PORT, ray://HOST:10001); "
            "default: start a local Ray instance."
        ),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(min=1, help="With --ray: replicas of the student deployment.")
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(help="With --ray: autoscale the student deployment between MIN,MAX replicas."),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="With --ray: print a Ray Serve config file (for serve run / serve deploy) "
            "instead of serving.",
        ),
    ] = False,
) -> None:
    """Serve routers over HTTP: POST /v1/classify, GET /v1/tasks, /review, /healthz, /metrics,
    /docs."""
    import uvicorn

    from llmclf.router import Router
    from llmclf.service import ServiceSettings, create_app
    from llmclf.service.workers import WorkerSpec, api_keys_from_env, run_workers
    from llmclf.store import open_store

    # a config file written for a cluster names the keys' variable; it need not be set here
    keys = frozenset() if ray and print_config else api_keys_from_env(api_key_env)
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
    if ray and print_config:  # for the cluster's replicas: not reached from here
        if store:
            os.environ[ENV_VAR] = store
    else:
        use_db(store)
    auth = f"; API key from ${api_key_env}" if keys else ""
    ray_flags = [f for f, on in (("--ray-address", ray_address is not None),
                                  ("--replicas", replicas is not None),
                                  ("--autoscale", autoscale is not None),
                                  ("--print-config", print_config)) if on]  # fmt: skip
    if ray:
        if workers > 1:
            raise ConfigError("--workers and --ray: Ray Serve runs the replicas; give one")
        from llmclf.service.ray_app import ray_args

        args = ray_args(
            [str(p) for p in router], options, api_key_env,
            replicas=replicas, autoscale=autoscale, with_secrets=not print_config,
        )  # fmt: skip
        if print_config:
            _print_ray_config(args, host, port)
            return
        _serve_ray(args, ray_address, host, port, auth)
        return
    if ray_flags:
        raise ConfigError(f"{', '.join(ray_flags)} need --ray")
    from llmclf.backends.local_server import serving_threads_default
    from llmclf.backends.setfit import serving_student_defaults

    serving_threads_default()  # escalations to llm:local keep making progress under load
    serving_student_defaults(processes=workers)  # the workers share the cores, none spins
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
        )
        if review_store is None:
            review_store = st if st is not None else open_store()
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


def _print_ray_config(args: Any, host: str, port: int) -> None:
    import yaml

    from llmclf.service.ray_app import serve_config

    typer.echo(
        "# Ray Serve config written by `llmclf serve --ray --print-config`:\n"
        "#   serve run THIS.yaml            (or: serve deploy THIS.yaml on a running cluster)\n"
        "# Every node needs llmclf[ray] installed, the router files at these paths, and the\n"
        "# store in LLMCLF_DATABASE_URL (a shared PostgreSQL on several machines)."
        + (f"\n# Set ${args.api_key_env} (the API keys) on every node." if args.api_key_env
           else "")
    )
    typer.echo(yaml.safe_dump(serve_config(args, host=host, port=port), sort_keys=False))


def _serve_ray(args: Any, address: str | None, host: str, port: int, auth: str) -> None:
    from llmclf.service.ray_app import run_ray_serve

    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    typer.echo(f"llmclf: deploying {', '.join(args.routers)} on {where}...", err=True)
    sys.stderr.flush()

    def ready() -> None:
        typer.echo(
            f"llmclf: serving on http://{host}:{port} through Ray Serve (docs at /docs, "
            f"review page at /review{auth}); Ctrl-C stops it",
            err=True,
        )
        sys.stderr.flush()

    run_ray_serve(args, address=address, host=host, port=port, on_ready=ready)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
