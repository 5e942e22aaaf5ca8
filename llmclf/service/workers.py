"""``llmclf serve --workers N``: N uvicorn worker processes behind one port, sharing one store.

The supervisor (the ``llmclf serve`` process) checks every router once, starts the embedded LLM
server once if a router uses ``llm:local`` (the workers find it through its state file and
share it; the supervisor stops it at exit), points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory so ``/metrics`` adds up every worker, and hands the workers what to serve in
``$LLMCLF_SERVE_SPEC`` (router paths and settings; API keys stay in their own variable). The
store comes from ``$LLMCLF_DATABASE_URL``: a SQLite file in WAL mode or PostgreSQL; review
writes are idempotent by request id, so rows written by any worker land once.

Example:
    $ llmclf serve --router router.yaml --workers 4 --db postgresql://llmclf@db/llmclf
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmclf.errors import ConfigError

__all__ = ["MULTIPROC_ENV", "SPEC_ENV", "WorkerSpec", "create_worker_app", "run_workers"]

#: What the workers serve (JSON of a `WorkerSpec`).
SPEC_ENV = "LLMCLF_SERVE_SPEC"
#: How long a worker may take to answer uvicorn's health ping before it is replaced.
HEALTHCHECK_TIMEOUT_S = 120
#: prometheus_client's multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class WorkerSpec:
    """What every worker builds: routers from YAML files, service settings, the API-key variable
    (the keys themselves are read from the environment by each worker, never written here)."""

    routers: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerSpec:
        raw = os.environ.get(SPEC_ENV)
        if not raw:
            raise ConfigError(f"${SPEC_ENV} is not set: start workers with llmclf serve --workers")
        return cls(**json.loads(raw))


def api_keys_from_env(api_key_env: str | None) -> frozenset[str]:
    """The API keys in ``$api_key_env`` (comma-separated); an empty variable is an error."""
    if not api_key_env:
        return frozenset()
    raw = os.environ.get(api_key_env, "")
    keys = frozenset(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is empty")
    return keys


def create_worker_app() -> Any:
    """The app of one worker (a uvicorn factory): `create_app` over the spec's routers."""
    from llmclf.router import Router
    from llmclf.service.app import ServiceSettings, create_app

    spec = WorkerSpec.from_env()
    settings = ServiceSettings(**spec.settings, api_keys=api_keys_from_env(spec.api_key_env))
    routers: list[Router] = []
    try:
        for path in spec.routers:
            routers.append(Router.from_yaml(path))
        return create_app(routers, settings)
    except BaseException:
        for r in routers:
            r.close()
        raise


def _check_and_start_shared(router_paths: list[str]) -> None:
    """Build every router once here (a bad config fails now, not in N crash-looping workers);
    start the embedded LLM server once when a router uses it, for the workers to share."""
    from llmclf.backends.local_server import LocalServer
    from llmclf.router import Router

    for path in router_paths:
        Router.from_yaml(path).close()
    if LocalServer.in_use():
        LocalServer.shared().ensure_running()


def run_workers(
    spec: WorkerSpec, *, workers: int, host: str, port: int, log_level: str = "warning"
) -> None:
    """Serve ``spec`` with ``workers`` uvicorn processes on ``host:port`` until stopped."""
    import uvicorn

    if workers < 2:
        raise ConfigError(f"run_workers needs at least 2 workers, got {workers}")
    spec.routers = [str(Path(p).resolve()) for p in spec.routers]
    _check_and_start_shared(spec.routers)
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="llmclf-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    else:  # a directory the user chose: start from zero, as a fresh set of workers should
        mp = Path(os.environ[MULTIPROC_ENV])
        mp.mkdir(parents=True, exist_ok=True)
        for f in mp.glob("*.db"):
            f.unlink()
    os.environ[SPEC_ENV] = spec.to_json()
    try:
        uvicorn.run(
            "llmclf.service.workers:create_worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            # a worker imports litellm and loads its routers before it answers uvicorn's
            # health ping; on a busy machine that takes longer than uvicorn's default 5 s
            timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S,
        )
    finally:
        if own_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(own_dir)
