"""Backend specs a user can type: ``kind:target?option=value&...``.

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

from urllib.parse import parse_qsl

from llmclf.errors import BackendSpecError

__all__ = ["BACKEND_KINDS", "VALID_FORMS", "parse_spec"]

#: The kinds of backend a spec can name.
BACKEND_KINDS = ("llm", "setfit", "router")

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
    if kind not in BACKEND_KINDS:
        raise BackendSpecError(spec, f"unknown backend kind {kind!r}", VALID_FORMS)
    if not target:
        raise BackendSpecError(spec, "nothing after the 'kind:' prefix", VALID_FORMS)
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise BackendSpecError(spec, f"cannot parse options {query!r}", VALID_FORMS) from None
    return kind, target, options
