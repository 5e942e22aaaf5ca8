"""The one exception tree of llmclf. Every error carries the context needed to act on it.

```
LLMClfError
 ├── ConfigError                 bad user input found before any work is done
 │    ├── TaskFileError          a task/prompt/eval-set/router file is invalid (file, line, field)
 │    ├── BackendSpecError       an unknown backend spec (lists the valid forms)
 │    ├── UnknownBackendHint     ``Hints.backend`` names a backend the router does not have
 │    └── InputTextError         empty text, or text over the length limit (index of the input)
 ├── BackendError                a backend failed to answer
 │    ├── ProviderError          the LLM provider failed (after retries)
 │    │    ├── AuthError         401/403: retrying cannot help
 │    │    ├── RateLimitError    429 (retry_after seconds when the provider said so)
 │    │    ├── ProviderServerError  5xx, dropped connection, empty choices
 │    │    └── ProviderTimeout   the request timed out
 │    ├── OutputValidationError  the model's output never matched the label schema (raw output kept)
 │    ├── LocalServerError       the embedded llama.cpp server could not start or died
 │    ├── ModelLoadError         a distilled model directory cannot be loaded (or would unpickle)
 │    ├── BackendTimeout         a router's backend did not answer in time (or within the budget)
 │    └── AllBackendsFailed      a router's every backend failed (each failure listed)
 ├── DistillError                distillation cannot go on (no usable labels, too few to train)
 │    └── TeacherError           the teacher failed on some texts (what it gave is kept; re-run)
 ├── ExportError                 the ONNX export or quantization failed
 │    └── ParityError            an exported model's scores differ from torch's beyond the bound
 └── StoreError                  the store (SQLite or PostgreSQL) is unusable
      ├── StoreUnavailable       the store cannot be reached now (retry later: it may return)
      └── ReviewConflict         a review item was already decided (by someone else)
```

Example:
    >>> try:
    ...     raise TaskFileError("must be one of binary, multiclass, multilabel",
    ...                         path="task.yaml", line=3, field="kind")
    ... except LLMClfError as exc:
    ...     print(exc)
    task.yaml:3: kind: must be one of binary, multiclass, multilabel
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LLMClfError(Exception):
    """Base class of every error llmclf raises on purpose."""


class ConfigError(LLMClfError):
    """Bad user input found before any work is done."""


class TaskFileError(ConfigError):
    """A file a user edits is invalid; names the file, the line and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        elif line:
            where = f"line {line}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")


class BackendSpecError(ConfigError):
    """An unknown backend spec; the message lists the forms that are valid."""

    def __init__(self, spec: str, reason: str, valid_forms: Sequence[str]) -> None:
        self.spec = spec
        self.valid_forms = list(valid_forms)
        forms = "\n  ".join(self.valid_forms)
        super().__init__(f"invalid backend spec {spec!r}: {reason}. Valid forms:\n  {forms}")


class InputTextError(ConfigError):
    """Empty text, or text over the configured length limit."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        self.index = index
        where = f"input #{index}: " if index is not None else ""
        super().__init__(f"{where}{message}")


class UnknownBackendHint(ConfigError):
    """``Hints.backend`` names a backend the router does not have."""


class StoreError(LLMClfError):
    """The store (SQLite file or PostgreSQL database) could not be opened or written."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (server down, connection lost, pool timed out).

    Unlike other `StoreError`s this one is transient: the same write may succeed later, so the
    service degrades (no cache, review writes spooled) instead of failing the answer."""


class ReviewConflict(StoreError):
    """A review item was already decided, or a decision to undo is no longer the current one.

    ``review_id`` names the item, ``current`` its current decision (None when it is pending)."""

    def __init__(
        self, message: str, *, review_id: int, current: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.review_id = review_id
        self.current = current


class BackendError(LLMClfError):
    """A backend failed to answer."""

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        self.backend = backend
        super().__init__(f"[{backend}] {message}" if backend else message)


class ProviderError(BackendError):
    """The LLM provider failed after the retries that could help."""

    kind = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        status_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        self.status_code = status_code
        self.attempts = attempts
        super().__init__(message, backend=backend)


class AuthError(ProviderError):
    """401/403 from the provider: the API key is missing or wrong."""

    kind = "auth"


class RateLimitError(ProviderError):
    """429 from the provider, after retries."""

    kind = "rate_limit"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ProviderServerError(ProviderError):
    """5xx, a dropped connection, or an empty/garbled response envelope."""

    kind = "server_error"


class ProviderTimeout(ProviderError):
    """The request to the provider timed out."""

    kind = "timeout"


class OutputValidationError(BackendError):
    """The model's output never matched the label schema; ``raw_output`` keeps what it said."""

    kind = "invalid_output"

    def __init__(self, message: str, *, raw_output: str | None, backend: str | None = None) -> None:
        self.raw_output = raw_output
        super().__init__(f"{message}; raw output: {raw_output!r}", backend=backend)


class LocalServerError(BackendError):
    """The embedded llama.cpp server could not be started, or died and could not be restarted."""

    kind = "local_server"


class ModelLoadError(BackendError):
    """A distilled model directory is missing, incomplete, or holds files that would unpickle."""

    kind = "model_load"


class AllBackendsFailed(BackendError):
    """Every backend of a router failed; ``failures`` maps backend name to its error."""

    kind = "all_failed"

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures = failures
        detail = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failures.items())
        super().__init__(f"all backends failed: {detail}")


class BackendTimeout(BackendError):
    """A backend did not answer within the router's timeout (or the request's latency budget)."""

    kind = "timeout"


class DistillError(LLMClfError):
    """Distillation cannot go on: no usable teacher labels, or too few labels to train on."""


class TeacherError(DistillError):
    """The teacher failed on some texts; the labels it gave are saved and a re-run resumes."""


class ExportError(LLMClfError):
    """The ONNX export or quantization failed."""


class ParityError(ExportError):
    """An exported model's scores differ from the torch model's by more than the bound.

    ``result`` is the `llmclf.export.ParityResult` (runtime, max_diff, n_texts, bound).
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        super().__init__(
            f"{result.runtime} export fails the parity check: max score difference "
            f"{result.max_diff:.3g} over {result.n_texts} texts exceeds the bound {result.bound:g}"
            + (" (try --no-int8)" if result.runtime == "int8" else "")
        )


def error_kind(exc: BaseException) -> str:
    """A short, stable name for an error, for metrics and JSON error bodies.

    Example:
        >>> error_kind(RateLimitError("slow down"))
        'rate_limit'
    """
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind
    if isinstance(exc, ConfigError):
        return "bad_input"
    return type(exc).__name__
