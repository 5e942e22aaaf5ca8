"""The HTTP service (FastAPI + uvicorn): `create_app`, its settings, micro-batching, metrics.

Example:
    >>> from llmclf.router import Router                                  # doctest: +SKIP
    >>> from llmclf.service import ServiceSettings, create_app
    >>> app = create_app([Router.from_yaml("router.yaml")], ServiceSettings(max_batch_size=64))
"""

from __future__ import annotations

from llmclf.service.app import ApiError, ServiceSettings, create_app
from llmclf.service.batching import MicroBatcher
from llmclf.service.metrics import ServiceMetrics

__all__ = ["ApiError", "MicroBatcher", "ServiceMetrics", "ServiceSettings", "create_app"]
