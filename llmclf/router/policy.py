"""What every router policy shares: `Policy` (a `Backend` made of backends), `Routed` (one
text's answer on its way up the tree) and `RouteContext` (one request: hints, deadline, start).

A policy answers through `Policy.route`, which returns `Routed` answers: the prediction of the
backend that answered, the names of the backends tried (``route``) and why (``reason``). Each
policy appends to these on the way up; `Routed.finish` turns one into the `Prediction` a caller
sees (``backend``, ``route``, ``route_reason``, ``latency_ms``, ``usage``). As a `Backend`, a
policy also answers ``predict_batch`` on its own.

Example:
    >>> fallback = Fallback([llm, backup], task=task)                  # doctest: +SKIP
    >>> fallback.predict_batch(["fine"])[0].route_reason
    'primary backend'
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.hooks import Hooks
from llmclf.types import Prediction, Task, Usage

__all__ = ["Policy", "RouteContext", "Routed", "short_error"]


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, at most ``limit`` characters of message."""
    msg = str(exc).replace("\n", " ")
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}"


@dataclass
class RouteContext:
    """One request on its way through a router's tree.

    ``hints`` carry the request's ``deadline`` (set from ``max_latency_ms`` when it arrived, or
    handed down by an outer router). ``capped``: calls made under this context are cut at the
    deadline (a cascade's escalations). ``group``: the A/B arm and size of the batch being
    routed, for failure reports.
    """

    hints: Hints
    start: float
    capped: bool = False
    group: tuple[str | None, int] | None = None

    @classmethod
    def begin(cls, hints: Hints | None) -> RouteContext:
        """A new request starting now."""
        start = time.perf_counter()
        return cls(hints=(hints or Hints()).with_deadline(start), start=start)

    def remaining_s(self) -> float | None:
        """Seconds left in the request's latency budget (None without one)."""
        return self.hints.remaining_s()

    def with_cap(self) -> RouteContext:
        """This context, with calls cut at the deadline."""
        return RouteContext(self.hints, self.start, capped=True, group=self.group)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000

    def settle(self, answers: Sequence[Routed]) -> None:
        """Stamp the request's latency so far on the answers that have none yet."""
        latency = self.elapsed_ms()
        for a in answers:
            if a.latency_ms is None:
                a.latency_ms = latency


@dataclass
class Routed:
    """One text's answer on its way up a router's tree.

    ``prediction`` is what the answering backend returned; ``by`` its name in the router config;
    ``route`` the names of the backends tried, in order; ``reason`` why this answer;
    ``fallback`` the "fallback after ... failed" note when a backend failed first; ``usage``
    what backends other than ``by`` spent on the text (a student before an escalation);
    ``detail`` what the answering (leaf) backend said of its own answer (an LLM's shortlist).
    """

    prediction: Prediction
    by: str
    route: list[str]
    reason: str
    usage: Usage = field(default_factory=Usage)
    fallback: str | None = None
    cascade: bool = False
    escalated: bool = False
    arm: str | None = None
    latency_ms: float | None = None
    detail: str | None = None

    def finish(self) -> Prediction:
        """The `Prediction` a caller sees (``reason``, then the answering backend's own
        ``detail``, e.g. the shortlist an LLM chose among)."""
        p = self.prediction
        reason = f"{self.reason}; {self.detail}" if self.detail else self.reason
        return p.model_copy(
            update={
                "backend": self.by,
                "route": tuple(self.route),
                "route_reason": reason,
                "latency_ms": self.latency_ms if self.latency_ms is not None else p.latency_ms,
                "usage": self.usage + p.usage,
            }
        )


class Policy(Backend):
    """A backend made of backends that decides which of them answers (see `Policy.route`).

    Subclasses implement `route` and `children`; events go to ``hooks``, shared by every
    policy of one router (its stats and listeners subscribe there).
    """

    #: A policy awaits its backends on the caller's loop, and reads the request's hints.
    capabilities: ClassVar[Capabilities] = Capabilities(native_async=True, routes=True)

    def __init__(self, *, name: str, task: Task, hooks: Hooks | None = None) -> None:
        self.name = name
        self.task = task
        if hooks is not None:
            self._hooks = hooks

    @abstractmethod
    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        """One `Routed` answer per text, in order; raises when no backend could answer."""

    @property
    def latency_s(self) -> float | None:
        """How long an answer takes, as far as this policy has seen (None: unknown)."""
        return None

    async def apredict_batch(
        self, texts: Sequence[str], hints: Hints | None = None
    ) -> list[Prediction]:
        ctx = RouteContext.begin(hints)
        answers = await self.route(list(texts), ctx)
        ctx.settle(answers)
        return [a.finish() for a in answers]

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        """Sync form, on a fresh event loop (`llmclf.router.Router` keeps one loop instead)."""
        return asyncio.run(self.apredict_batch(texts, hints))
