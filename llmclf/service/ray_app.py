"""``llmclf serve --ray``: the service as a Ray Serve application (the optional extra ``ray``).

```
HTTP ──► Serve proxy ──► ingress (create_app: the same endpoints, JSON, errors, auth, /healthz,
                          │        /metrics, /review; the router's policies run here: cascade,
                          │        thresholds, hints, fallbacks, shadow, review writes)
                          ├─► student deployment: N replicas (or autoscaled), @serve.batch
                          │   merges concurrent requests into one predict_batch
                          └─► LLM deployment: every ``llm:`` backend apart, so it scales (and
                              takes its CPU) apart from the student
```

Inside the ingress the router is the one `llmclf serve` builds from the same YAML; only the
backends that run in a deployment are swapped for a `RemoteBackend`, a `Backend` that forwards
``predict_batch`` to the deployment's handle (and retries on another replica when the one it
called died). Which backends are deployed: a router's micro-batched backends (its cascade's
student, or ``microbatch: true``) each get a student deployment; every other ``llm:`` backend
gets an LLM deployment; anything else (a nested ``router:``) runs in the ingress.

The same application is built by `app_builder` from a dict of `RayAppArgs`, so a config file
(``llmclf serve --ray --print-config``) deploys it with ``serve run`` / ``serve deploy``. The
store of the review queue and the cache comes from ``$LLMCLF_DATABASE_URL`` on every replica
(a shared PostgreSQL on a cluster of several machines; a SQLite file suits one machine).

Example:
    $ llmclf serve --ray --router router.yaml --replicas 2
    $ llmclf serve --ray --ray-address auto --router router.yaml --autoscale 1,8
    $ llmclf serve --ray --router router.yaml --replicas 2 --print-config > serve.yaml
    $ serve deploy serve.yaml
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import signal
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.backends.local_server import THREADS_ENV
from llmclf.backends.setfit import ORT_SPIN_ENV, ORT_THREADS_ENV
from llmclf.errors import BackendError, ConfigError
from llmclf.router.config import load_router_config, make_named_backend
from llmclf.specs import parse_spec
from llmclf.types import Prediction

__all__ = [
    "APP_NAME",
    "IMPORT_PATH",
    "INGRESS",
    "DeployedBackend",
    "RayAppArgs",
    "RemoteBackend",
    "app_builder",
    "plan_deployments",
    "ray_args",
    "run_ray_serve",
    "serve_config",
]

log = logging.getLogger("llmclf.service.ray")

#: The Serve application's name.
APP_NAME = "llmclf"
#: The ingress deployment's name.
INGRESS = "ingress"
#: What a Serve config file imports to build the application.
IMPORT_PATH = "llmclf.service.ray_app:app_builder"
#: Times a call is sent again (to another replica) when the replica it went to died.
REPLICA_RETRIES = 3
#: Store variables every replica is given (what ``--db`` / ``$LLMCLF_HOME`` set).
STORE_ENV = ("LLMCLF_DATABASE_URL", "LLMCLF_HOME")
#: Serve's logs: warnings and errors, no access log line per request.
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


class RayAppArgs(BaseModel):
    """What `app_builder` builds: the routers (YAML paths every node can read), the service
    settings (`ServiceSettings` fields, without the keys), the variable holding the API keys,
    and how the deployments scale.

    ``replicas`` or ``autoscale`` (``[min, max]``) size the student deployments;
    ``max_batch_size``/``batch_wait_timeout_s`` are their ``@serve.batch`` (``1`` turns batching
    off); ``*_num_cpus`` are what Ray reserves per replica; ``env`` is set on every replica.

    Example:
        >>> RayAppArgs(routers=["router.yaml"], autoscale=(1, 4)).autoscale
        (1, 4)
    """

    model_config = ConfigDict(extra="forbid")

    routers: list[str] = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    api_key_env: str | None = None
    replicas: int = Field(default=1, ge=1)
    autoscale: tuple[int, int] | None = None
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0)
    student_max_ongoing_requests: int | None = Field(default=None, ge=1)
    llm_replicas: int = Field(default=1, ge=1)
    llm_max_ongoing_requests: int = Field(default=32, ge=1)
    ingress_max_ongoing_requests: int | None = Field(default=None, ge=1)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    student_num_cpus: float = Field(default=0.5, ge=0)
    llm_num_cpus: float = Field(default=0.5, ge=0)
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> RayAppArgs:
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if lo < 1 or hi < lo:
                raise ValueError(f"autoscale: need 1 <= MIN <= MAX, got {lo},{hi}")
        if "api_keys" in self.settings:
            raise ValueError("settings: give the keys' variable in api_key_env, not the keys")
        return self


@dataclass(frozen=True)
class DeployedBackend:
    """One backend of one router that runs in its own deployment."""

    router: str
    backend: str
    kind: Literal["student", "llm"]
    deployment: str


def plan_deployments(routers: Sequence[str]) -> list[DeployedBackend]:
    """Which backends of ``routers`` get a deployment, and its name (the backend's name; with
    several routers, ``r<i>-<name>``). Reads the configs only (errors name file, line, field).

    Example:
        >>> [(d.backend, d.kind) for d in plan_deployments(["router.yaml"])]  # doctest: +SKIP
        [('student', 'student'), ('llm', 'llm')]
    """
    out: list[DeployedBackend] = []
    for i, path in enumerate(routers):
        config = load_router_config(path).config
        if config.shortlist is not None:
            raise ConfigError(
                f"{path}: shortlist: not supported with --ray (a shortlisted LLM asks the "
                "student in its own process); serve this router without --ray"
            )
        for name, entry in config.backends.items():
            micro = entry.microbatch
            if micro is None:
                micro = config.cascade is not None and name == config.cascade.student
            kind: Literal["student", "llm"]
            if micro:
                kind = "student"
            elif parse_spec(entry.spec)[0] == "llm":
                kind = "llm"
            else:
                continue
            deployment = name if len(routers) == 1 else f"r{i}-{name}"
            if deployment == INGRESS:
                deployment = f"backend-{name}"
            out.append(DeployedBackend(path, name, kind, deployment))
    return out


# -- the deployments ------------------------------------------------------------------------------
def _portable(exc: BaseException, name: str) -> Exception:
    """``exc`` if it survives pickling (Ray sends it to the caller), else a `BackendError`."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return BackendError(f"{type(exc).__name__}: {exc}", backend=name)
    return exc if isinstance(exc, Exception) else BackendError(str(exc), backend=name)


