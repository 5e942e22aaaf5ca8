"""Fault injection: every provider fault ends in a correct retry, a fallback answer, or a typed
error, and ``/metrics`` counts each kind.

The faults are played by `FakeProvider` on 127.0.0.1 through the real litellm → instructor →
HTTP path; the service is a real uvicorn server. ``tests/test_llm_backend.py`` already checks the
retry/typed-error behaviour of the Python API for each fault; here it is checked end to end
through the service and its metrics, plus the embedded server's restart-once contract.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmclf import Classifier
from llmclf.backends.llm import FAULT_KINDS, LLMBackend, LLMConfig
from llmclf.backends.registry import make_backend
from llmclf.errors import LocalServerError, RateLimitError
from llmclf.hooks import Event
from llmclf.router import Router
from llmclf.service import create_app
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Task
from tests.helpers import REPO, RULES, Server, error_of, local_model_available, metric

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 2, "max_reasks": 2}


@dataclass(frozen=True)
class Case:
    """One fault kind: the fault, what /metrics calls it, and the typed error when it persists."""

    fault: Fault
    kind: str
    error_type: str
    options: tuple[tuple[str, str], ...] = ()


CASES = {
    "429 with Retry-After": Case(Fault.status(429, retry_after=0.05), "rate_limit", "rate_limit"),
    "500": Case(Fault.status(500), "server_error", "server_error"),
    "503": Case(Fault.status(503), "server_error", "server_error"),
    "timeout": Case(Fault.delay(1.5), "timeout", "timeout", (("timeout_s", "0.3"),)),
    "dropped connection": Case(Fault.drop(), "connection", "server_error"),
    "invalid JSON": Case(Fault.raw("certainly! the label is positive"), "invalid_json",
                         "invalid_output"),
    "label outside the set": Case(Fault.raw('{"label": "very_positive"}'), "label_outside_set",
                                  "invalid_output"),
    "JSON of the wrong shape": Case(Fault.raw('{"answer": "positive"}'), "invalid_output",
                                    "invalid_output"),
    "empty choices": Case(Fault.empty_choices(), "empty_response", "server_error"),
}  # fmt: skip


def test_the_fault_kinds_are_documented() -> None:
    assert {c.kind for c in CASES.values()} <= set(FAULT_KINDS)


@pytest.mark.parametrize("name", list(CASES))
def test_each_fault_is_retried_or_typed_and_counted_in_metrics(
    name: str, task: Task, llm: FakeProvider
) -> None:
    case = CASES[name]
    backend = make_backend(llm.spec(**FAST, **dict(case.options)), task)
    with Server(create_app(backend)) as srv, srv.client() as c:
        # once: retried (or re-asked), and the answer is the right one
        llm.push(case.fault)
        ok = c.post("/v1/classify", json={"text": "an awful film"})
        # every attempt: a typed error, never a 500
        llm.push(*[case.fault] * 3)
        failed = c.post("/v1/classify", json={"text": "a lovely film"})
        # the provider is healthy again: so is the service
        after = c.post("/v1/classify", json={"text": "a lovely film"})
        text = c.get("/metrics").text
    assert ok.status_code == 200, ok.text
    assert ok.json()["prediction"]["label"] == "negative"
    assert failed.status_code == 502, failed.text
    assert error_of(failed)["type"] == case.error_type
    assert after.status_code == 200 and after.json()["prediction"]["label"] == "positive"
    # 1 fault survived + 3 that ended in the typed error, all counted under their own kind
    assert metric(text, "llmclf_provider_faults_total", task="sst2", kind=case.kind) == 4
    others = [k for k in FAULT_KINDS if k != case.kind]
    for k in others:
        with pytest.raises(AssertionError, match="no sample"):
            metric(text, "llmclf_provider_faults_total", kind=k)
    assert metric(text, "llmclf_errors_total", type=case.error_type) == 1
    assert metric(text, "llmclf_http_requests_total", endpoint="/v1/classify", status="502") == 1
    with pytest.raises(AssertionError, match="no sample"):
        metric(text, "llmclf_http_requests_total", endpoint="/v1/classify", status="500")


def test_retry_after_is_read_from_the_429(task: Task, llm: FakeProvider) -> None:
    llm.push(*[Fault.status(429, retry_after=0.07)] * 3)
    with pytest.raises(RateLimitError) as err:
        Classifier(task, backend=llm.spec(**FAST)).predict("good")
    assert err.value.retry_after == pytest.approx(0.07)
    assert err.value.attempts == 3 and err.value.status_code == 429


def test_a_persistent_fault_ends_in_the_fallbacks_answer(
    task: Task, llm: FakeProvider, tmp_path: Path
) -> None:
    """Router: the escalation LLM keeps failing, the fallback LLM answers; all counted."""
    with FakeProvider(default="negative", confidence=0.8) as backup:
        router = Router.from_config(
            {
                "backends": {
                    "llm": {"spec": llm.spec(**FAST)},
                    "backup": {"spec": backup.spec(**FAST)},
                },
                "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
                "fallbacks": ["backup"],
            },
            task=task,
            store=Store(tmp_path / "r.db"),
            backends={"student": KeywordStudent(task, RULES)},
        )
        llm.push(*[Fault.status(503)] * 3)
        with Server(create_app(router)) as srv, srv.client() as c:
            resp = c.post("/v1/classify", json={"text": "meh"})  # the student is unsure
            text = c.get("/metrics").text
    assert resp.status_code == 200, resp.text
    pred = resp.json()["prediction"]
    assert pred["label"] == "negative" and pred["backend"] == "backup"
    assert pred["route"] == ["student", "llm", "backup"]
    assert "fallback after llm failed: ProviderServerError" in pred["route_reason"]
    assert metric(text, "llmclf_provider_faults_total", backend="llm", kind="server_error") == 3
    assert metric(text, "llmclf_backend_calls_total", backend="llm", outcome="server_error") == 1
    assert metric(text, "llmclf_backend_calls_total", backend="backup", outcome="ok") == 1


def test_faults_mixed_under_concurrency_all_end_well(task: Task, llm: FakeProvider) -> None:
    """Many concurrent requests while every kind of fault is queued: each request gets the
    right answer (the retry budget covers every queued fault), and the counts add up."""
    faults = [c.fault for c in CASES.values()]
    backend = make_backend(
        llm.spec(backoff_base_s=0.01, backoff_max_s=0.05, max_retries=9, max_reasks=9,
                 timeout_s=0.5, concurrency=8), task,
    )  # fmt: skip
    texts = [f"review {i}: " + ("awful" if i % 3 == 0 else "lovely") for i in range(40)]
    with Server(create_app(backend)) as srv, srv.client() as c:
        llm.push(*faults)
        resp = c.post("/v1/classify", json={"texts": texts})
        text = c.get("/metrics").text
    assert resp.status_code == 200, resp.text
    labels = [p["label"] for p in resp.json()["predictions"]]
    assert labels == ["negative" if i % 3 == 0 else "positive" for i in range(40)]
    counted = {k: 0.0 for k in FAULT_KINDS}
    for k in FAULT_KINDS:
        with contextlib.suppress(AssertionError):  # no sample: not counted
            counted[k] = metric(text, "llmclf_provider_faults_total", kind=k)
    expected: dict[str, int] = {}
    for case in CASES.values():
        expected[case.kind] = expected.get(case.kind, 0) + 1
    assert {k: v for k, v in counted.items() if v} == expected


# -- the embedded server: restarted once, the failure reported when it recurs ----------------------
class Supervisor:
    """Plays the embedded-server role for `LLMBackend`: a `FakeProvider` in its own process that
    the test kills with SIGKILL, restarted (on a new port) at most once after a connection
    failure."""

    CODE = (
        "import sys, time; from llmclf.testing.fake_provider import FakeProvider;"
        "fp = FakeProvider(default='positive').start(); print(fp.base_url, flush=True);"
        "time.sleep(3600)"
    )

    def __init__(self) -> None:
        self.restarts = 0
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE], env=env, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def base_url(self) -> str:
        return self.url

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def on_connection_failure(self) -> bool:
        if self.restarts >= 1:
            return False
        self.restarts += 1
        self._start()
        return True


def test_a_server_killed_mid_run_is_restarted_once_then_reported(task: Task) -> None:
    sup = Supervisor()
    seen: list[str] = []
    backend = LLMBackend(
        task,
        LLMConfig(model="openai/fake", api_key="sk-no-key", cache=False, backoff_base_s=0.01),
        name="llm:local",
        base_url_provider=sup.base_url,
        on_connection_failure=sup.on_connection_failure,
    )
    backend.hooks.on(Event.PROVIDER_FAULT, seen.append)
    try:
        assert backend.predict_batch(["one"])[0].label == "positive"
        sup.kill()
        assert backend.predict_batch(["two"])[0].label == "positive"  # after one restart
        assert sup.restarts == 1 and seen == ["connection"]
        sup.kill()
        with pytest.raises(LocalServerError, match="died again after a restart"):
            backend.predict_batch(["three"])
        assert seen == ["connection", "connection"]
    finally:
        sup.kill()
        backend.close()


@pytest.mark.model
@pytest.mark.skipif(not local_model_available(), reason="embedded model not installed")
def test_the_real_embedded_server_is_restarted_once_then_the_failure_is_reported(
    task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmclf.backends.local_server import LocalServer, local_model_path

    model = local_model_path()
    monkeypatch.setenv("LLMCLF_LOCAL_MODEL", str(model))
    LocalServer._shared = None
    server = LocalServer.shared()
    try:
        clf = Classifier(task, backend="llm:local?cache=false&max_retries=1")
        assert clf.predict("a delightful film").label in task.label_names
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        time.sleep(0.3)
        assert clf.predict("a tedious film").label in task.label_names
        second = server.pid
        assert second is not None and second != first and server.restarts == 1
        os.kill(second, signal.SIGKILL)
        time.sleep(0.3)
        with pytest.raises(LocalServerError, match="died again"):
            clf.predict("a third film")
    finally:
        server.stop()
        LocalServer._shared = None


def test_faults_of_an_llm_inside_a_nested_router_are_counted_under_the_outer_name(
    task: Task, llm: FakeProvider, tmp_path: Path
) -> None:
    """The fault hooks reach every LLM of the tree: the inner router's LLM retries a 429 and
    /metrics counts it under the name the outer router gives the inner one."""
    store = Store(tmp_path / "r.db")
    inner = Router.from_config(
        {"backends": {"llm": {"spec": llm.spec(**FAST)}}, "fallbacks": ["llm"]},
        task=task, store=store,
    )  # fmt: skip
    outer = Router.from_config(
        {
            "backends": {"backup": {"spec": llm.spec(**FAST)}},
            "cascade": {"student": "student", "escalate_to": "deep", "threshold": 0.8},
            "fallbacks": ["backup"],
        },
        task=task,
        store=store,
        backends={"student": KeywordStudent(task, RULES), "deep": inner},
    )
    relayed: list[tuple[str, str]] = []
    outer.hooks.on(Event.BACKEND_FAULT, lambda backend, kind: relayed.append((backend, kind)))
    llm.push(Fault.status(429, retry_after=0.01))
    with Server(create_app(outer)) as srv, srv.client() as c:
        resp = c.post("/v1/classify", json={"text": "meh"})  # the student is unsure
        text = c.get("/metrics").text
    assert resp.status_code == 200, resp.text
    pred = resp.json()["prediction"]
    assert (pred["backend"], pred["route"]) == ("deep", ["student", "deep"])
    assert relayed == [("deep", "rate_limit")]
    assert metric(text, "llmclf_provider_faults_total", backend="deep", kind="rate_limit") == 1
