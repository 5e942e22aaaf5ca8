"""llmclf: text classification with LLMs, evaluated, distilled and routed.

Example:
    >>> import llmclf                                                    # doctest: +SKIP
    >>> clf = llmclf.Classifier("eval_sets/sst2/task.yaml", backend="llm:local")
    >>> clf.predict("I loved it").label
    'positive'
"""

from typing import Any as _Any

from llmclf.backends.base import Backend, Hints
from llmclf.backends.registry import make_backend, register_backend_kind
from llmclf.classifier import Classifier
from llmclf.errors import (
    AllBackendsFailed,
    AuthError,
    BackendError,
    BackendSpecError,
    BackendTimeout,
    ConfigError,
    DistillError,
    ExportError,
    InputTextError,
    LLMClfError,
    LocalServerError,
    ModelLoadError,
    OutputValidationError,
    ParityError,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimitError,
    StoreError,
    TaskFileError,
    TeacherError,
    UnknownBackendHint,
)
from llmclf.store import Store as _Store
from llmclf.types import Example, Label, Prediction, Task, Usage


def _router_from_spec(
    target: str, task: Task | None, store: _Store | None, options: dict[str, _Any]
) -> Backend:
    """``router:<config.yaml>``. The registry (backends layer) never imports the router (the
    layer above, made of backends the registry builds); this package root, above both, tells
    it how to build one, importing the router only when a ``router:`` spec is used."""
    from llmclf.router import Router

    return Router.from_yaml(target, task=task, store=store)


register_backend_kind("router", _router_from_spec)

__version__ = "0.1.0"

__all__ = [
    "AllBackendsFailed",
    "AuthError",
    "Backend",
    "BackendError",
    "BackendSpecError",
    "BackendTimeout",
    "Classifier",
    "ConfigError",
    "DistillError",
    "Example",
    "ExportError",
    "Hints",
    "InputTextError",
    "LLMClfError",
    "Label",
    "LocalServerError",
    "ModelLoadError",
    "OutputValidationError",
    "ParityError",
    "Prediction",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeout",
    "RateLimitError",
    "StoreError",
    "Task",
    "TaskFileError",
    "TeacherError",
    "UnknownBackendHint",
    "Usage",
    "__version__",
    "make_backend",
]
