"""`Router`: the thin facade over a tree of policies — the tree, its stats, the sync portal.

Example:
    >>> router = Router.from_yaml("router.yaml")                     # doctest: +SKIP
    >>> router.predict_batch(["meh"], Hints(max_latency_ms=5))[0].route_reason
    'latency budget: answered by student (0.55<0.80; llm needs ~350 ms, 4 ms left)'
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.backends.registry import make_backend as registry_make_backend
from llmclf.errors import BackendError
from llmclf.router.config import (
    MakeBackend,
    ResolvedRouter,
    RouterConfig,
    RouterFile,
    load_router_config,
    parse_router_config,
    resolve_router_config,
)
from llmclf.router.policy import RouteContext
from llmclf.router.portal import Portal
from llmclf.router.shadow import ShadowStats
from llmclf.router.stats import ArmStats, RouterListener, RouterStats, StatsRecorder
from llmclf.router.tree import build_tree
from llmclf.store import Store
from llmclf.types import Prediction, Task

log = logging.getLogger("llmclf.router")

__all__ = ["Router"]


class Router(Backend):
    """A backend made of named backends: cascade, hints, fallbacks, shadow, review, A/B.

    Build one with `Router.from_yaml` (or `Router.from_config` with some backends given as
    objects). ``predict_batch`` is thread-safe; ``apredict_batch`` runs on the caller's loop.
    Its events (`llmclf.hooks.Event`, from ``BACKEND_CALL`` on) are emitted on ``hooks``.
    """

    #: The router's async path never blocks its loop, and it routes by the request's hints.
    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True, routes=True)

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
        threshold_note: str | None = None,
    ) -> None:
        self.config = config
        #: How the cascade thresholds were chosen from ``cascade.target_accuracy``, if so.
        self.threshold_note = threshold_note
        if threshold_note:
            log.info("%s: %s", name, threshold_note)
        self.task = task
        self.name = name
        self.source = source
        self._recorder = StatsRecorder(self.hooks, arms=config.ab.arms if config.ab else ())
        plan = ResolvedRouter(
            config=config,
            task=task,
            backends=dict(backends),
            thresholds=dict(thresholds or {}),
            store=store,
            source=source,
        )
        self.tree = build_tree(plan, hooks=self.hooks, router=name)
        self._thresholds = dict(plan.thresholds)
        self._portal: Portal | None = None
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
        make_backend: MakeBackend | None = None,
    ) -> Router:
        """Load a router config file and build its backends (with ``make_backend``, by default
        `llmclf.backends.registry.make_backend`).

        Example:
            >>> Router.from_yaml("router.yaml").task.name                  # doctest: +SKIP
            'sst2'
        """
        return cls._build(
            load_router_config(path), task=task, store=store, backends=backends,
            make_backend=make_backend,
        )  # fmt: skip

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
        make_backend: MakeBackend | None = None,
    ) -> Router:
        """Build a router from a config; ``backends`` supplies ready-made backends by name.

        Example:
            >>> Router.from_config({"backends": {"a": "llm:local"}}, task=task)  # doctest: +SKIP
        """
        file = RouterFile(
            config=parse_router_config(config, source), source=source, base_dir=Path(base_dir),
            text=text,
        )  # fmt: skip
        return cls._build(
            file, task=task, store=store, backends=backends, make_backend=make_backend
        )

    @classmethod
    def _build(
        cls,
        file: RouterFile,
        *,
        task: Task | None,
        store: Store | None,
        backends: Mapping[str, Backend] | None,
        make_backend: MakeBackend | None,
    ) -> Router:
        plan = resolve_router_config(
            file, make_backend=make_backend or registry_make_backend, task=task, store=store,
            backends=backends,
        )  # fmt: skip
        return cls(
            plan.config,
            task=plan.task,
            backends=plan.backends,
            store=plan.store,
            name=f"router:{plan.source}",
            source=plan.source,
            thresholds=plan.thresholds,
            threshold_note=plan.threshold_note,
        )

    # -- the tree -------------------------------------------------------------------------------
    @property
    def backends(self) -> dict[str, Backend]:
        """The backends by name (after any `wrap_backend`)."""
        return {name: slot.backend for name, slot in self.tree.slots.items()}

    @property
    def thresholds(self) -> dict[str, float]:
        """The cascade threshold for each label (empty without a cascade)."""
        return dict(self._thresholds)

    def children(self) -> Sequence[Backend]:
        return (self.tree.root,)

    def microbatch_backends(self) -> list[str]:
        """Names of the backends that benefit from micro-batching (by default the student)."""
        return [name for name, slot in self.tree.slots.items() if slot.microbatch]

    def wrap_backend(self, name: str, wrap: Callable[[Backend], Backend]) -> Backend:
        """Replace backend ``name`` by ``wrap(backend)`` (e.g. a micro-batcher); returns it."""
        return self.tree.slots[name].wrap(wrap)

    def microbatched(self, wrap: Callable[[str, Backend], Backend]) -> Backend:
        """Wrap each backend of `microbatch_backends` by ``wrap(name, backend)``; returns self."""
        for name in self.microbatch_backends():
            self.wrap_backend(name, lambda b, name=name: wrap(name, b))  # type: ignore[misc]
        return self

    def arm_for(self, text: str, hints: Hints | None = None) -> str | None:
        """The A/B arm a text goes to (sticky on ``request_key``, else on the text)."""
        return self.tree.ab.arm_for(text, hints) if self.tree.ab is not None else None

    # -- stats and events -----------------------------------------------------------------------
    def add_listener(self, listener: RouterListener) -> None:
        """Receive routing events through ``listener``'s methods (see `RouterListener`)."""
        listener.attach(self)

    def stats(self) -> RouterStats:
        """A copy of the router's counters."""
        return self._recorder.stats()

    def ab_stats(self) -> dict[str, ArmStats]:
        """Per-arm counters of the A/B split (empty without one)."""
        return self._recorder.arm_stats()

    @property
    def review_store(self) -> Store | None:
        """The store the review queue is written to (None without a ``review`` block)."""
        return self.tree.review.store if self.tree.review is not None else None

    def shadow_stats(self) -> ShadowStats | None:
        """Shadow agreement over the sliding window (None without shadow traffic)."""
        return self.tree.shadow.stats() if self.tree.shadow is not None else None

    # -- answering ------------------------------------------------------------------------------
    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        with self._portal_lock:
            if self._portal is None:
                self._portal = Portal()
            portal = self._portal
        return portal.run(self._route(list(texts), hints))

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        return await self._route(list(texts), hints)

    async def _route(self, texts: list[str], hints: Hints | None) -> list[Prediction]:
        if self._closed:
            raise BackendError("the router is closed", backend=self.name)
        if not texts:
            return []
        ctx = RouteContext.begin(hints)
        self.tree.entry.check(ctx)
        answers = await self.tree.root.route(texts, ctx)
        ctx.settle(answers)
        return [a.finish() for a in answers]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tree = self.tree
        if tree.shadow is not None:
            tree.shadow.close()
        if self._portal is not None:
            self._portal.close()
        seen: set[int] = set()
        for slot in tree.slots.values():
            slot.close()
            if id(slot.backend) not in seen:
                seen.add(id(slot.backend))
                with contextlib.suppress(Exception):
                    slot.backend.close()
        if tree.review is not None:
            tree.review.close()
