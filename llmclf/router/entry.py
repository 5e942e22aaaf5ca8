"""`Entry`: where a request enters a router's policies, and where its outcome is reported.

``Hints.backend`` sends the batch straight to that backend (``"forced by hint"``, no
fallbacks); otherwise the main policy (an A/B split, a cascade or a fallback list) answers.
Every answer is reported with `Event.ROUTED` (with its A/B arm and whether it went through the
cascade and past the student); a batch that no backend could answer with `Event.FAILED`.

Example:
    >>> entry = Entry(cascade, slots, task=task)                        # doctest: +SKIP
    >>> entry.predict_batch(["x"], Hints(backend="llm"))[0].route_reason
    'forced by hint'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llmclf.backends.base import Backend
from llmclf.errors import UnknownBackendHint
from llmclf.hooks import Event, Hooks
from llmclf.router.fallback import Fallback
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.router.slot import Slot
from llmclf.types import Task

__all__ = ["Entry"]


class Entry(Policy):
    """The main policy, unless a hint forces one of ``slots``."""

    def __init__(
        self,
        main: Policy,
        slots: Mapping[str, Slot],
        *,
        task: Task,
        name: str = "entry",
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        self.main = main
        self.forced = {
            n: Fallback([slot], task=task, reason="forced by hint", name=f"forced:{n}", hooks=hooks)
            for n, slot in slots.items()
        }

    def children(self) -> Sequence[Backend]:
        return (self.main, *self.forced.values())

    @property
    def latency_s(self) -> float | None:
        return self.main.latency_s

    def check(self, ctx: RouteContext) -> None:
        """Refuse a hint that names no backend of this router."""
        name = ctx.hints.backend
        if name is not None and name not in self.forced:
            raise UnknownBackendHint(
                f"hint backend {name!r} is not one of this router's backends: "
                f"{', '.join(self.forced)}"
            )

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        self.check(ctx)
        forced = ctx.hints.backend
        try:
            if forced is not None:
                answers = await self.forced[forced].route(texts, ctx)
            else:
                answers = await self.main.route(texts, ctx)
        except Exception as exc:
            arm, n = ctx.group if ctx.group is not None else (None, len(texts))
            ctx.group = None
            self.hooks.emit(Event.FAILED, exc, n, arm=arm)
            raise
        ctx.settle(answers)
        for a in answers:
            self.hooks.emit(
                Event.ROUTED, a.finish(), arm=a.arm, escalated=a.escalated, cascade=a.cascade
            )
        return answers
