"""Shared fixtures: an isolated LLMCLF_HOME per test, fake providers, stores and small tasks.

Helpers that are not fixtures (servers, waits, parsers) live in ``tests/helpers.py``.

Real provider calls are impossible here: every LLM test points llmclf at `FakeProvider` on
127.0.0.1 (or, for tests marked ``model``, at the real embedded Gemma server).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmclf.store import Store, close_stores
from llmclf.testing.fake_provider import FakeProvider
from llmclf.testing.postgres import TempPostgres, postgres_bin_dir
from llmclf.types import Task
from tests.helpers import REPO, SENTIMENT_TASK

# Hosted providers must never be reached from the test suite.
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLMCLF_API_KEY"):
    os.environ.pop(_var, None)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def llmclf_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Every test gets its own state directory (cache, runs, review queue); its stores and the
    HTTP clients litellm keeps per provider address are closed after it, so a long run does not
    pile up file descriptors (each fake provider listens on a new port)."""
    home = tmp_path_factory.mktemp("llmclf-home")
    monkeypatch.setenv("LLMCLF_HOME", str(home))
    # the store is $LLMCLF_HOME/llmclf.db unless a test names one (`--db` sets this variable)
    monkeypatch.setenv("LLMCLF_DATABASE_URL", "")
    yield home
    close_stores()
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        litellm.in_memory_llm_clients_cache.flush_cache()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A deterministic OpenAI-compatible server: 'good'/'loved' → positive, else negative."""
    with FakeProvider(rules={"loved": "positive", "good": "positive"}, default="negative") as fp:
        yield fp


@pytest.fixture
def sentiment_task() -> Task:
    return Task.from_yaml_text(SENTIMENT_TASK)


@pytest.fixture
def topic_task() -> Task:
    return Task.from_yaml_text(
        """
name: topics
kind: multiclass
labels:
  world: world news
  sports: sport
  business: business and economy
  scitech: science and technology
"""
    )


@pytest.fixture
def tags_task() -> Task:
    return Task.from_yaml_text(
        """
name: tags
kind: multilabel
labels:
  joy: the writer is happy
  anger: the writer is angry
  surprise: the writer is surprised
"""
    )


@pytest.fixture
def task() -> Task:
    """The shipped sst2 task (negative/positive)."""
    return Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")


@pytest.fixture
def llm() -> Iterator[FakeProvider]:
    """The escalation LLM of router tests: 'meh' and 'awful' are negative, the rest positive."""
    with FakeProvider(rules={"meh": "negative", "awful": "negative"}, default="positive") as fp:
        yield fp


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh SQLite store in the test's directory, closed after the test."""
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A real PostgreSQL server (Debian's binaries) in a temporary directory, once per session."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (scripts/test.sh "
                    "installs it when run as root)")
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed: pip install 'llmclf[postgres]'")
    with TempPostgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh store URL, SQLite file or PostgreSQL database, made the default store
    (``$LLMCLF_DATABASE_URL``) of the test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        pg: TempPostgres = request.getfixturevalue("postgres")
        url = pg.create_database("t_" + uuid.uuid4().hex[:12])
    monkeypatch.setenv("LLMCLF_DATABASE_URL", url)
    yield url
    close_stores()
