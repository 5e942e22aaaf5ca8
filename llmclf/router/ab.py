"""`ABSplit`: texts are split between arms by weight, sticky on a key.

The key is ``Hints.request_key`` (else the text): a key's unit hash picks the arm, so the same
user always lands on the same arm. Each arm is a policy (the cascade, or a `Fallback` that
starts at the arm's backend); its answers' reasons start with ``"ab arm <arm>: "``.

Example:
    >>> split = ABSplit({"cascade": cascade, "llm": llm_first}, {"cascade": 0.9, "llm": 0.1},
    ...                 task=task)                                       # doctest: +SKIP
    >>> split.arm_for("great", Hints(request_key="user-7"))
    'cascade'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Literal

from llmclf.backends.base import Backend, Hints
from llmclf.hooks import Hooks
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.types import Task

__all__ = ["ABSplit", "unit_hash"]


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) for ``key``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ABSplit(Policy):
    """Route each text through the arm its key falls in (``weights`` need not sum to 1)."""

    def __init__(
        self,
        arms: Mapping[str, Policy],
        weights: Mapping[str, float],
        *,
        task: Task,
        sticky: Literal["request_key", "text"] = "request_key",
        name: str = "ab",
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        if set(arms) != set(weights) or len(arms) < 2:
            raise ValueError("an A/B split needs two or more arms, each with a weight")
        self.arms = dict(arms)
        self.weights = {arm: weights[arm] for arm in arms}
        self.sticky = sticky

    def children(self) -> Sequence[Backend]:
        return list(self.arms.values())

    def arm_for(self, text: str, hints: Hints | None = None) -> str:
        """The arm a text goes to (sticky on ``request_key``, else on the text)."""
        key = text
        if self.sticky == "request_key" and hints is not None and hints.request_key:
            key = hints.request_key
        u = unit_hash(key) * sum(self.weights.values())
        acc = 0.0
        for arm, weight in self.weights.items():
            acc += weight
            if u < acc:
                return arm
        return next(reversed(self.weights))

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            groups.setdefault(self.arm_for(t, ctx.hints), []).append(i)
        out: list[Routed | None] = [None] * len(texts)
        for arm, idx in groups.items():
            ctx.group = (arm, len(idx))
            answers = await self.arms[arm].route([texts[i] for i in idx], ctx)
            ctx.settle(answers)  # stamped when its arm answered
            for i, a in zip(idx, answers, strict=True):
                a.reason = f"ab arm {arm}: {a.reason}"
                a.arm = arm
                out[i] = a
        ctx.group = None
        return [a for a in out if a is not None]
