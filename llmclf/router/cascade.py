"""`Cascade`: the student answers when it is confident enough; the rest escalates.

The student sees the whole batch once. A text whose top score is at or above its threshold
(per label; the ``min_confidence`` hint replaces it) keeps the student's answer; the others go
to the escalation policy (a `Fallback` over ``escalate_to`` and the fallbacks), cut at the
request's deadline. When that is known to be too slow for what is left of the budget, or does
not answer within it, or fails, the student's answer is kept and the reason says why. When the
student itself fails, the whole batch goes to the escalation policy.

Reasons: ``"student confident 0.97>=0.80"``, ``"escalated: 0.55<0.80"``,
``"latency budget: answered by student (0.55<0.80; llm needs ~350 ms, 4 ms left)"``,
``"escalation failed (llm: ...); answered by student (0.55<0.80)"``,
``"fallback after student failed: ..."``.

Example:
    >>> cascade = Cascade(Slot("student", student), Fallback([Slot("llm", llm)], task=task),
    ...                   {"negative": 0.8, "positive": 0.8}, task=task)  # doctest: +SKIP
    >>> cascade.predict_batch(["a great film"])[0].route_reason
    'student confident 0.97>=0.80'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from llmclf.backends.base import Backend, Hints
from llmclf.errors import AllBackendsFailed, BackendTimeout
from llmclf.hooks import Event, Hooks
from llmclf.router.fallback import Fallback
from llmclf.router.policy import Policy, RouteContext, Routed, short_error
from llmclf.router.slot import Slot
from llmclf.types import Prediction, Task

__all__ = ["Cascade"]

log = logging.getLogger("llmclf.router")


class Cascade(Policy):
    """``student`` first; below the threshold, ``escalation`` (emits `Event.BUDGET_KEPT` and
    `Event.FELL_BACK` for the texts it keeps from the student)."""

    def __init__(
        self,
        student: Slot,
        escalation: Fallback,
        thresholds: Mapping[str, float],
        *,
        task: Task,
        name: str = "cascade",
        hooks: Hooks | None = None,
        router: str = "router",
    ) -> None:
        super().__init__(name=name, task=task, hooks=hooks)
        if not thresholds:
            raise ValueError("a cascade needs a threshold for every label")
        self.student = student
        self.escalation = escalation
        self.thresholds = dict(thresholds)
        self.router = router  # for log lines

    def children(self) -> Sequence[Backend]:
        return (self.student, self.escalation)

    def threshold_for(self, pred: Prediction, hints: Hints) -> tuple[float, str]:
        """The confidence ``pred`` needs, and a note when a hint set it."""
        if hints.min_confidence is not None:
            return hints.min_confidence, " (min_confidence hint)"
        if pred.labels and not pred.abstained:
            return max(self.thresholds[lab] for lab in pred.labels), ""
        return max(self.thresholds.values()), ""

    async def route(self, texts: list[str], ctx: RouteContext) -> list[Routed]:
        student = self.student.name
        try:
            spreds = await self.student.call(texts, ctx)
        except Exception as exc:
            log.warning("router %s: student %s failed: %s", self.router, student, short_error(exc))
            answers = await self.escalation.route(texts, ctx, failed={student: exc})
            for a in answers:
                a.route = [student, *a.route]
                a.cascade = a.escalated = True
            return answers

        out: list[Routed | None] = [None] * len(texts)
        low: list[tuple[int, float, float, str]] = []
        for i, p in enumerate(spreds):
            thr, why = self.threshold_for(p, ctx.hints)
            conf = p.confidence
            if conf >= thr:
                reason = f"{student} confident {conf:.2f}>={thr:.2f}{why}"
                out[i] = Routed(p, by=student, route=[student], reason=reason, cascade=True)
            else:
                low.append((i, conf, thr, why))
        if low:
            await self._escalate(texts, spreds, low, out, ctx)
        return [a for a in out if a is not None]

    async def _escalate(
        self,
        texts: list[str],
        spreds: list[Prediction],
        low: list[tuple[int, float, float, str]],
        out: list[Routed | None],
        ctx: RouteContext,
    ) -> None:
        student = self.student.name
        esc = self.escalation.first.name

        def keep_student(reason_of: Callable[[float, float, str], str], tried: list[str]) -> None:
            for i, conf, thr, why in low:
                out[i] = Routed(
                    spreds[i], by=student, route=[student, *tried],
                    reason=reason_of(conf, thr, why), cascade=True, escalated=bool(tried),
                )  # fmt: skip

        remaining = ctx.remaining_s()
        estimate = self.escalation.latency_s
        too_slow = estimate is not None and remaining is not None and estimate > remaining
        if remaining is not None and (remaining <= 0 or too_slow):
            need = f"{esc} needs ~{estimate * 1000:.0f} ms, " if estimate is not None else ""
            left = max(0.0, remaining * 1000)
            keep_student(
                lambda c, t, w: f"latency budget: answered by {student} "
                f"({c:.2f}<{t:.2f}{w}; {need}{left:.0f} ms left)",
                [],
            )
            self.hooks.emit(Event.BUDGET_KEPT, len(low))
            return

        try:
            answers = await self.escalation.route([texts[i] for i, *_ in low], ctx.with_cap())
        except AllBackendsFailed as exc:
            tried = list(exc.failures)
            budget_timeouts = remaining is not None and all(
                isinstance(e, BackendTimeout) for e in exc.failures.values()
            )
            if budget_timeouts:
                spent = (time.perf_counter() - ctx.start) * 1000
                keep_student(
                    lambda c, t, w: f"latency budget: {esc} did not answer within the budget "
                    f"({spent:.0f} ms); answered by {student} ({c:.2f}<{t:.2f}{w})",
                    tried,
                )
                self.hooks.emit(Event.BUDGET_KEPT, len(low))
            else:
                detail = "; ".join(f"{n}: {short_error(e, 120)}" for n, e in exc.failures.items())
                keep_student(
                    lambda c, t, w: f"escalation failed ({detail}); "
                    f"answered by {student} ({c:.2f}<{t:.2f}{w})",
                    tried,
                )
                self.hooks.emit(Event.FELL_BACK, len(low))
            return
        for (i, conf, thr, why), a in zip(low, answers, strict=True):
            reason = f"escalated: {conf:.2f}<{thr:.2f}{why}"
            if a.fallback is not None:
                reason += "; " + a.fallback
            a.route = [student, *a.route]
            a.reason = reason
            a.usage = a.usage + spreds[i].usage
            a.cascade = a.escalated = True
            out[i] = a
