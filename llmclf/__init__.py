"""llmclf: text classification with LLMs, evaluated, distilled and routed.

Example:
    >>> import llmclf                                                    # doctest: +SKIP
    >>> clf = llmclf.Classifier("eval_sets/sst2/task.yaml", backend="llm:local")
    >>> clf.predict("I loved it").label
    'positive'
"""

from llmclf.backends.base import Backend, Hints
from llmclf.backends.registry import make_backend
from llmclf.classifier import Classifier
from llmclf.errors import (
    AllBackendsFailed,
    AuthError,
    BackendError,
    BackendSpecError,
    ConfigError,
    InputTextError,
    LLMClfError,
    LocalServerError,
    ModelLoadError,
    OutputValidationError,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimitError,
    StoreError,
    TaskFileError,
)
from llmclf.types import Example, Label, Prediction, Task, Usage

__version__ = "0.1.0"

__all__ = [
    "AllBackendsFailed",
    "AuthError",
    "Backend",
    "BackendError",
    "BackendSpecError",
    "Classifier",
    "ConfigError",
    "Example",
    "Hints",
    "InputTextError",
    "LLMClfError",
    "Label",
    "LocalServerError",
    "ModelLoadError",
    "OutputValidationError",
    "Prediction",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeout",
    "RateLimitError",
    "StoreError",
    "Task",
    "TaskFileError",
    "Usage",
    "__version__",
    "make_backend",
]