def _about(backend: Backend) -> dict[str, Any]:
    """What the ingress's `RemoteBackend` copies from the backend a deployment serves."""
    return {
        "name": backend.name,
        "task": backend.task,
        "escalation_threshold": backend.escalation_threshold,
        "calibration": backend.calibration,
        "batches": backend.capabilities.batches,
    }


def _build_backend(router: str, name: str) -> Backend:
    from llmclf.backends.registry import make_backend

    backend = make_named_backend(load_router_config(router), name, make_backend=make_backend)
    try:
        backend.warm_up()
    except Exception as exc:  # the first request reports it properly
        log.warning("warm-up of %s failed: %s", backend.name, exc)
    return backend


def _texts_in(requests: list[list[str]]) -> int:
    return sum(len(r) for r in requests)


class StudentReplica:
    """A replica of a student: concurrent calls are merged by ``@serve.batch`` (up to
    ``max_batch_size`` texts, waiting at most ``batch_wait_timeout_s``) into one
    ``predict_batch`` on its own thread, while the next batch fills."""

    def __init__(
        self, router: str, backend: str, max_batch_size: int, batch_wait_timeout_s: float
    ) -> None:
        self.backend = _build_backend(router, backend)
        self.max_batch_size = max_batch_size
        self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-student")
        #: how many predict_batch calls this replica made, by number of texts
        self.sizes: Counter[int] = Counter()

    def describe(self) -> dict[str, Any]:
        return _about(self.backend)

    def batch_sizes(self) -> dict[int, int]:
        """This replica's ``predict_batch`` calls so far, by number of texts."""
        return dict(self.sizes)

    async def _run(self, texts: list[str]) -> list[Prediction]:
        self.sizes[len(texts)] += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.backend.predict_batch, texts, None)
        except Exception as exc:
            raise _portable(exc, self.backend.name) from None

    async def predict(self, texts: list[str], hints: Hints | None = None) -> list[Prediction]:
        if len(texts) >= self.max_batch_size:  # already a full batch
            return await self._run(list(texts))
        return await self._batched(list(texts))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, batch_size_fn=_texts_in)
    async def _batched(self, requests: list[list[str]]) -> list[list[Prediction]]:
        preds = await self._run([t for r in requests for t in r])
        out: list[list[Prediction]] = []
        i = 0
        for r in requests:
            out.append(preds[i : i + len(r)])
            i += len(r)
        return out


