"""A router's counters, kept by handlers of its typed events (`llmclf.hooks.Event`).

`RouterStats` (texts, who answered, escalations, fallbacks, failures) and `ArmStats` (per A/B
arm) are what `llmclf.router.Router.stats` and ``ab_stats`` return; `StatsRecorder` keeps them
up to date from the router's hooks. `RouterListener` is the older listener interface, one
method per event; `llmclf.router.Router.add_listener` subscribes its methods.

Example:
    >>> hooks = Hooks()
    >>> recorder = StatsRecorder(hooks, arms=())
    >>> hooks.emit(Event.FELL_BACK, 2)
    >>> recorder.stats().fallbacks
    2
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmclf.hooks import Event, Hooks
from llmclf.types import Prediction

if TYPE_CHECKING:
    from llmclf.router.facade import Router

__all__ = ["ArmStats", "RouterListener", "RouterStats", "StatsRecorder"]


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

    def copy(self) -> ArmStats:
        return ArmStats(
            texts=self.texts,
            errors=self.errors,
            escalated=self.escalated,
            latency_ms_total=self.latency_ms_total,
            answered_by=Counter(self.answered_by),
            labels=Counter(self.labels),
        )


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

    def copy(self) -> RouterStats:
        return RouterStats(
            texts=self.texts,
            answered_by=Counter(self.answered_by),
            cascade_texts=self.cascade_texts,
            escalated=self.escalated,
            budget_kept=self.budget_kept,
            fallbacks=self.fallbacks,
            failed=self.failed,
            reviewed=self.reviewed,
            cache_hits=self.cache_hits,
        )


class StatsRecorder:
    """Counts a router's events into a `RouterStats` and one `ArmStats` per A/B arm."""

    def __init__(self, hooks: Hooks, arms: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._stats = RouterStats()
        self._arms = {arm: ArmStats() for arm in arms}
        hooks.on(Event.ROUTED, self._routed)
        hooks.on(Event.FAILED, self._failed)
        hooks.on(Event.FELL_BACK, self._fell_back)
        hooks.on(Event.BUDGET_KEPT, self._budget_kept)
        hooks.on(Event.REVIEWED, self._reviewed)

    def stats(self) -> RouterStats:
        """A copy of the counters."""
        with self._lock:
            return self._stats.copy()

    def arm_stats(self) -> dict[str, ArmStats]:
        """A copy of the per-arm counters (empty without an A/B split)."""
        with self._lock:
            return {arm: a.copy() for arm, a in self._arms.items()}

    def _routed(
        self, p: Prediction, *, arm: str | None, escalated: bool, cascade: bool
    ) -> None:
        with self._lock:
            s = self._stats
            s.texts += 1
            s.answered_by[p.backend] += 1
            s.cache_hits += int(p.cached)
            if cascade:
                s.cascade_texts += 1
                s.escalated += int(escalated)
            if arm is not None:
                a = self._arms[arm]
                a.texts += 1
                a.escalated += int(escalated)
                a.latency_ms_total += p.latency_ms
                a.answered_by[p.backend] += 1
                a.labels.update(p.labels)

    def _failed(self, error: BaseException, texts: int, *, arm: str | None) -> None:
        with self._lock:
            self._stats.failed += texts
            if arm is not None:
                self._arms[arm].texts += texts
                self._arms[arm].errors += texts

    def _fell_back(self, texts: int) -> None:
        with self._lock:
            self._stats.fallbacks += texts

    def _budget_kept(self, texts: int) -> None:
        with self._lock:
            self._stats.budget_kept += texts

    def _reviewed(self, prediction: Prediction) -> None:
        with self._lock:
            self._stats.reviewed += 1


class RouterListener:
    """One method per router event, each optional (a no-op here); see `Router.add_listener`.

    The typed form is `Router.hooks` with `llmclf.hooks.Event`; this class is kept for callers
    that implement listeners as objects.
    """

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

    def attach(self, router: Router) -> None:
        """Subscribe these methods to ``router``'s events."""
        hooks = router.hooks

        def backend_call(
            backend: str, texts: int, seconds: float, error: BaseException | None
        ) -> None:
            self.backend_call(router, backend, texts, seconds, error)

        def routed(p: Prediction, *, arm: str | None, escalated: bool, cascade: bool) -> None:
            self.routed(router, p, arm=arm, escalated=escalated)

        def failed(error: BaseException, texts: int, *, arm: str | None) -> None:
            self.failed(router, error, texts, arm=arm)

        def shadow_compared(agreed: bool, stats: object) -> None:
            self.shadow_compared(router, agreed)

        def shadow_dropped() -> None:
            self.shadow_dropped(router)

        def reviewed(p: Prediction) -> None:
            self.reviewed(router, p)

        hooks.on(Event.BACKEND_CALL, backend_call)
        hooks.on(Event.ROUTED, routed)
        hooks.on(Event.FAILED, failed)
        hooks.on(Event.SHADOW_COMPARED, shadow_compared)
        hooks.on(Event.SHADOW_DROPPED, shadow_dropped)
        hooks.on(Event.REVIEWED, reviewed)
