"""vLLM's own structured outputs, for a self-hosted teacher (``llm:hosted_vllm/MODEL``).

vLLM (>= 0.12) constrains decoding with the request field ``structured_outputs``: the label
set as ``{"choice": [...]}`` for a single-label answer, and ``{"json": SCHEMA}`` for any other
answer schema (multi-label). The older ``guided_*`` fields were removed in vLLM 0.12.
``response_format`` is not sent with it: vLLM turns a ``json_schema`` response format into a
second constraint (``structured_outputs.json``), which conflicts with ``choice``.

A ``choice`` answer is the bare label (``positive``), and its token logprobs spell the label
alone. `json_answer` rewrites such an answer, logprobs included, into the JSON answer the rest
of llmclf validates and scores (``{"label": "positive"}``), so scores come from the same
logprob walk as a JSON-schema answer.

Example:
    >>> schema = {"properties": {"label": {"enum": ["negative", "positive"]}}}
    >>> structured_outputs(schema)
    {'choice': ['negative', 'positive']}
    >>> json_answer("positive", None)
    ('{"label": "positive"}', None)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: The litellm provider prefix of a vLLM OpenAI-compatible server.
PREFIX = "hosted_vllm/"


def is_vllm(model: str) -> bool:
    """Whether ``model`` (a litellm model name) is served by vLLM (``hosted_vllm/...``).

    Example:
        >>> is_vllm("hosted_vllm/Qwen/Qwen2.5-7B-Instruct"), is_vllm("openai/gpt-4o-mini")
        (True, False)
    """
    return model.startswith(PREFIX)


def _enum(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[str] | None:
    """The allowed string values of a schema node (``enum``, ``const``, a ``$ref`` to one)."""
    if "enum" in node:
        return [str(v) for v in node["enum"]]
    if "const" in node:
        return [str(node["const"])]
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = (root.get("$defs") or {}).get(ref.rsplit("/", 1)[-1])
        return None if target is None else _enum(target, root)
    return None


def choices_of(schema: Mapping[str, Any]) -> list[str] | None:
    """The labels of a single-label answer schema (one property, ``label``, an enum of
    strings), or None for any other schema (multi-label lists, several fields).

    Example:
        >>> choices_of({"properties": {"labels": {"type": "array"}}}) is None
        True
    """
    props = schema.get("properties") or {}
    if set(props) != {"label"}:
        return None
    return _enum(props["label"], schema)


def structured_outputs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's ``structured_outputs`` request field for an answer ``schema``: ``choice`` with
    the labels of a single-label answer, else ``json`` with the whole schema."""
    choices = choices_of(schema)
    if choices:
        return {"choice": choices}
    return {"json": dict(schema)}


#: Synthetic tokens around a bare ``choice`` answer, so it reads as ``{"label": "..."}``.
_OPEN, _CLOSE = '{"label": "', '"}'


def _token(item: Any) -> dict[str, Any]:
    """One logprob entry as a plain dict (litellm gives objects, a batch line gives dicts)."""
    if isinstance(item, Mapping):
        return dict(item)
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        out = dump()
        if isinstance(out, dict):
            return out
    return {
        "token": getattr(item, "token", None),
        "logprob": getattr(item, "logprob", None),
        "top_logprobs": [_token(t) for t in getattr(item, "top_logprobs", None) or ()],
    }


def _forced(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": 0.0, "top_logprobs": [{"token": token, "logprob": 0.0}]}


def json_answer(content: str, logprobs: Any) -> tuple[str, Any]:
    """``(content, logprobs)`` of a ``choice`` answer rewritten as the JSON answer
    ``{"label": CONTENT}``: the label's token logprobs are kept, between forced (probability
    1) tokens for the JSON around it. ``logprobs`` without token entries is returned as is."""
    wrapped = json.dumps({"label": content}, ensure_ascii=False)
    content_lp = getattr(logprobs, "content", None)
    if content_lp is None and isinstance(logprobs, Mapping):
        content_lp = logprobs.get("content")
    if not content_lp:
        return wrapped, logprobs
    tokens = [_forced(_OPEN), *(_token(t) for t in content_lp), _forced(_CLOSE)]
    return wrapped, {"content": tokens, "refusal": None}
