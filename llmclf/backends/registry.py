"""Backend specs a user can type, and the one function that turns a spec into a `Backend`.

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
from urllib.parse import parse_qsl

from llmclf.backends.base import Backend
from llmclf.errors import BackendSpecError
from llmclf.store import Store
from llmclf.types import Task

VALID_FORMS = (
    "llm:local                              (embedded Gemma 3 270M, no API key)",
    "llm:<litellm model>                    e.g. llm:openai/gpt-4o-mini, llm:ollama/llama3.1",
    "llm:openai/<name>?api_base=<url>       any OpenAI-compatible server",
    "setfit:<model dir>                     a student written by `llmclf distill`",
    "router:<config.yaml>                   a router made of backends",
)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``kind:target?opts`` into its parts; raises `BackendSpecError` on a bad form."""
    if not isinstance(spec, str) or ":" not in spec:
        raise BackendSpecError(str(spec), "missing the 'kind:' prefix", VALID_FORMS)
    kind, _, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    if kind not in {"llm", "setfit", "router"}:
        raise BackendSpecError(spec, f"unknown backend kind {kind!r}", VALID_FORMS)
    if not target:
        raise BackendSpecError(spec, "nothing after the 'kind:' prefix", VALID_FORMS)
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise BackendSpecError(spec, f"cannot parse options {query!r}", VALID_FORMS) from None
    return kind, target, options


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
