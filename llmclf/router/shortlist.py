"""The router's ``shortlist`` stage: a student's top labels are the only ones its LLMs see.

```yaml
backends:
  student: setfit:models/banking77
  llm: llm:local
cascade: {student: student, escalate_to: llm, threshold: 0.6}
shortlist:
  backend: student      # the backend that ranks the labels (a student, never an LLM)
  k: 5                  # candidates per text (>= 2)
  other: false          # an escape candidate, answered with the student's top label
  llms: [llm]           # the LLM backends that ask among the shortlist (default: all of them)
```

Every LLM backend named (or, by default, every LLM backend of the router) is replaced by a copy
that asks among the student's candidates (`llmclf.shortlist`): an escalated text's prompt and
output schema hold only the shortlist, and its ``route_reason`` names it
(``"escalated: 0.41<0.60; shortlist top-5 of 77 by student: ..."``). A failing student sends
the full label set, and the reason says so.

Example:
    >>> plan = resolve_router_config(load_router_config("router.yaml"),
    ...                              make_backend=make_backend)          # doctest: +SKIP
    >>> plan.backends["llm"].shortlister.k
    5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmclf.backends.base import Backend
from llmclf.errors import ConfigError, TaskFileError
from llmclf.shortlist import Shortlistable, Shortlister
from llmclf.types import Task

__all__ = ["ShortlistConfig", "apply_shortlist", "check_shortlist_references"]

#: ``error(location, message)``: a `TaskFileError` naming the config file, line and field.
ErrorAt = Callable[[tuple[Any, ...], str], TaskFileError]


class ShortlistConfig(BaseModel):
    """``shortlist:``: the backend whose top ``k`` labels the router's LLMs choose among."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    k: int = Field(default=5, ge=2, le=1000)
    other: bool = False
    llms: list[str] | None = Field(default=None, min_length=1)


def check_shortlist_references(
    config: ShortlistConfig, names: set[str], error: ErrorAt
) -> None:
    """Every backend the section names exists, and the student is not one of the LLMs."""
    known = ", ".join(sorted(names))
    if config.backend not in names:
        raise error(
            ("shortlist", "backend"),
            f"unknown backend {config.backend!r}; the backends are: {known}",
        )
    for i, name in enumerate(config.llms or ()):
        if name not in names:
            raise error(
                ("shortlist", "llms", i), f"unknown backend {name!r}; the backends are: {known}"
            )
        if name == config.backend:
            raise error(("shortlist", "llms", i), "must differ from shortlist.backend")


def apply_shortlist(
    config: ShortlistConfig,
    backends: Mapping[str, Backend],
    task: Task,
    error: ErrorAt,
) -> dict[str, Backend]:
    """``backends`` with each shortlisted LLM replaced by its copy that asks among the student's
    candidates (the copy shares the original's client, store and server; the original is left
    as it was, unused by the router)."""
    student = backends[config.backend]
    if student.capabilities.prompted:
        raise error(
            ("shortlist", "backend"),
            f"{config.backend!r} is an LLM backend; the shortlist comes from a student "
            "(e.g. setfit:DIR) that scores every label",
        )
    if config.llms is not None:
        targets = list(config.llms)
        for i, name in enumerate(targets):
            if not isinstance(backends[name], Shortlistable):
                raise error(
                    ("shortlist", "llms", i),
                    f"{name!r} is not an LLM backend: only an LLM asks among a shortlist",
                )
    else:
        targets = [
            n for n, b in backends.items() if n != config.backend and isinstance(b, Shortlistable)
        ]
        if not targets:
            raise error(("shortlist",), "no LLM backend to shortlist for: the router has none")
    try:
        shortlister = Shortlister(student, task, k=config.k, other=config.other)
    except ConfigError as exc:
        raise error(("shortlist", "backend"), str(exc)) from None
    out = dict(backends)
    for name in targets:
        llm = backends[name]
        assert isinstance(llm, Shortlistable)
        out[name] = llm.with_shortlist(shortlister)
    return out
