"""``router:CONFIG``: a `Backend` made of backends — the student first, the LLM when it matters.

A router answers every text from one of its named backends and says how it got there:
each `Prediction` it returns carries ``route`` (the names of the backends tried, in order)
and ``route_reason`` (``"student confident 0.97>=0.80"``, ``"escalated: 0.55<0.80"``,
``"latency budget: answered by student ..."``, ``"forced by hint"``,
``"fallback after llm failed: ..."``). ``Prediction.backend`` is the name of the backend that
answered, as the config names it.

What it does, in the order it decides:

1. **Hints** (`Hints`): ``backend`` forces one backend; ``min_confidence`` replaces the cascade
   threshold for the request; ``max_latency_ms`` is a budget no escalation may exceed (the
   student's answer is kept, and the reason says so).
2. **A/B** (``ab``): texts are split between arms by weight, sticky on ``Hints.request_key``
   (else the text), with per-arm stats (`Router.ab_stats`). An arm is a backend name or
   ``cascade``.
3. **Cascade** (``cascade``): the student answers when its top score is at or above the threshold
   (global, or per label; by default the student's calibrated ``escalation_threshold`` from its
   model directory), otherwise the text escalates to ``escalate_to``.
4. **Fallbacks**: when a backend fails or times out, the next in ``fallbacks`` is tried; when
   every one fails, `AllBackendsFailed` names each failure. An escalation whose every backend
   failed keeps the student's answer.
5. **Shadow traffic** (``shadow``): a share of the answered texts also goes to the shadow backend
   on background threads (bounded queue; dropped and counted when full), never delaying the
   answer. Agreement over a sliding window is the drift signal (`Router.shadow_stats`); a warning
   is logged when it falls below ``warn_below``.
6. **Review queue** (``review``): answers below the review threshold are written to the SQLite
   store with text, scores and route, for ``llmclf review``.

Config file (strict; every error names the file, the line and the field; relative paths are
resolved against the config file's directory):

```yaml
task: sst2                      # a task.yaml path or an eval-set name
backends:
  student: setfit:models/sst2   # name: spec, or name: {spec, options, timeout_ms, concurrency}
  llm: llm:local
cascade:
  student: student
  escalate_to: llm
  threshold: 0.8                # or {positive: 0.85, negative: 0.75}; default: the model card's
fallbacks: [llm]
timeouts: {default: 30000, student: 1000}     # milliseconds
shadow: {backend: llm, share: 0.02, window: 500, warn_below: 0.85}
review: {threshold: 0.6}
ab: {arms: {cascade: 0.9, llm: 0.1}}
```

Example:
    >>> router = Router.from_yaml("router.yaml")                     # doctest: +SKIP
    >>> p = router.predict_batch(["a gorgeous, witty film"])[0]
    >>> p.label, p.route, p.route_reason
    ('positive', ('student',), 'student confident 0.97>=0.80')
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.backends.registry import make_backend, parse_spec
from llmclf.errors import (
    AllBackendsFailed,
    BackendError,
    BackendTimeout,
    ConfigError,
    TaskFileError,
    UnknownBackendHint,
)
from llmclf.store import Store, open_store
from llmclf.task_refs import find_task_file, task_candidates
from llmclf.types import Prediction, Task, Usage
from llmclf.yamlfile import _line_for, _line_index, load_model_from_yaml_text

log = logging.getLogger("llmclf.router")

#: The A/B arm name that means "route through the cascade".
CASCADE_ARM = "cascade"

_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"


# -- config model ---------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendEntry(_Strict):
    """One named backend: a spec, options for it, and how the router calls it."""

    spec: str = Field(min_length=3)
    options: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=16, ge=1, le=1024)
    microbatch: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    @field_validator("spec")
    @classmethod
    def _spec_parses(cls, v: str) -> str:
        try:
            parse_spec(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


class CascadeConfig(_Strict):
    """Answer from ``student`` when confident enough, else escalate to ``escalate_to``."""

    student: str
    escalate_to: str
    threshold: float | dict[str, float] | None = None

    @field_validator("threshold")
    @classmethod
    def _in_range(cls, v: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        for x in values:
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"a threshold is a score between 0 and 1, got {x}")
        return v


class ShadowConfig(_Strict):
    """Send ``share`` of the answered texts to ``backend`` too, and track agreement."""

    backend: str
    share: float = Field(default=0.05, ge=0.0, le=1.0)
    window: int = Field(default=500, ge=1)
    warn_below: float = Field(default=0.85, ge=0.0, le=1.0)
    min_samples: int = Field(default=50, ge=1)
    queue_size: int = Field(default=64, ge=1)
    workers: int = Field(default=1, ge=1, le=64)


class ReviewConfig(_Strict):
    """Store answers whose confidence is below ``threshold`` for human review."""

    threshold: float = Field(ge=0.0, le=1.0)
    store: str | None = None


class ABConfig(_Strict):
    """Split traffic between arms (backend names or ``cascade``) by weight."""

    arms: dict[str, float] = Field(min_length=2)
    sticky: Literal["request_key", "text"] = "request_key"

    @field_validator("arms")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            if w <= 0:
                raise ValueError(f"arm {name!r}: a weight must be > 0, got {w}")
        return v


class RouterConfig(_Strict):
    """The whole router file. Cross-references are checked by `Router.from_config`."""

    task: str | None = None
    backends: dict[str, BackendEntry] = Field(min_length=1)
    cascade: CascadeConfig | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeouts: dict[str, float] = Field(default_factory=dict)
    shadow: ShadowConfig | None = None
    review: ReviewConfig | None = None
    ab: ABConfig | None = None
    seed: int | None = None

    @field_validator("backends")
    @classmethod
    def _names(cls, v: dict[str, BackendEntry]) -> dict[str, BackendEntry]:
        import re

        for name in v:
            if not re.match(_NAME_PATTERN, name):
                raise ValueError(f"backend name {name!r} may use letters, digits, '_', '.', '-'")
            if name == CASCADE_ARM:
                raise ValueError(f"{CASCADE_ARM!r} is reserved (the A/B arm for the cascade)")
        return v

    @field_validator("timeouts")
    @classmethod
    def _positive_ms(cls, v: dict[str, float]) -> dict[str, float]:
        for name, ms in v.items():
            if ms <= 0:
                raise ValueError(f"{name}: a timeout is a number of milliseconds > 0, got {ms}")
        return v


# -- stats ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowStats:
    """Shadow-traffic agreement over the sliding window: the drift signal."""

    backend: str
    agreement: float | None
    samples: int
    window: int
    sent: int
    completed: int
    dropped: int
    errors: int
    warn_below: float

    @property
    def below_threshold(self) -> bool:
        return self.agreement is not None and self.agreement < self.warn_below


@dataclass
class ArmStats:
    """Per-arm counters of an A/B split."""

    texts: int = 0
    errors: int = 0
    escalated: int = 0
    latency_ms_total: float = 0.0
    answered_by: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)

    @property
    def mean_latency_ms(self) -> float | None:
        answered = self.texts - self.errors
        return self.latency_ms_total / answered if answered else None


@dataclass
class RouterStats:
    """Counters since start: texts answered, by whom, escalations, fallbacks, failures."""

    texts: int = 0
    answered_by: Counter[str] = field(default_factory=Counter)
    cascade_texts: int = 0
    escalated: int = 0
    budget_kept: int = 0
    fallbacks: int = 0
    failed: int = 0
    reviewed: int = 0
    cache_hits: int = 0

    @property
    def escalation_rate(self) -> float | None:
        """Share of cascade texts that went past the student (escalated, or the student failed)."""
        return self.escalated / self.cascade_texts if self.cascade_texts else None


class RouterListener:
    """Hooks the service's metrics implement; every method is optional (no-op here)."""

    def backend_call(
        self, router: Router, backend: str, texts: int, seconds: float, error: BaseException | None
    ) -> None:
        """One call to one backend finished (``error`` is None on success)."""

    def routed(
        self, router: Router, prediction: Prediction, *, arm: str | None, escalated: bool
    ) -> None:
        """One text got its final answer."""

    def failed(self, router: Router, error: BaseException, texts: int, *, arm: str | None) -> None:
        """A batch of texts could not be answered by any backend."""

    def shadow_compared(self, router: Router, agreed: bool) -> None:
        """A shadow answer came back and was compared."""

    def shadow_dropped(self, router: Router) -> None:
        """A shadow request was dropped because the queue was full."""

    def reviewed(self, router: Router, prediction: Prediction) -> None:
        """A low-confidence answer was stored in the review queue."""


