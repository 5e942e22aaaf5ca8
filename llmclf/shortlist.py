"""The student's shortlist: a few candidate labels for the LLM to choose among.

Tasks with tens or hundreds of labels (banking77, clinc150) put every label and its description
in every prompt: long prompts, slow calls, and a small model confused by the choice. A cheap
student (a `setfit:DIR`, or any backend that scores every label) ranks the labels; its top ``k``
are the only labels the LLM sees — in the prompt (each with its description), in the output
schema, and in the dynamic few-shot examples — so a text cannot make the LLM answer with a
label outside the shortlist.

`Shortlister` does the three steps around the LLM call:

1. `Shortlister.shortlists`: the student's candidates for each text (one batch call). A student
   that fails, or returns no usable scores, gives the full label set, and the reason says so.
   Multi-label: the labels the student finds likely (score >= `LIKELY`), best first, ``k`` at
   most (and at least two, so that the LLM has a choice).
2. `Shortlister.restrict`: the task cut down to the candidates (label order and descriptions
   kept, static examples only from those labels), plus an escape label when ``other`` is on.
3. `Shortlister.merge`: the LLM's answer over the shortlist becomes a prediction over every
   label. Single-label: the shortlist's labels share the student's mass on the shortlist in
   proportion to the LLM's scores renormalised over the shortlist; every other label keeps the
   student's score; so the scores cover every label and sum to 1, and the top label is always
   one of the shortlist. Multi-label: shortlist labels get the LLM's scores, the others the
   student's. ``route_reason`` names the shortlist; with the ``other`` escape, an LLM that says
   none of the candidates fits gives the student's top label, and the reason says so.

Example:
    >>> from llmclf.testing import FunctionBackend
    >>> task = Task.from_yaml_text("name: t\\nkind: multiclass\\n"
    ...                            "labels: {a: A, b: B, c: C, d: D}")
    >>> student = FunctionBackend(task, lambda t: {"a": .1, "b": .5, "c": .3, "d": .1},
    ...                           name="student")
    >>> sl = Shortlister(student, task, k=2).shortlists(["x"])[0]
    >>> sl.labels, sl.reason
    (('b', 'c'), 'shortlist top-2 of 4 by student: b, c')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from llmclf.errors import ConfigError
from llmclf.types import Label, Prediction, Task

if TYPE_CHECKING:  # annotations only: backends/llm.py imports this module
    from llmclf.backends.base import Backend

__all__ = [
    "LIKELY",
    "OTHER",
    "Shortlist",
    "Shortlistable",
    "Shortlister",
    "escape_label",
]

log = logging.getLogger("llmclf.shortlist")

#: The name of the escape candidate (``other``); `escape_label` picks another when a task
#: already has a label of that name.
OTHER = "other"
_OTHER_FALLBACKS = ("none_of_these", "none_of_the_candidates")
#: Multi-label: the student score from which a label counts as likely.
LIKELY = 0.2
_OTHER_DESCRIPTION = "none of the labels above fits the text"


def escape_label(task: Task) -> str:
    """The escape candidate's name for ``task``: ``other`` unless the task has such a label.

    Example:
        >>> escape_label(Task.from_yaml_text("name: t\\nkind: multiclass\\nlabels: {a: A, b: B}"))
        'other'
    """
    for name in (OTHER, *_OTHER_FALLBACKS):
        if name not in task.label_names:
            return name
    raise ConfigError(f"task {task.name!r} uses every escape label name; turn shortlist_other off")


@dataclass(frozen=True)
class Shortlist:
    """One text's candidates: ``labels`` in the task's order, the student's scores (None when the
    student failed), the student's top label, and the reason a prediction will carry.

    ``fallback``: the student failed and the candidates are the full label set."""

    labels: tuple[str, ...]
    reason: str
    student_scores: dict[str, float] | None = None
    student_top: str | None = None
    student: str | None = None
    fallback: bool = False


@runtime_checkable
class Shortlistable(Protocol):
    """A backend that can ask among a shortlist (an LLM backend): `with_shortlist` returns a copy
    of it that takes its candidates from ``shortlister``."""

    def with_shortlist(self, shortlister: Shortlister) -> Backend: ...


class Shortlister:
    """Takes candidate labels from ``student`` (any backend scoring every label of ``task``).

    ``k`` (>= 2): the most candidates per text. ``other``: add an escape candidate (single-label
    tasks); when the LLM picks it, the answer is the student's top label. ``owned``: the
    shortlister closes the student when it is closed (True when it built the student).
    """

    def __init__(
        self,
        student: Backend,
        task: Task,
        *,
        k: int = 5,
        other: bool = False,
        owned: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ConfigError(
                f"shortlist k must be an integer >= 2 (the LLM needs a choice), got {k!r}"
            )
        missing = [n for n in task.label_names if n not in student.task.label_names]
        if missing:
            raise ConfigError(
                f"the shortlist student {student.name} has no scores for labels {missing} of "
                f"task {task.name!r}"
            )
        self.student = student
        self.task = task
        self.k = k
        self.other = other and not task.is_multilabel
        self.escape = escape_label(task) if self.other else None
        self.owned = owned
        self._tasks: dict[tuple[str, ...], Task] = {}

    @property
    def covers_all(self) -> bool:
        """True when ``k`` keeps every label anyway (the student need not be asked)."""
        return self.k >= len(self.task.labels) and not self.other

    def close(self) -> None:
        if self.owned:
            self.student.close()

    # -- 1. candidates ----------------------------------------------------------------------------
    def shortlists(self, texts: Sequence[str]) -> list[Shortlist]:
        """One `Shortlist` per text, from one batch call to the student (never raises: a failing
        student gives the full label set, with the reason)."""
        n = len(self.task.labels)
        if self.covers_all:
            reason = f"shortlist: k={self.k} keeps all {n} labels"
            return [Shortlist(self.task.label_names, reason, student=self.student.name)] * len(
                texts
            )
        try:
            preds = self.student.predict_batch(list(texts))
            if len(preds) != len(texts):
                raise ValueError(f"{len(preds)} predictions for {len(texts)} texts")
        except Exception as exc:  # any student failure: ask with every label
            log.warning("shortlist student %s failed: %s", self.student.name, exc)
            return [self._fallback(exc)] * len(texts)
        out = []
        for p in preds:
            try:
                out.append(self._from_scores(p.scores))
            except ValueError as exc:
                out.append(self._fallback(exc))
        return out

    def _fallback(self, exc: BaseException) -> Shortlist:
        msg = str(exc).replace("\n", " ")[:200]
        reason = (
            f"shortlist failed ({self.student.name}: {type(exc).__name__}: {msg}); "
            f"asked with all {len(self.task.labels)} labels"
        )
        return Shortlist(self.task.label_names, reason, student=self.student.name, fallback=True)

    def _from_scores(self, raw: Mapping[str, float]) -> Shortlist:
        names = self.task.label_names
        try:
            scores = {n: float(raw[n]) for n in names}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the student gave no score for label {exc}") from None
        if any(s != s or s < 0 for s in scores.values()):  # NaN or negative
            raise ValueError("the student gave a NaN or negative score")
        # best first; ties keep the task's order
        ranked = sorted(names, key=lambda n: -scores[n])
        if self.task.is_multilabel:
            chosen = [n for n in ranked if scores[n] >= LIKELY][: self.k]
            chosen += [n for n in ranked if n not in chosen][: max(0, 2 - len(chosen))]
        else:
            total = sum(scores.values())
            if total <= 0:
                raise ValueError("the student's scores sum to 0")
            scores = {n: s / total for n, s in scores.items()}
            chosen = ranked[: self.k]
        keep = set(chosen)
        labels = tuple(n for n in names if n in keep)
        how = "likely" if self.task.is_multilabel else f"top-{self.k}"
        reason = (
            f"shortlist {how} of {len(names)} by {self.student.name}: {', '.join(chosen)}"
        )
        return Shortlist(
            labels, reason, student_scores=scores, student_top=ranked[0],
            student=self.student.name,
        )  # fmt: skip

    # -- 2. the task the LLM is asked -------------------------------------------------------------
    def restrict(self, shortlist: Shortlist) -> Task:
        """``task`` cut down to the shortlist (plus the escape label): what the LLM is asked.

        The full task itself when the shortlist holds every label and there is no escape."""
        escape = None if shortlist.fallback else self.escape
        key = (*shortlist.labels, *([escape] if escape else []))
        if key == self.task.label_names:
            return self.task
        cached = self._tasks.get(key)
        if cached is not None:
            return cached
        keep = set(shortlist.labels)
        labels = [lab for lab in self.task.labels if lab.name in keep]
        if escape:
            labels.append(Label(name=escape, description=_OTHER_DESCRIPTION))
        full = len(keep) == len(self.task.labels)
        kind = self.task.kind if (full or self.task.is_multilabel) else "multiclass"
        sub = self.task.model_copy(
            update={
                "kind": kind,
                "labels": tuple(labels),
                "positive_label": self.task.positive_label if kind == "binary" else None,
                "examples": tuple(ex for ex in self.task.examples if set(ex.gold) <= keep),
            }
        )
        sub = Task.model_validate(sub.model_dump())  # re-checked like a loaded task
        if len(self._tasks) > 4096:
            self._tasks.clear()
        self._tasks[key] = sub
        return sub

    # -- 3. back to every label -------------------------------------------------------------------
    def merge(self, shortlist: Shortlist, answer: Prediction) -> Prediction:
        """The LLM's ``answer`` over the shortlist as a prediction over every label of the task,
        with ``route`` (student, then the LLM) and ``route_reason`` naming the shortlist."""
        route = (
            answer.route
            if shortlist.student_scores is None and not shortlist.fallback
            else (self.student.name, *answer.route)
        )
        update: dict[str, object] = {"route": route, "route_reason": shortlist.reason}
        student = shortlist.student_scores
        if student is None:  # every label was asked: the answer covers the task already
            return answer.model_copy(update=update)
        names = self.task.label_names
        keep = set(shortlist.labels)
        if self.task.is_multilabel:
            update["scores"] = {
                n: round(answer.scores.get(n, 0.0) if n in keep else student[n], 6) for n in names
            }
            return answer.model_copy(update=update)
        if self.escape is not None and answer.labels == (self.escape,):
            assert shortlist.student_top is not None
            update["labels"] = (shortlist.student_top,)
            update["scores"] = {n: round(student[n], 6) for n in names}
            update["route_reason"] = (
                f"{shortlist.reason}; the LLM said none fits ({self.escape}): "
                f"the student's top label {shortlist.student_top}"
            )
            return answer.model_copy(update=update)
        llm = {n: max(0.0, answer.scores.get(n, 0.0)) for n in shortlist.labels}
        total = sum(llm.values())
        if total > 0:
            llm = {n: v / total for n, v in llm.items()}
        elif answer.labels and answer.labels[0] in llm:
            llm[answer.labels[0]] = 1.0
        else:
            llm = {n: 1.0 / len(llm) for n in llm}
        mass = sum(student[n] for n in shortlist.labels)
        scores = {n: (mass * llm[n] if n in keep else student[n]) for n in names}
        update["scores"] = {n: round(v, 6) for n, v in scores.items()}
        return answer.model_copy(update=update)
