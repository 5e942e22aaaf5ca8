"""Prometheus metrics of the service (``GET /metrics``), one registry per app.

| metric | labels | what |
|---|---|---|
| ``llmclf_http_requests_total`` | endpoint, status | HTTP requests |
| ``llmclf_http_request_duration_seconds`` | endpoint | request latency histogram |
| ``llmclf_texts_total`` | task, backend | texts answered, by the backend that answered |
| ``llmclf_backend_latency_seconds`` | task, backend | latency histogram of each backend call |
| ``llmclf_backend_calls_total`` | task, backend, outcome | calls (``ok`` or an error kind) |
| ``llmclf_escalations_total`` / ``llmclf_cascade_texts_total`` | task | cascade escalations |
| ``llmclf_escalation_rate`` | task | escalations / cascade texts since start |
| ``llmclf_shadow_agreement`` | task, backend | agreement over the shadow window |
| ``llmclf_shadow_compared_total`` / ``llmclf_shadow_dropped_total`` | task | shadow traffic |
| ``llmclf_cache_hits_total`` | task, backend | answers served from the response cache |
| ``llmclf_errors_total`` | type | error bodies sent to clients, by type |
| ``llmclf_provider_faults_total`` | task, backend, kind | LLM faults by ``llm.FAULT_KINDS`` |
| ``llmclf_microbatch_size`` | task, backend | sizes of the micro-batches sent to a backend |
| ``llmclf_review_queued_total`` | task | answers stored for human review |
| ``llmclf_ab_texts_total`` / ``llmclf_ab_latency_seconds`` | task, arm | A/B arms |
| ``llmclf_in_flight_requests`` | | requests being answered now |
| ``llmclf_store_errors_total`` | kind | store calls of the request path that failed (degraded) |
| ``llmclf_review_spooled`` | | review rows spooled (store unreachable), not yet written |

With several worker processes (``llmclf serve --workers N``, ``$PROMETHEUS_MULTIPROC_DIR`` set
before the workers start) every counter, histogram and the in-flight gauge are added up over
all workers (prometheus_client's multiprocess mode), whichever worker answers the scrape; the
gauges computed at scrape time (escalation rate, shadow agreement) are that worker's own.

Example:
    >>> m = ServiceMetrics()
    >>> m.errors.labels(type="bad_input").inc()
    >>> b"llmclf_errors_total" in m.render()
    True
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmclf.backends.base import Backend
from llmclf.errors import error_kind
from llmclf.hooks import Event
from llmclf.router import ShadowStats
from llmclf.types import Prediction

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class _TaskGauges:
    """What the scrape-time gauges of one task are computed from."""

    cascade_texts: int = 0
    escalated: int = 0
    shadow: ShadowStats | None = None


class _RouterGauges(Collector):
    """Computed at scrape time from the routers' events: escalation rate and shadow agreement."""

    def __init__(self) -> None:
        self.tasks: dict[str, _TaskGauges] = {}
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rate = GaugeMetricFamily(
            "llmclf_escalation_rate",
            "Share of cascade texts escalated past the student, since start",
            labels=["task"],
        )
        agreement = GaugeMetricFamily(
            "llmclf_shadow_agreement",
            "Agreement of the answers with the shadow backend over the sliding window",
            labels=["task", "backend"],
        )
        samples = GaugeMetricFamily(
            "llmclf_shadow_window_samples",
            "Shadow comparisons in the sliding window",
            labels=["task", "backend"],
        )
        with self.lock:
            tasks = {t: (g.cascade_texts, g.escalated, g.shadow) for t, g in self.tasks.items()}
        for task, (cascade_texts, escalated, shadow) in tasks.items():
            if cascade_texts:
                rate.add_metric([task], escalated / cascade_texts)
            if shadow is not None:
                samples.add_metric([task, shadow.backend], shadow.samples)
                if shadow.agreement is not None:
                    agreement.add_metric([task, shadow.backend], shadow.agreement)
        yield rate
        yield agreement
        yield samples

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ServiceMetrics:
    """All the service's metrics; `watch` feeds them from a served backend's typed events."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "llmclf_http_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.http_latency = Histogram(
            "llmclf_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter(
            "llmclf_texts", "Texts answered, by the backend that answered", ["task", "backend"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "llmclf_backend_latency_seconds",
            "Latency of each call to a backend",
            ["task", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_calls = Counter(
            "llmclf_backend_calls", "Backend calls by outcome", ["task", "backend", "outcome"],
            registry=r,
        )
        self.escalations = Counter(
            "llmclf_escalations", "Cascade texts escalated past the student", ["task"], registry=r
        )
        self.cascade_texts = Counter(
            "llmclf_cascade_texts", "Texts routed through the cascade", ["task"], registry=r
        )
        self.shadow_compared_total = Counter(
            "llmclf_shadow_compared", "Shadow answers compared", ["task", "agreed"], registry=r
        )
        self.shadow_dropped_total = Counter(
            "llmclf_shadow_dropped", "Shadow requests dropped (queue full)", ["task"], registry=r
        )
        self.cache_hits = Counter(
            "llmclf_cache_hits", "Answers from the response cache", ["task", "backend"],
            registry=r,
        )
        self.errors = Counter(
            "llmclf_errors", "Error bodies sent to clients, by type", ["type"], registry=r
        )
        self.provider_faults = Counter(
            "llmclf_provider_faults", "LLM provider faults seen (retried or not)",
            ["task", "backend", "kind"], registry=r,
        )
        self.batch_size = Histogram(
            "llmclf_microbatch_size",
            "Texts per micro-batch sent to a backend",
            ["task", "backend"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.review_queued = Counter(
            "llmclf_review_queued", "Answers stored for human review", ["task"], registry=r
        )
        self.ab_texts = Counter(
            "llmclf_ab_texts", "Texts per A/B arm", ["task", "arm", "outcome"], registry=r
        )
        self.ab_latency = Histogram(
            "llmclf_ab_latency_seconds",
            "Routing latency per A/B arm",
            ["task", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmclf_in_flight_requests", "Requests being answered now", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.store_errors = Counter(
            "llmclf_store_errors", "Store calls of the request path that failed (degraded)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.review_spooled = Gauge(
            "llmclf_review_spooled", "Review rows spooled while the store is unreachable",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        #: where the workers' samples are (multiprocess mode), or None for one process
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._gauges = _RouterGauges()
        r.register(self._gauges)

    def watch(self, backend: Backend, task: str | None = None) -> None:
        """Count ``backend``'s events under ``task`` (default: its task's name).

        A router reports its calls, answers, failures, shadow traffic, reviews and the faults
        of its named backends (`llmclf.hooks.Event`); any other backend reports its own
        provider faults, labelled with its name.
        """
        task = task or backend.task.name
        with self._gauges.lock:
            self._gauges.tasks.setdefault(task, _TaskGauges())
        hooks = backend.hooks
        on = functools.partial
        hooks.on(Event.BACKEND_CALL, on(self._backend_call, task))
        hooks.on(Event.ROUTED, on(self._routed, task))
        hooks.on(Event.FAILED, on(self._failed, task))
        hooks.on(Event.SHADOW_COMPARED, on(self._shadow_compared, task))
        hooks.on(Event.SHADOW_DROPPED, on(self._shadow_dropped, task))
        hooks.on(Event.REVIEWED, on(self._reviewed, task))
        hooks.on(Event.BACKEND_FAULT, on(self._fault, task))
        if not backend.capabilities.routes:  # a router relays its tree's faults itself
            for b in backend.walk():
                if b.capabilities.prompted:
                    b.hooks.on(Event.PROVIDER_FAULT, on(self._fault, task, backend.name))

    def render(self) -> bytes:
        """The Prometheus text exposition (of all workers, in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(self._gauges)
        return generate_latest(registry)

    def count_texts(self, task: str, predictions: list[Prediction]) -> None:
        """Count answered texts by the backend that answered."""
        for p in predictions:
            self.texts.labels(task, p.backend).inc()

    # -- event handlers ---------------------------------------------------------------------------
    def _backend_call(
        self, task: str, backend: str, texts: int, seconds: float, error: BaseException | None
    ) -> None:
        self.backend_latency.labels(task, backend).observe(seconds)
        outcome = "ok" if error is None else error_kind(error)
        self.backend_calls.labels(task, backend, outcome).inc()

    def _routed(
        self, task: str, prediction: Prediction, *, arm: str | None, escalated: bool,
        cascade: bool,
    ) -> None:  # fmt: skip
        if cascade:
            self.cascade_texts.labels(task).inc()
            if escalated:
                self.escalations.labels(task).inc()
            with self._gauges.lock:
                g = self._gauges.tasks[task]
                g.cascade_texts += 1
                g.escalated += int(escalated)
        if prediction.cached:
            self.cache_hits.labels(task, prediction.backend).inc()
        if arm is not None:
            self.ab_texts.labels(task, arm, "ok").inc()
            self.ab_latency.labels(task, arm).observe(prediction.latency_ms / 1000.0)

    def _failed(self, task: str, error: BaseException, texts: int, *, arm: str | None) -> None:
        if arm is not None:
            self.ab_texts.labels(task, arm, error_kind(error)).inc(texts)

    def _shadow_compared(self, task: str, agreed: bool, stats: ShadowStats) -> None:
        self.shadow_compared_total.labels(task, str(agreed).lower()).inc()
        with self._gauges.lock:
            g = self._gauges.tasks[task]
            if g.shadow is None or stats.completed >= g.shadow.completed:  # workers may race
                g.shadow = stats

    def _shadow_dropped(self, task: str) -> None:
        self.shadow_dropped_total.labels(task).inc()

    def _reviewed(self, task: str, prediction: Prediction) -> None:
        self.review_queued.labels(task).inc()

    def _fault(self, task: str, backend: str, kind: str) -> None:
        self.provider_faults.labels(task, backend, kind).inc()
