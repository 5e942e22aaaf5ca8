"""The one function that turns a backend spec (`llmclf.specs`) into a `Backend`.

| spec | backend |
|---|---|
| ``llm:local`` | the embedded Gemma 3 270M on a loopback llama.cpp server |
| ``llm:<litellm model>[?opt=value&...]`` | any litellm model, e.g. ``llm:openai/gpt-4o-mini`` |
| ``setfit:<model dir>`` | a distilled student (ONNX Runtime when exported) |
| ``router:<config.yaml>`` | a router made of other backends |

Example:
    >>> parse_spec("llm:openai/gpt-4o-mini?temperature=0")
    ('llm', 'openai/gpt-4o-mini', {'temperature': '0'})
"""

from __future__ import annotations

from typing import Any

from llmclf.backends.base import Backend
from llmclf.errors import BackendSpecError
from llmclf.specs import VALID_FORMS, parse_spec
from llmclf.store import Store
from llmclf.types import Task

__all__ = ["VALID_FORMS", "make_backend", "parse_spec"]

def make_backend(
    spec: str, task: Task | None = None, *, store: Store | None = None, **options: Any
) -> Backend:
    """Build the backend a spec names, for ``task`` (a router reads its tasks from its config).

    Example:
        >>> make_backend("llm:local", task)                     # doctest: +SKIP
    """
    kind, target, spec_options = parse_spec(spec)
    merged: dict[str, Any] = {**spec_options, **options}
    if kind == "router":
        from llmclf.router import Router

        return Router.from_yaml(target, task=task, store=store)
    if task is None:
        raise BackendSpecError(spec, "this backend needs a task", VALID_FORMS)
    if kind == "llm":
        from llmclf.backends.llm import make_llm_backend

        return make_llm_backend(target, task, merged, store=store)
    from llmclf.backends.setfit import SetFitBackend

    return SetFitBackend.load(target, task=task, **merged)