class LLMReplica:
    """A replica of an LLM backend: each call answered on its own (an LLM answers text by text;
    a batch would wait for its slowest call), ``max_ongoing_requests`` at once."""

    def __init__(self, router: str, backend: str) -> None:
        self.backend = _build_backend(router, backend)

    def describe(self) -> dict[str, Any]:
        return _about(self.backend)

    async def predict(self, texts: list[str], hints: Hints | None = None) -> list[Prediction]:
        try:
            return await self.backend.apredict_batch(list(texts), hints)
        except Exception as exc:
            raise _portable(exc, self.backend.name) from None


# -- the ingress side -----------------------------------------------------------------------------
class RemoteBackend(Backend):
    """A backend served by a deployment: ``predict_batch`` goes to the deployment's handle.

    It carries what the router reads from the backend it stands for (name, task, calibrated
    escalation threshold, calibrator). A call whose replica died (killed, its node lost) is
    sent again, up to ``retries`` times; Ray routes it to a live replica.

    Example:
        >>> remote = RemoteBackend(handle, await handle.describe.remote())  # doctest: +SKIP
        >>> (await remote.apredict_batch(["a great film"]))[0].label
        'positive'
    """

    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True)

    def __init__(self, handle: Any, about: dict[str, Any], *, retries: int = REPLICA_RETRIES):
        self.handle = handle
        self.name = str(about["name"])
        self.task = about["task"]
        self.escalation_threshold = about.get("escalation_threshold")
        self.calibration = about.get("calibration")
        self.retries = retries

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        for attempt in range(self.retries + 1):
            try:
                return list(await self.handle.predict.remote(list(texts), hints))
            except _replica_gone() as exc:
                if attempt == self.retries:
                    raise BackendError(
                        f"every replica tried died ({type(exc).__name__})", backend=self.name
                    ) from None
                log.warning("%s: a replica died (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        """Blocking form, for a caller outside an event loop."""
        for attempt in range(self.retries + 1):
            try:
                return list(self.handle.predict.remote(list(texts), hints).result())
            except _replica_gone() as exc:
                if attempt == self.retries:
                    raise BackendError(
                        f"every replica tried died ({type(exc).__name__})", backend=self.name
                    ) from None
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


def _replica_gone() -> tuple[type[BaseException], ...]:
    """The errors of a call whose replica died or left before answering (worth a retry)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    return (RayActorError, ReplicaUnavailableError)


class RemoteStudent(RemoteBackend):
    """A `RemoteBackend` for a student: it answers a batch in one pass."""

    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True, batches=True)


class Ingress:
    """The ingress replica: the routers of ``args`` with their deployed backends swapped for
    `RemoteBackend`s, served by `create_app` (built when the replica starts)."""

    def __init__(self, args: dict[str, Any], handles: dict[str, Any]) -> None:
        self.args = RayAppArgs.model_validate(args)
        self.handles = handles

    async def __serve_build_asgi_app__(self) -> Any:
        from llmclf.router import Router
        from llmclf.service.app import ServiceSettings, create_app
        from llmclf.service.workers import api_keys_from_env
        from llmclf.store import open_store

        a = self.args
        settings = ServiceSettings(
            **{**a.settings, "microbatch": False},  # the student deployment batches
            api_keys=api_keys_from_env(a.api_key_env),
        )
        plan = plan_deployments(a.routers)
        routers: list[Router] = []
        try:
            for path in a.routers:
                given: dict[str, Backend] = {}
                for d in plan:
                    if d.router != path:
                        continue
                    handle = self.handles[d.deployment]
                    about = await handle.describe.remote()
                    kind = RemoteStudent if d.kind == "student" else RemoteBackend
                    given[d.backend] = kind(handle, about)
                routers.append(Router.from_yaml(path, backends=given))
            review_store = next(
                (r.review_store for r in routers if r.review_store is not None), None
            )
            if review_store is None:
                review_store = open_store()
            return create_app(routers, settings, review_store=review_store)
        except BaseException:
            for r in routers:
                r.close()
            raise


