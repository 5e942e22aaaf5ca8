"""Fakes shipped with llmclf, so tests and users can drive everything without a network.

- `FakeProvider`: a deterministic OpenAI-compatible chat server on 127.0.0.1 (scripted labels,
  logprobs and faults), reached through the real litellm -> instructor -> HTTP path.
- `FunctionBackend`, `KeywordStudent`: in-process backends whose scores you set.
- `TempPostgres` (`llmclf.testing.postgres`): a real throwaway PostgreSQL server for store tests.
"""

from llmclf.testing.fake_backend import FunctionBackend, KeywordStudent
from llmclf.testing.fake_batches import BatchScript
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.testing.postgres import TempPostgres

__all__ = [
    "BatchScript",
    "FakeProvider",
    "Fault",
    "FunctionBackend",
    "KeywordStudent",
    "TempPostgres",
]
