"""One place that keeps secrets out of everything llmclf writes: specs, messages, stores, logs.

Example:
    >>> redact("Incorrect API key provided: sk-abc123", ["sk-abc123"])
    'Incorrect API key provided: ***'
    >>> redact_spec("llm:openai/gpt-4o-mini?api_key=sk-123&temperature=0")
    'llm:openai/gpt-4o-mini?temperature=0'
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from urllib.parse import urlencode

__all__ = ["MIN_SECRET_CHARS", "SECRET_OPTION", "redact", "redact_spec", "secrets_of_spec"]

#: Option names whose values are secrets (``api_key``, ``token``, ``db_password``, ...).
SECRET_OPTION = re.compile(r"(^|_)(api_?key|key|secret|token|password)$", re.IGNORECASE)

#: Shorter values are not treated as secrets: replacing a 1-3 character string everywhere would
#: mangle messages while protecting nothing a real key looks like.
MIN_SECRET_CHARS = 4


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` with every secret value replaced by ``***`` (providers may echo the API key).

    Example:
        >>> redact("key sk-abc123 rejected", ["sk-abc123", None])
        'key *** rejected'
    """
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    return text


def redact_spec(spec: str) -> str:
    """The backend spec without secret options (``api_key=...`` and the like).

    Example:
        >>> redact_spec("llm:openai/gpt-4o-mini?api_key=sk-123&temperature=0")
        'llm:openai/gpt-4o-mini?temperature=0'
    """
    from llmclf.specs import parse_spec

    kind, target, options = parse_spec(spec)
    kept = {k: v for k, v in options.items() if not SECRET_OPTION.search(k)}
    return f"{kind}:{target}" + (f"?{urlencode(kept, safe=':/')}" if kept else "")


def secrets_of_spec(spec: str | None) -> list[str]:
    """Secret values that must never be written: from the spec's options and ``LLMCLF_API_KEY``.

    Example:
        >>> secrets_of_spec("llm:openai/x?api_key=sk-123456")
        ['sk-123456']
    """
    from llmclf.specs import parse_spec

    values: list[str] = []
    if spec is not None:
        _, _, options = parse_spec(spec)
        values = [v for k, v in options.items() if SECRET_OPTION.search(k) and v]
    env_key = os.environ.get("LLMCLF_API_KEY")
    if env_key:
        values.append(env_key)
    return [v for v in values if len(v) >= MIN_SECRET_CHARS]