# -- building the application ---------------------------------------------------------------------
def deployment_options(
    args: RayAppArgs, plan: Sequence[DeployedBackend]
) -> dict[str, dict[str, Any]]:
    """Each deployment's Serve options (name, replicas or autoscaling, max_ongoing_requests,
    CPUs), by name: what the application is built with and what a config file lists."""
    max_in_flight = int(args.settings.get("max_in_flight", 512))
    out: dict[str, dict[str, Any]] = {
        INGRESS: {
            "name": INGRESS,
            "num_replicas": 1,
            "max_ongoing_requests": args.ingress_max_ongoing_requests or max_in_flight,
            "ray_actor_options": {"num_cpus": args.ingress_num_cpus},
        }
    }
    for d in plan:
        if d.kind == "student":
            opts: dict[str, Any] = {
                "name": d.deployment,
                # room for a full batch being answered while the next one fills
                "max_ongoing_requests": args.student_max_ongoing_requests
                or 2 * args.max_batch_size,
                "ray_actor_options": {"num_cpus": args.student_num_cpus},
            }
            if args.autoscale is not None:
                lo, hi = args.autoscale
                opts["autoscaling_config"] = {
                    "min_replicas": lo,
                    "max_replicas": hi,
                    "target_ongoing_requests": max(1, args.max_batch_size // 2),
                }
            else:
                opts["num_replicas"] = args.replicas
        else:
            opts = {
                "name": d.deployment,
                "num_replicas": args.llm_replicas,
                "max_ongoing_requests": args.llm_max_ongoing_requests,
                "ray_actor_options": {"num_cpus": args.llm_num_cpus},
            }
        out[d.deployment] = opts
    return out


def app_builder(args: dict[str, Any] | RayAppArgs) -> Any:
    """The Serve application of ``args`` (a `RayAppArgs` or its dict): what ``import_path:
    llmclf.service.ray_app:app_builder`` in a Serve config file builds.

    Example:
        >>> serve.run(app_builder({"routers": ["/srv/router.yaml"], "replicas": 2}))
        ... # doctest: +SKIP
    """
    a = args if isinstance(args, RayAppArgs) else RayAppArgs.model_validate(args)
    plan = plan_deployments(a.routers)
    options = deployment_options(a, plan)
    if a.env:
        for opts in options.values():
            opts["ray_actor_options"]["runtime_env"] = {"env_vars": dict(a.env)}
    handles: dict[str, Any] = {}
    for d in plan:
        if d.kind == "student":
            student = serve.deployment(**options[d.deployment])(StudentReplica)
            handles[d.deployment] = student.bind(
                d.router, d.backend, a.max_batch_size, a.batch_wait_timeout_s
            )
        else:
            llm = serve.deployment(**options[d.deployment])(LLMReplica)
            handles[d.deployment] = llm.bind(d.router, d.backend)
    ingress = serve.deployment(**options[INGRESS])(serve.ingress()(Ingress))
    return ingress.bind(a.model_dump(mode="json"), handles)


def store_env(*, with_secrets: bool = True) -> dict[str, str]:
    """The store variables of this process that are set, for the replicas; without secrets,
    the store URL's password is left out (``***``)."""
    from llmclf.storage.url import redact_url

    env = {k: os.environ[k] for k in STORE_ENV if os.environ.get(k)}
    if not with_secrets and "LLMCLF_DATABASE_URL" in env:
        env["LLMCLF_DATABASE_URL"] = redact_url(env["LLMCLF_DATABASE_URL"])
    return env


def ray_args(
    routers: Sequence[str],
    options: dict[str, Any],
    api_key_env: str | None,
    *,
    replicas: int | None = None,
    autoscale: str | None = None,
    with_secrets: bool = True,
) -> RayAppArgs:
    """`RayAppArgs` from ``llmclf serve``'s flags: ``options`` are its `ServiceSettings` fields
    (the micro-batching ones become the student's ``@serve.batch``), ``autoscale`` is
    ``"MIN,MAX"``. The replicas get the store variables, and (``with_secrets``) the API keys.

    Example:
        >>> ray_args(["router.yaml"], {}, None, autoscale="1,4").autoscale   # doctest: +SKIP
        (1, 4)
    """
    if replicas is not None and autoscale is not None:
        raise ConfigError("give --replicas N or --autoscale MIN,MAX, not both")
    bounds: tuple[int, int] | None = None
    if autoscale is not None:
        parts = autoscale.split(",")
        try:
            lo, hi = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"--autoscale {autoscale!r}: expected MIN,MAX (two whole numbers, e.g. 1,4)"
            ) from None
        if lo < 1 or hi < lo:
            raise ConfigError(f"--autoscale {autoscale!r}: need 1 <= MIN <= MAX")
        bounds = (lo, hi)
    settings = {
        k: v for k, v in options.items()
        if k not in ("microbatch", "microbatch_wait_ms", "microbatch_max") and v is not None
    }  # fmt: skip
    env = store_env(with_secrets=with_secrets)
    # a student replica reserves half a CPU: one ONNX Runtime thread that does not spin-wait
    # (see `serving_student_defaults`), unless this environment says otherwise
    env[ORT_THREADS_ENV] = os.environ.get(ORT_THREADS_ENV) or "1"
    env[ORT_SPIN_ENV] = os.environ.get(ORT_SPIN_ENV) or "0"
    # and the embedded LLM one llama.cpp thread (see `serving_threads_default`)
    env[THREADS_ENV] = os.environ.get(THREADS_ENV) or "1"
    if api_key_env and with_secrets and os.environ.get(api_key_env):
        env[api_key_env] = os.environ[api_key_env]
    return RayAppArgs(
        routers=[str(Path(p).resolve()) for p in routers],
        settings=settings,
        api_key_env=api_key_env,
        replicas=replicas or 1,
        autoscale=bounds,
        max_batch_size=int(options.get("microbatch_max", 64)) if options.get("microbatch", True)
        else 1,
        batch_wait_timeout_s=float(options.get("microbatch_wait_ms", 2.0)) / 1000.0,
        env=env,
    )


