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
from llmclf.types import Example, Label, Prediction, Task, Usage

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
