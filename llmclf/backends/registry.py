"""The one function that turns a backend spec (`llmclf.specs`) into a `Backend`.

| spec | backend |
|---|---|
| ``llm:local`` | the embedded Gemma 3 270M on a loopback llama.cpp server |
| ``llm:<litellm model>[?opt=value&...]`` | any litellm model, e.g. ``llm:openai/gpt-4o-mini`` |
| ``setfit:<model dir>`` | a distilled student (ONNX Runtime when exported) |
| ``router:<config.yaml>`` | a router made of other backends |

Each kind has a factory in a table. ``llm`` and ``setfit`` are backends of this layer and are
built in; ``router`` belongs to the layer above (a router is made of backends this function
builds), so this module never imports it: the package root (``llmclf/__init__.py``) registers
its factory with `register_backend_kind`, which keeps the import graph one-way.

Example:
    >>> parse_spec("llm:openai/gpt-4o-mini?temperature=0")
    ('llm', 'openai/gpt-4o-mini', {'temperature': '0'})
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from llmclf.backends.base import Backend
from llmclf.errors import BackendSpecError
from llmclf.specs import BACKEND_KINDS, VALID_FORMS, parse_spec
from llmclf.store import Store
from llmclf.types import Task

__all__ = [
    "VALID_FORMS",
    "BackendFactory",
    "make_backend",
    "parse_spec",
    "register_backend_kind",
    "registered_kinds",
]


class BackendFactory(Protocol):
    """Builds the backend of one spec kind from the spec's target, the task, the store and the
    merged options (the spec's ``?opt=value`` pairs, then the caller's keyword options)."""

    def __call__(
        self, target: str, task: Task | None, store: Store | None, options: dict[str, Any]
    ) -> Backend: ...


def _need_task(kind: str, target: str, task: Task | None) -> Task:
    if task is None:
        raise BackendSpecError(f"{kind}:{target}", "this backend needs a task", VALID_FORMS)
    return task


def _llm(target: str, task: Task | None, store: Store | None, options: dict[str, Any]) -> Backend:
    from llmclf.backends.llm import make_llm_backend

    def make_student(spec: str, student_task: Task) -> Backend:
        return make_backend(spec, student_task, store=store)

    return make_llm_backend(
        target, _need_task("llm", target, task), options, store=store, make_student=make_student
    )


def _setfit(
    target: str, task: Task | None, store: Store | None, options: dict[str, Any]
) -> Backend:
    from llmclf.backends.setfit import SetFitBackend

    return SetFitBackend.load(target, task=_need_task("setfit", target, task), **options)


_FACTORIES: dict[str, BackendFactory] = {"llm": _llm, "setfit": _setfit}
_LOCK = threading.Lock()


def register_backend_kind(kind: str, factory: BackendFactory) -> None:
    """Build specs of ``kind`` (one of `llmclf.specs.BACKEND_KINDS`) with ``factory``.

    Example:
        >>> register_backend_kind("router", build_router_from_spec)     # doctest: +SKIP
    """
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; kinds: {', '.join(BACKEND_KINDS)}")
    with _LOCK:
        _FACTORIES[kind] = factory


def registered_kinds() -> tuple[str, ...]:
    """The spec kinds `make_backend` can build now."""
    with _LOCK:
        return tuple(_FACTORIES)


def make_backend(
    spec: str, task: Task | None = None, *, store: Store | None = None, **options: Any
) -> Backend:
    """Build the backend a spec names, for ``task`` (a router reads its tasks from its config).

    Example:
        >>> make_backend("llm:local", task)                     # doctest: +SKIP
    """
    kind, target, spec_options = parse_spec(spec)
    with _LOCK:
        factory = _FACTORIES.get(kind)
    if factory is None:
        raise BackendSpecError(
            spec, f"no factory is registered for {kind!r} specs (import llmclf)", VALID_FORMS
        )
    return factory(target, task, store, {**spec_options, **options})