def serve_config(args: RayAppArgs, *, host: str, port: int) -> dict[str, Any]:
    """A Serve config (``serve run`` / ``serve deploy``) that builds the application of
    ``args``: ``import_path`` is `app_builder`, ``args`` its arguments; every deployment is
    listed with its options (edit them there: ``num_replicas``, ``ray_actor_options``, ...).

    Example:
        >>> cfg = serve_config(RayAppArgs(routers=["/srv/router.yaml"]), host="0.0.0.0",
        ...                    port=8000)                                  # doctest: +SKIP
        >>> [d["name"] for d in cfg["applications"][0]["deployments"]]
        ['ingress', 'student', 'llm']
    """
    plan = plan_deployments(args.routers)
    options = deployment_options(args, plan)
    app: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude={"env"}, exclude_none=True),
        "logging_config": dict(LOGGING),
        "deployments": list(options.values()),
    }
    if args.env:
        app["runtime_env"] = {"env_vars": dict(args.env)}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [app],
    }


# -- running it -----------------------------------------------------------------------------------
def run_ray_serve(
    args: RayAppArgs,
    *,
    address: str | None,
    host: str,
    port: int,
    on_ready: Any = None,
) -> None:
    """Deploy the application of ``args`` and serve it until stopped (Ctrl-C, SIGTERM); then
    delete it, and stop Ray when it was started here.

    ``address``: None starts a local Ray instance; ``auto``, ``HOST:PORT`` or ``ray://...`` joins
    a running cluster. The proxy listens on ``host:port`` of the head node.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = args.model_copy(update={"routers": [str(Path(p).resolve()) for p in args.routers]})
    plan_deployments(args.routers)  # a bad config fails here, not in a crash-looping replica
    local = address is None
    if local:
        # Ray's CPUs are a scheduling budget: on a small machine, enough for every replica
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed(args)))
        ray.init(num_cpus=cpus, include_dashboard=False, namespace="llmclf")
    else:
        ray.init(address=address, namespace="llmclf")
    # SIGTERM (a supervisor, a benchmark) stops like Ctrl-C, so the cleanup below runs; set
    # after ray.init, which installs a handler of its own that aborts the process
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        serve.start(
            http_options={"host": host, "port": port},
            proxy_location="HeadOnly",
            logging_config=dict(LOGGING),
        )
        serve.run(app_builder(args), name=APP_NAME, route_prefix="/", logging_config=dict(LOGGING))
        if on_ready is not None:
            on_ready()
        while True:
            time.sleep(3600)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this
        if not local:  # on a shared cluster: remove the application, leave Serve running
            with contextlib.suppress(Exception):
                serve.delete(APP_NAME)
        # a local instance goes with its replicas, processes and all
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def cpus_needed(args: RayAppArgs) -> float:
    """The CPUs Ray reserves for every replica of ``args``'s application (autoscaled ones at
    their maximum)."""
    total = 0.0
    for opts in deployment_options(args, plan_deployments(args.routers)).values():
        auto = opts.get("autoscaling_config")
        n = auto["max_replicas"] if auto else opts["num_replicas"]
        total += n * float(opts["ray_actor_options"]["num_cpus"])
    return total


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)
