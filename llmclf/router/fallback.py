"""`Fallback`: ask backends in order; the first that answers the whole batch wins.

As pydantic-ai's ``FallbackModel``: when a backend fails or times out the next one is asked;
when every one failed, `AllBackendsFailed` names each failure. The answer's route lists every
backend tried; its reason is the policy's own (``"primary backend"``, ``"forced by hint"``), or
``"fallback after llm failed: ProviderServerError: ..."`` when one failed first.

Example:
    >>> policy = Fallback([Slot("llm", llm), Slot("llm2", llm2)], task=task)  # doctest: +SKIP
    >>> p = policy.predict_batch(["fine"])[0]           # llm answered 500, llm2 answered
    >>> p.route, p.route_reason
    (('llm', 'llm2'), 'fallback after llm failed: ProviderServerError: ...')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from llmclf.backends.base import Backend
from llmclf.errors import AllBackendsFailed
from llmclf.hooks import Event, Hooks
from llmclf.router.policy import Policy, RouteContext, Routed, short_error
from llmclf.types import Task

__all__ = ["Fallback", "fallback_reason"]

log = logging.getLogger("llmclf.router")


def fallback_reason(failures: Mapping[str, BaseException]) -> str:
    """``fallback after a, b failed: <the last error>``."""
    names = ", ".join(failures)
    last = list(failures.values())[-1]
    return f"fallback after {names} failed: {short_error(last)}"


class Fallback(Policy):
    """Ask ``options`` in order until one answers; emits `Event.FELL_BACK` when one failed."""

    def __init__(
        self,
        options: Sequence[Policy],
        *,
        task: Task,
        reason: str = "primary backend",
        name: str = "fallback",
        hooks: Hooks | None = None,
        router: str = "router",
    ) -> None:
        if not options:
            raise ValueError("a fallback needs at least one backend")
        super().__init__(name=name, task=task, hooks=hooks)
        self.options = list({id(o): o for o in options}.values())
        self.reason = reason
        self.router = router  # for log lines

    def children(self) -> Sequence[Backend]:
        return self.options

    @property
    def first(self) -> Policy:
        """The backend asked first."""
        return self.options[0]

    @property
    def latency_s(self) -> float | None:
        return self.first.latency_s

    async def route(
        self,
        texts: list[str],
        ctx: RouteContext,
        failed: Mapping[str, BaseException] | None = None,
    ) -> list[Routed]:
        """Answers from the first option that does not fail. ``failed``: backends that already
        failed on these texts (named in the reason; skipped here)."""
        failures = dict(failed or {})
        tried: list[str] = []
        for option in self.options:
            if option.name in failures:
                continue
            tried.append(option.name)
            try:
                answers = await option.route(texts, ctx)
            except Exception as exc:
                failures[option.name] = exc
                log.warning(
                    "router %s: backend %s failed: %s", self.router, option.name, short_error(exc)
                )
                continue
            earlier = tried[:-1]
            note = fallback_reason(failures) if failures else None
            for a in answers:
                a.route = earlier + a.route
                if note is not None:
                    a.reason = a.fallback = note
                elif not a.reason:  # a slot decides nothing: the reason is this policy's
                    a.reason = self.reason
            if failures:
                self.hooks.emit(Event.FELL_BACK, len(texts))
            return answers
        raise AllBackendsFailed(failures)