# -- internals ------------------------------------------------------------------------------------
@dataclass
class _Slot:
    name: str
    backend: Backend
    timeout_s: float | None
    executor: ThreadPoolExecutor
    microbatch: bool
    latency_s: float | None = None  # moving average of successful calls

    @property
    def native_async(self) -> bool:
        return self.backend.capabilities.native_async


@dataclass
class _Trace:
    """What happened to one text on its way through the router."""

    route: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass
class _Answer:
    prediction: Prediction
    reason: str
    by: str  # the backend (config name) that answered
    counted: bool = False  # the prediction's usage is already in the trace


def _short(exc: BaseException, limit: int = 200) -> str:
    msg = str(exc).replace("\n", " ")
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}"


def _unit_hash(key: str) -> float:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class _ShadowRunner:
    """Background threads that ask the shadow backend and keep a sliding agreement window."""

    def __init__(self, router: Router, cfg: ShadowConfig, backend: Backend) -> None:
        self.router = router
        self.cfg = cfg
        self.backend = backend
        self._queue: queue.Queue[tuple[str, tuple[str, ...]] | None] = queue.Queue(cfg.queue_size)
        self._window: deque[bool] = deque(maxlen=cfg.window)
        self._lock = threading.Lock()
        self._rng = random.Random(router.config.seed)
        self.sent = self.completed = self.dropped = self.errors = 0
        self._warned = False
        self._threads = [
            threading.Thread(target=self._work, name=f"llmclf-shadow-{i}", daemon=True)
            for i in range(cfg.workers)
        ]
        for t in self._threads:
            t.start()

    def maybe_send(self, text: str, labels: tuple[str, ...]) -> None:
        with self._lock:
            if self.cfg.share <= 0.0 or self._rng.random() >= self.cfg.share:
                return
        try:
            self._queue.put_nowait((text, labels))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self.router._emit("shadow_dropped", self.router)
            return
        with self._lock:
            self.sent += 1

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            text, labels = item
            try:
                (pred,) = self.backend.predict_batch([text], None)
            except Exception as exc:
                with self._lock:
                    self.errors += 1
                log.debug("shadow backend %s failed: %s", self.cfg.backend, _short(exc))
                continue
            agreed = set(pred.labels) == set(labels)
            with self._lock:
                self.completed += 1
                self._window.append(agreed)
                samples = len(self._window)
                agreement = sum(self._window) / samples
                warn = (
                    samples >= min(self.cfg.min_samples, self.cfg.window)
                    and agreement < self.cfg.warn_below
                )
                newly_below = warn and not self._warned
                self._warned = warn
                if newly_below:  # under the lock: stats() never shows a drop not yet logged
                    log.warning(
                        "router %s: shadow agreement with %s fell to %.3f over the last %d "
                        "texts (below %.2f): the student may be drifting",
                        self.router.name, self.cfg.backend, agreement, samples,
                        self.cfg.warn_below,
                    )  # fmt: skip
            self.router._emit("shadow_compared", self.router, agreed)

    def stats(self) -> ShadowStats:
        with self._lock:
            samples = len(self._window)
            return ShadowStats(
                backend=self.cfg.backend,
                agreement=(sum(self._window) / samples) if samples else None,
                samples=samples,
                window=self.cfg.window,
                sent=self.sent,
                completed=self.completed,
                dropped=self.dropped,
                errors=self.errors,
                warn_below=self.cfg.warn_below,
            )

    def close(self) -> None:
        """Drop what is still queued and stop the workers (after their current request)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


class _Portal:
    """An event loop on a daemon thread, so the sync `Router.predict_batch` runs the async path."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="llmclf-router", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any) -> Any:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("Router.predict_batch called from the router's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


