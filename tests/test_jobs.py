"""`llmclf.jobs.run_job`: the one resumable job runner behind `llmclf eval` and distill labelling.

Driven by the in-process `FunctionBackend` (a real `Backend` that records every batch)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from llmclf.errors import BackendError, ConfigError
from llmclf.jobs import Outcome, run_job
from llmclf.testing import FunctionBackend
from llmclf.types import Task


@dataclass(frozen=True)
class Item:
    key: str
    text: str


def _backend(task: Task, **kw) -> FunctionBackend:
    return FunctionBackend(task, lambda t: {"negative": 0.2, "positive": 0.8}, **kw)


def _items(n: int) -> list[Item]:
    return [Item(f"k{i}", f"text {i}") for i in range(n)]


def test_every_item_is_committed_once_in_the_calling_thread(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task)
    committed: list[Outcome[Item]] = []
    threads: set[str] = set()

    def commit(o: Outcome[Item]) -> None:
        threads.add(threading.current_thread().name)
        committed.append(o)

    counts = run_job(_items(10), backend.predict_batch, commit, total=10, label="t",
                     key=lambda i: i.key, concurrency=3, progress=False)  # fmt: skip
    assert sorted(o.item.key for o in committed) == sorted(i.key for i in _items(10))
    assert all(o.prediction is not None and o.prediction.label == "positive" for o in committed)
    assert threads == {threading.current_thread().name}
    assert (counts.resumed, counts.new, counts.failed) == (0, 10, 0)
    assert sorted(len(b) for b in backend.batches) == [1] * 10  # one text per request


def test_done_keys_are_skipped_and_never_asked(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task)
    committed: list[str] = []
    counts = run_job(_items(6), backend.predict_batch, lambda o: committed.append(o.item.key),
                     total=6, label="t", key=lambda i: i.key, done={"k0", "k3"},
                     batch_size=4, progress=False)  # fmt: skip
    assert backend.batches == [["text 1", "text 2", "text 4", "text 5"]]
    assert sorted(committed) == ["k1", "k2", "k4", "k5"]
    assert (counts.resumed, counts.new, counts.failed) == (2, 4, 0)


def test_a_failed_batch_is_asked_again_text_by_text(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task, fail_on="text 2")
    outcomes: list[Outcome[Item]] = []
    counts = run_job(_items(4), backend.predict_batch, outcomes.append, total=4, label="t",
                     batch_size=4, progress=False)  # fmt: skip
    by_key = {o.item.key: o for o in outcomes}
    assert isinstance(by_key["k2"].error, BackendError) and by_key["k2"].prediction is None
    assert all(by_key[k].prediction is not None for k in ("k0", "k1", "k3"))
    assert (counts.new, counts.failed) == (3, 1)


def test_stop_ends_the_job_after_the_requests_in_flight(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task, fail_on="text")
    outcomes: list[Outcome[Item]] = []
    run_job(_items(50), backend.predict_batch, outcomes.append, total=50, label="t",
            concurrency=1, stop=lambda: any(o.error for o in outcomes),
            progress=False)  # fmt: skip
    assert 1 <= len(outcomes) <= 3 and len(backend.batches) == len(outcomes)


def test_a_bug_in_commit_stops_the_job_and_propagates(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task)

    def commit(o: Outcome[Item]) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_job(_items(20), backend.predict_batch, commit, total=20, label="t",
                concurrency=2, progress=False)  # fmt: skip
    assert len(backend.batches) < 20


def test_bad_settings_are_config_errors(sentiment_task: Task) -> None:
    backend = _backend(sentiment_task)
    with pytest.raises(ConfigError, match="concurrency"):
        run_job([], backend.predict_batch, print, total=0, label="t", concurrency=0)