# -- config resolution ----------------------------------------------------------------------------
def _resolve_spec(spec: str, base_dir: Path) -> str:
    """Make a ``setfit:``/``router:`` path relative to the config file's directory."""
    kind, target, _ = parse_spec(spec)
    if kind in {"setfit", "router"} and not Path(target).expanduser().is_absolute():
        rest = spec[len(kind) + 1 + len(target) :]
        return f"{kind}:{(base_dir / target).as_posix()}{rest}"
    return spec


class _Where:
    """Turns a config location into a `TaskFileError` naming the file and the line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.lines: dict[tuple[Any, ...], int] = {}
        if text is not None:
            with contextlib.suppress(yaml.YAMLError):
                self.lines = _line_index(yaml.compose(text, Loader=yaml.SafeLoader))

    def error(self, loc: tuple[Any, ...], message: str) -> TaskFileError:
        line = _line_for(loc, self.lines) if self.lines else None
        return TaskFileError(
            message, path=self.source, line=line, field=".".join(str(p) for p in loc) or None
        )


# -- the router -----------------------------------------------------------------------------------
class Router(Backend):
    """A backend made of named backends: cascade, hints, fallbacks, shadow, review, A/B.

    Build one with `Router.from_yaml` (or `Router.from_config` with some backends given as
    objects). ``predict_batch`` is thread-safe; ``apredict_batch`` runs on the caller's loop.

    Example:
        >>> router = Router.from_yaml("router.yaml")                     # doctest: +SKIP
        >>> router.predict_batch(["meh"], Hints(max_latency_ms=5))[0].route_reason
        'latency budget: answered by student (0.55<0.80; llm needs ~350 ms, 4 ms left)'
    """

    #: The router's async path never blocks its loop, so other routers await it directly.
    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True)

    def __init__(
        self,
        config: RouterConfig,
        *,
        task: Task,
        backends: Mapping[str, Backend],
        store: Store | None = None,
        name: str = "router",
        source: str = "<config>",
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        self.config = config
        self.task = task
        self.name = name
        self.source = source
        self._store = store
        self._lock = threading.Lock()
        self._listeners: list[RouterListener] = []
        default_timeout = config.timeouts.get("default")
        self._slots: dict[str, _Slot] = {}
        for bname, backend in backends.items():
            entry = config.backends.get(bname)
            ms = entry.timeout_ms if entry and entry.timeout_ms else None
            ms = config.timeouts.get(bname, ms if ms is not None else default_timeout)
            micro = entry.microbatch if entry is not None else None
            if micro is None:
                micro = config.cascade is not None and bname == config.cascade.student
            self._slots[bname] = _Slot(
                name=bname,
                backend=backend,
                timeout_s=ms / 1000.0 if ms else None,
                executor=ThreadPoolExecutor(
                    max_workers=entry.concurrency if entry else 16,
                    thread_name_prefix=f"llmclf-{bname}",
                ),
                microbatch=bool(micro),
            )
        self._thresholds = dict(thresholds or {})
        self._stats = RouterStats()
        self._arm_stats: dict[str, ArmStats] = (
            {arm: ArmStats() for arm in config.ab.arms} if config.ab else {}
        )
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-review")
        self._shadow: _ShadowRunner | None = None
        if config.shadow is not None:
            self._shadow = _ShadowRunner(self, config.shadow, backends[config.shadow.backend])
        self._review_store: Store | None = None
        self._portal: _Portal | None = None
        self._portal_lock = threading.Lock()
        self._closed = False

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        task: Task | None = None,
        store: Store | None = None,
        backends: Mapping[str, Backend] | None = None,
    ) -> Router:
        """Load a router config file and build its backends.

        Example:
            >>> Router.from_yaml("router.yaml").task.name                  # doctest: +SKIP
            'sst2'
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TaskFileError("router config not found", path=str(p)) from None
        except UnicodeDecodeError as exc:
            raise TaskFileError(f"not UTF-8 text ({exc.reason})", path=str(p)) from None
        config = load_model_from_yaml_text(text, RouterConfig, path=str(p))
        return cls.from_config(
            config,
            task=task,
            store=store,
            backends=backends,
            base_dir=p.parent,
            source=str(p),
            text=text,
        )

    @classmethod
    def from_config(
        cls,
        config: RouterConfig | Mapping[str, Any],
        *,
        task: Task | None = None,
        store: Store | None = None,
        backends: Mapping[str, Backend] | None = None,
        base_dir: str | Path = ".",
        source: str = "<config>",
        text: str | None = None,
    ) -> Router:
        """Build a router from a config; ``backends`` supplies ready-made backends by name.

        Example:
            >>> Router.from_config({"backends": {"a": "llm:local"}}, task=task)  # doctest: +SKIP
        """
        if not isinstance(config, RouterConfig):
            config = load_model_from_yaml_text(yaml.safe_dump(dict(config)), RouterConfig,
                                               path=source)
        base = Path(base_dir)
        where = _Where(source, text)
        given = dict(backends or {})
        task = cls._resolve_task(config, task, base, where)
        cls._check_references(config, set(config.backends) | set(given), task, where)
        built: dict[str, Backend] = {}
        try:
            for bname, entry in config.backends.items():
                if bname in given:
                    continue
                spec = _resolve_spec(entry.spec, base)
                built[bname] = make_backend(spec, task, store=store, **entry.options)
        except BaseException:
            for b in built.values():
                with contextlib.suppress(Exception):
                    b.close()
            raise
        all_backends = {**built, **given}
        thresholds = cls._resolve_thresholds(config, task, all_backends, where)
        review_store = store
        if config.review is not None and config.review.store is not None:
            review_path = Path(config.review.store).expanduser()
            if not review_path.is_absolute():
                review_path = base / review_path
            review_store = open_store(review_path)
        router = cls(
            config,
            task=task,
            backends=all_backends,
            store=review_store,
            name=f"router:{source}",
            source=source,
            thresholds=thresholds,
        )
        return router

    @staticmethod
    def _resolve_task(config: RouterConfig, task: Task | None, base: Path, where: _Where) -> Task:
        if config.task is None:
            if task is None:
                raise where.error(("task",), "no task: name a task.yaml path or an eval-set name")
            return task
        try:
            task_path = find_task_file(config.task, base)
        except TaskFileError:
            candidates = ", ".join(str(c) for c in task_candidates(config.task, base))
            raise where.error(
                ("task",), f"task {config.task!r} not found (looked at {candidates})"
            ) from None
        loaded = Task.from_yaml(task_path)
        if task is not None and (
            task.name != loaded.name
            or task.kind != loaded.kind
            or task.label_names != loaded.label_names
        ):
            raise where.error(
                ("task",),
                f"the router serves task {loaded.name!r} {list(loaded.label_names)}, "
                f"but task {task.name!r} {list(task.label_names)} was given",
            )
        return loaded

    @staticmethod
    def _check_references(
        config: RouterConfig, names: set[str], task: Task, where: _Where
    ) -> None:
        known = ", ".join(sorted(names))

        def need(loc: tuple[Any, ...], name: str) -> None:
            if name not in names:
                raise where.error(loc, f"unknown backend {name!r}; the backends are: {known}")

        if config.cascade is not None:
            need(("cascade", "student"), config.cascade.student)
            need(("cascade", "escalate_to"), config.cascade.escalate_to)
            if config.cascade.student == config.cascade.escalate_to:
                raise where.error(("cascade", "escalate_to"), "must differ from cascade.student")
            if isinstance(config.cascade.threshold, dict):
                for label in config.cascade.threshold:
                    if label not in task.label_names:
                        raise where.error(
                            ("cascade", "threshold", label),
                            f"unknown label {label!r}; labels: {', '.join(task.label_names)}",
                        )
        for i, name in enumerate(config.fallbacks):
            need(("fallbacks", i), name)
        for name in config.timeouts:
            if name != "default":
                need(("timeouts", name), name)
        if config.shadow is not None:
            need(("shadow", "backend"), config.shadow.backend)
        if config.ab is not None:
            for arm in config.ab.arms:
                if arm == CASCADE_ARM:
                    if config.cascade is None:
                        raise where.error(
                            ("ab", "arms", arm), "the 'cascade' arm needs a cascade section"
                        )
                    continue
                need(("ab", "arms", arm), arm)
        if config.cascade is None and config.ab is None and not config.fallbacks:
            raise where.error(
                (),
                "nothing to route to: give a cascade, an ab split, or a fallbacks list "
                "(its first backend is the primary one)",
            )

    @staticmethod
    def _resolve_thresholds(
        config: RouterConfig, task: Task, backends: Mapping[str, Backend], where: _Where
    ) -> dict[str, float]:
        if config.cascade is None:
            return {}
        given = config.cascade.threshold
        out: dict[str, float] = {}
        if isinstance(given, float | int):
            return {lab: float(given) for lab in task.label_names}
        if isinstance(given, dict):
            out.update({k: float(v) for k, v in given.items()})
        student = backends[config.cascade.student]
        card: Any = getattr(student, "escalation_threshold", None)
        for lab in task.label_names:
            if lab in out:
                continue
            if isinstance(card, dict) and lab in card:
                out[lab] = float(card[lab])
            elif isinstance(card, float | int):
                out[lab] = float(card)
        missing = [lab for lab in task.label_names if lab not in out]
        if missing:
            raise where.error(
                ("cascade", "threshold"),
                f"no threshold for labels {missing}: set cascade.threshold, or use a student "
                "whose model directory has a calibrated escalation_threshold (router.json)",
            )
        return out

    # -- public API -----------------------------------------------------------------------------
    @property
    def backends(self) -> dict[str, Backend]:
        """The backends by name (after any `wrap_backend`)."""
        return {name: slot.backend for name, slot in self._slots.items()}

    @property
    def thresholds(self) -> dict[str, float]:
        """The cascade threshold for each label (empty without a cascade)."""
        return dict(self._thresholds)

    def children(self) -> list[Backend]:
        return [slot.backend for slot in self._slots.values()]

    def microbatch_backends(self) -> list[str]:
        """Names of the backends that benefit from micro-batching (by default the student)."""
        return [name for name, slot in self._slots.items() if slot.microbatch]

    def wrap_backend(self, name: str, wrap: Callable[[Backend], Backend]) -> Backend:
        """Replace backend ``name`` by ``wrap(backend)`` (e.g. a micro-batcher); returns it."""
        slot = self._slots[name]
        slot.backend = wrap(slot.backend)
        return slot.backend

    def add_listener(self, listener: RouterListener) -> None:
        """Receive routing events (the service's metrics use this)."""
        self._listeners.append(listener)

    def stats(self) -> RouterStats:
        """A copy of the router's counters."""
        with self._lock:
            s = self._stats
            return RouterStats(
                texts=s.texts,
                answered_by=Counter(s.answered_by),
                cascade_texts=s.cascade_texts,
                escalated=s.escalated,
                budget_kept=s.budget_kept,
                fallbacks=s.fallbacks,
                failed=s.failed,
                reviewed=s.reviewed,
                cache_hits=s.cache_hits,
            )

    def ab_stats(self) -> dict[str, ArmStats]:
        """Per-arm counters of the A/B split (empty without one)."""
        with self._lock:
            return {
                arm: ArmStats(
                    texts=a.texts,
                    errors=a.errors,
                    escalated=a.escalated,
                    latency_ms_total=a.latency_ms_total,
                    answered_by=Counter(a.answered_by),
                    labels=Counter(a.labels),
                )
                for arm, a in self._arm_stats.items()
            }

    def shadow_stats(self) -> ShadowStats | None:
        """Shadow agreement over the sliding window (None without shadow traffic)."""
        return self._shadow.stats() if self._shadow is not None else None

    def arm_for(self, text: str, hints: Hints | None = None) -> str | None:
        """The A/B arm a text goes to (sticky on ``request_key``, else on the text)."""
        ab = self.config.ab
        if ab is None:
            return None
        key = text
        if ab.sticky == "request_key" and hints is not None and hints.request_key:
            key = hints.request_key
        u = _unit_hash(key) * sum(ab.arms.values())
        acc = 0.0
        for arm, weight in ab.arms.items():
            acc += weight
            if u < acc:
                return arm
        return next(reversed(ab.arms))

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        with self._portal_lock:
            if self._portal is None:
                self._portal = _Portal()
            portal = self._portal
        result: list[Prediction] = portal.run(self._route(list(texts), hints))
        return result

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        return await self._route(list(texts), hints)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._shadow is not None:
            self._shadow.close()
        if self._portal is not None:
            self._portal.close()
        seen: set[int] = set()
        for slot in self._slots.values():
            slot.executor.shutdown(wait=False, cancel_futures=True)
            if id(slot.backend) not in seen:
                seen.add(id(slot.backend))
                with contextlib.suppress(Exception):
                    slot.backend.close()
        self._io.shutdown(wait=True)

    # -- events ---------------------------------------------------------------------------------
    def _emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, event)(*args, **kwargs)
            except Exception:  # a broken metrics hook must never fail a request
                log.exception("router listener %r failed on %s", listener, event)

    # -- routing --------------------------------------------------------------------------------
    def _remaining_s(self, hints: Hints, start: float) -> float | None:
        if hints.max_latency_ms is None:
            return None
        return hints.max_latency_ms / 1000.0 - (time.perf_counter() - start)

    def _timeout(
        self, name: str, hints: Hints, start: float, *, budget: bool = False
    ) -> float | None:
        """The backend's timeout, capped by the request's latency budget when ``budget``."""
        slot_t = self._slots[name].timeout_s
        remaining = self._remaining_s(hints, start) if budget else None
        if remaining is None:
            return slot_t
        return remaining if slot_t is None else min(slot_t, remaining)

    async def _call(
        self, name: str, texts: list[str], hints: Hints, timeout: float | None
    ) -> list[Prediction]:
        """One call to one backend, with the timeout; reports it to the listeners."""
        slot = self._slots[name]
        sub_hints = (
            Hints(request_key=hints.request_key, request_id=hints.request_id)
            if isinstance(slot.backend, Router)
            else None
        )
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            if timeout is not None and timeout <= 0:
                raise BackendTimeout("no time left in the latency budget", backend=name)
            if slot.native_async:
                coro: Any = slot.backend.apredict_batch(texts, sub_hints)
            else:
                loop = asyncio.get_running_loop()
                coro = loop.run_in_executor(
                    slot.executor,
                    functools.partial(slot.backend.predict_batch, texts, sub_hints),
                )
            try:
                preds = await (asyncio.wait_for(coro, timeout) if timeout is not None else coro)
            except TimeoutError:
                raise BackendTimeout(
                    f"no answer within {timeout * 1000:.0f} ms", backend=name  # type: ignore[operator]
                ) from None
            if len(preds) != len(texts):
                raise BackendError(
                    f"returned {len(preds)} predictions for {len(texts)} texts", backend=name
                )
            return list(preds)
        except Exception as exc:
            error = exc
            raise
        finally:
            seconds = time.perf_counter() - t0
            if error is None:
                slot.latency_s = (
                    seconds if slot.latency_s is None else 0.8 * slot.latency_s + 0.2 * seconds
                )
            self._emit("backend_call", self, name, len(texts), seconds, error)

    async def _chain(
        self,
        names: Sequence[str],
        texts: list[str],
        hints: Hints,
        start: float,
        traces: list[_Trace],
        failures: dict[str, BaseException] | None = None,
        *,
        budget: bool = False,
    ) -> tuple[list[Prediction], str, dict[str, BaseException]]:
        """Try ``names`` in order on the whole batch; the first that answers wins.

        ``budget``: the request's ``max_latency_ms`` caps each call (escalations only)."""
        failures = dict(failures or {})
        for name in dict.fromkeys(names):
            if name in failures:
                continue
            for tr in traces:
                tr.route.append(name)
            try:
                timeout = self._timeout(name, hints, start, budget=budget)
                preds = await self._call(name, texts, hints, timeout)
            except Exception as exc:
                failures[name] = exc
                log.warning("router %s: backend %s failed: %s", self.name, name, _short(exc))
                continue
            return preds, name, failures
        raise AllBackendsFailed(failures)

    @staticmethod
    def _fallback_reason(failures: Mapping[str, BaseException]) -> str:
        names = ", ".join(failures)
        last = list(failures.values())[-1]
        return f"fallback after {names} failed: {_short(last)}"

    def _threshold_for(self, pred: Prediction, hints: Hints) -> tuple[float, str]:
        if hints.min_confidence is not None:
            return hints.min_confidence, " (min_confidence hint)"
        if pred.labels and not pred.abstained:
            return max(self._thresholds[lab] for lab in pred.labels), ""
        return max(self._thresholds.values()), ""

    async def _cascade(
        self, texts: list[str], hints: Hints, start: float, traces: list[_Trace]
    ) -> list[_Answer]:
        cfg = self.config.cascade
        assert cfg is not None
        student, esc = cfg.student, cfg.escalate_to
        escalation_chain = [esc] + [f for f in self.config.fallbacks if f not in (student, esc)]
        for tr in traces:
            tr.route.append(student)
        try:
            spreds = await self._call(student, texts, hints, self._timeout(student, hints, start))
        except Exception as exc:
            log.warning("router %s: student %s failed: %s", self.name, student, _short(exc))
            preds, by, failures = await self._chain(
                escalation_chain, texts, hints, start, traces, failures={student: exc}
            )
            with self._lock:
                self._stats.fallbacks += len(texts)
            reason = self._fallback_reason(failures)
            return [_Answer(p, reason, by) for p in preds]

        answers: list[_Answer | None] = [None] * len(texts)
        low: list[tuple[int, float, float, str]] = []
        for i, p in enumerate(spreds):
            traces[i].usage = traces[i].usage + p.usage
            thr, why = self._threshold_for(p, hints)
            conf = p.confidence
            if conf >= thr:
                answers[i] = _Answer(
                    p, f"{student} confident {conf:.2f}>={thr:.2f}{why}", student, counted=True
                )
            else:
                low.append((i, conf, thr, why))
        if not low:
            return [a for a in answers if a is not None]

        def keep_student(reason_of: Callable[[float, float, str], str]) -> None:
            for i, conf, thr, why in low:
                answers[i] = _Answer(spreds[i], reason_of(conf, thr, why), student, counted=True)

        remaining = self._remaining_s(hints, start)
        estimate = self._slots[esc].latency_s
        too_slow = estimate is not None and remaining is not None and estimate > remaining
        if remaining is not None and (remaining <= 0 or too_slow):
            need = f"{esc} needs ~{estimate * 1000:.0f} ms, " if estimate is not None else ""
            left = max(0.0, remaining * 1000)
            keep_student(
                lambda c, t, w: f"latency budget: answered by {student} "
                f"({c:.2f}<{t:.2f}{w}; {need}{left:.0f} ms left)"
            )
            with self._lock:
                self._stats.budget_kept += len(low)
            return [a for a in answers if a is not None]

        sub_texts = [texts[i] for i, *_ in low]
        sub_traces = [traces[i] for i, *_ in low]
        try:
            preds, by, failures = await self._chain(
                escalation_chain, sub_texts, hints, start, sub_traces, budget=True
            )
        except AllBackendsFailed as exc:
            budget_timeouts = remaining is not None and all(
                isinstance(e, BackendTimeout) for e in exc.failures.values()
            )
            if budget_timeouts:
                spent = (time.perf_counter() - start) * 1000
                keep_student(
                    lambda c, t, w: f"latency budget: {esc} did not answer within the budget "
                    f"({spent:.0f} ms); answered by {student} ({c:.2f}<{t:.2f}{w})"
                )
                with self._lock:
                    self._stats.budget_kept += len(low)
            else:
                detail = "; ".join(f"{n}: {_short(e, 120)}" for n, e in exc.failures.items())
                keep_student(
                    lambda c, t, w: f"escalation failed ({detail}); "
                    f"answered by {student} ({c:.2f}<{t:.2f}{w})"
                )
                with self._lock:
                    self._stats.fallbacks += len(low)
            return [a for a in answers if a is not None]
        for (i, conf, thr, why), p in zip(low, preds, strict=True):
            reason = f"escalated: {conf:.2f}<{thr:.2f}{why}"
            if failures:
                reason += "; " + self._fallback_reason(failures)
            answers[i] = _Answer(p, reason, by)
        if failures:
            with self._lock:
                self._stats.fallbacks += len(low)
        return [a for a in answers if a is not None]

    async def _direct(
        self,
        first: str,
        texts: list[str],
        hints: Hints,
        start: float,
        traces: list[_Trace],
        reason: str,
        *,
        fallbacks: bool = True,
    ) -> list[_Answer]:
        names = [first, *self.config.fallbacks] if fallbacks else [first]
        preds, by, failures = await self._chain(names, texts, hints, start, traces)
        if failures:
            reason = self._fallback_reason(failures)
            with self._lock:
                self._stats.fallbacks += len(texts)
        return [_Answer(p, reason, by) for p in preds]

    async def _route_group(
        self, texts: list[str], hints: Hints, start: float, arm: str | None
    ) -> list[Prediction]:
        traces = [_Trace() for _ in texts]
        try:
            if hints.backend is not None:
                answers = await self._direct(
                    hints.backend, texts, hints, start, traces, "forced by hint", fallbacks=False
                )
            elif arm is not None and arm != CASCADE_ARM:
                answers = await self._direct(arm, texts, hints, start, traces, "primary backend")
            elif self.config.cascade is not None:
                answers = await self._cascade(texts, hints, start, traces)
            else:
                answers = await self._direct(
                    self.config.fallbacks[0], texts, hints, start, traces, "primary backend"
                )
        except Exception as exc:
            with self._lock:
                self._stats.failed += len(texts)
                if arm is not None:
                    self._arm_stats[arm].texts += len(texts)
                    self._arm_stats[arm].errors += len(texts)
            self._emit("failed", self, exc, len(texts), arm=arm)
            raise
        latency_ms = (time.perf_counter() - start) * 1000
        reason_prefix = "" if arm is None else f"ab arm {arm}: "
        out = []
        for ans, tr in zip(answers, traces, strict=True):
            p = ans.prediction
            out.append(
                p.model_copy(
                    update={
                        "backend": ans.by,
                        "route": tuple(tr.route),
                        "route_reason": reason_prefix + ans.reason,
                        "latency_ms": latency_ms,
                        "usage": tr.usage if ans.counted else tr.usage + p.usage,
                    }
                )
            )
        return out

    async def _route(self, texts: list[str], hints: Hints | None) -> list[Prediction]:
        if self._closed:
            raise BackendError("the router is closed", backend=self.name)
        hints = hints or Hints()
        if not texts:
            return []
        if hints.backend is not None and hints.backend not in self._slots:
            raise UnknownBackendHint(
                f"hint backend {hints.backend!r} is not one of this router's backends: "
                f"{', '.join(self._slots)}"
            )
        start = time.perf_counter()
        if self.config.ab is None or hints.backend is not None:
            groups: dict[str | None, list[int]] = {None: list(range(len(texts)))}
        else:
            groups = {}
            for i, t in enumerate(texts):
                groups.setdefault(self.arm_for(t, hints), []).append(i)
        results: list[Prediction | None] = [None] * len(texts)
        for arm, idx in groups.items():
            preds = await self._route_group([texts[i] for i in idx], hints, start, arm)
            for i, p in zip(idx, preds, strict=True):
                results[i] = p
        final = [p for p in results if p is not None]
        await self._after(texts, final, hints, groups)
        return final

    async def _after(
        self,
        texts: list[str],
        preds: list[Prediction],
        hints: Hints,
        groups: Mapping[str | None, list[int]],
    ) -> None:
        """Stats, listeners, shadow traffic and the review queue, once every text is answered."""
        arm_of = {i: arm for arm, idx in groups.items() for i in idx}
        cascade = self.config.cascade
        escalated_flags = []
        with self._lock:
            for i, p in enumerate(preds):
                s = self._stats
                s.texts += 1
                s.answered_by[p.backend] += 1
                s.cache_hits += int(p.cached)
                in_cascade = (
                    cascade is not None
                    and hints.backend is None
                    and arm_of[i] in (None, CASCADE_ARM)
                    and bool(p.route)
                    and p.route[0] == cascade.student
                )
                escalated = in_cascade and len(p.route) > 1
                escalated_flags.append(escalated)
                if in_cascade:
                    s.cascade_texts += 1
                    s.escalated += int(escalated)
                arm = arm_of[i]
                if arm is not None:
                    a = self._arm_stats[arm]
                    a.texts += 1
                    a.escalated += int(escalated)
                    a.latency_ms_total += p.latency_ms
                    a.answered_by[p.backend] += 1
                    a.labels.update(p.labels)
        for i, p in enumerate(preds):
            self._emit("routed", self, p, arm=arm_of[i], escalated=escalated_flags[i])
        if self._shadow is not None:
            shadow_name = self._shadow.cfg.backend
            for text, p in zip(texts, preds, strict=True):
                if p.backend != shadow_name:
                    self._shadow.maybe_send(text, p.labels)
        review = self.config.review
        if review is not None:
            todo = [
                (i, len(texts), t, p)
                for i, (t, p) in enumerate(zip(texts, preds, strict=True))
                if p.confidence < review.threshold
            ]
            if todo:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._io, self._store_reviews, todo, hints)

    def _store_reviews(self, todo: list[tuple[int, int, str, Prediction]], hints: Hints) -> None:
        if self._review_store is None:
            self._review_store = self._store or open_store()
        task_info = {
            "name": self.task.name,
            "kind": self.task.kind,
            "labels": list(self.task.label_names),
        }
        for i, n, text, p in todo:
            rid = hints.request_id
            if rid is not None and n > 1:
                rid = f"{rid}#{i}"
            record = {**p.to_json_dict(), "task": task_info}
            try:
                self._review_store.review_add(self.task.name, text, record, request_id=rid)
            except Exception as exc:  # StoreError, sqlite3.Error, OSError: never fail the answer
                log.error("router %s: cannot write to the review queue: %s", self.name, exc)
                continue
            with self._lock:
                self._stats.reviewed += 1
            self._emit("reviewed", self, p)
