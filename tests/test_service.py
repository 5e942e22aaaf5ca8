"""The HTTP service on a real uvicorn server on 127.0.0.1, driven with httpx.

Covers the endpoints, the OpenAPI spec, auth, rate limits, body/batch limits, overload (503),
error bodies, /metrics, micro-batching, escalations not blocking the student, parity with
`Classifier(task, backend="router:...")`, and `llmclf serve` as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from llmclf.backends.base import Backend, Hints
from llmclf.classifier import Classifier
from llmclf.router import Router
from llmclf.service import MicroBatcher, ServiceSettings, create_app
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Prediction, Task
from tests.helpers import REPO, RULES, Server, error_of, free_port, metric, wait_until


def router_config(llm: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "backends": {"llm": {"spec": llm.spec(), "options": {"max_retries": 0}}},
        "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
        **extra,
    }


def make_router(task: Task, store: Store, llm: FakeProvider, student: Backend | None = None,
                **extra: Any) -> Router:
    return Router.from_config(
        router_config(llm, **extra),
        task=task,
        store=store,
        backends={"student": student or KeywordStudent(task, RULES)},
    )


# -- endpoints ------------------------------------------------------------------------------------
def test_classify_one_text_and_a_batch(task: Task, store: Store, llm: FakeProvider) -> None:
    app = create_app([make_router(task, store, llm)])
    with Server(app) as srv, srv.client() as c:
        one = c.post("/v1/classify", json={"text": "a great film"})
        batch = c.post(
            "/v1/classify", json={"texts": ["a great film", "meh"], "task": "sst2"}
        )
        forced = c.post("/v1/classify", json={"text": "a great film", "hints": {"backend": "llm"}})
    assert one.status_code == 200, one.text
    p = one.json()
    assert p["task"] == "sst2"
    assert p["prediction"]["label"] == "positive"
    assert p["prediction"]["route"] == ["student"]
    assert p["prediction"]["route_reason"] == "student confident 0.97>=0.80"
    assert p["prediction"]["scores"] == {"negative": 0.03, "positive": 0.97}
    preds = batch.json()["predictions"]
    assert [q["label"] for q in preds] == ["positive", "negative"]
    assert [q["backend"] for q in preds] == ["student", "llm"]
    assert preds[1]["route_reason"] == "escalated: 0.55<0.80"
    assert forced.json()["prediction"]["route_reason"] == "forced by hint"


def test_tasks_health_and_openapi(task: Task, store: Store, llm: FakeProvider) -> None:
    app = create_app([make_router(task, store, llm)])
    with Server(app) as srv, srv.client() as c:
        tasks = c.get("/v1/tasks").json()["tasks"]
        health = c.get("/healthz").json()
        spec = c.get("/openapi.json").json()
    assert [t["name"] for t in tasks] == ["sst2"]
    assert [lab["name"] for lab in tasks[0]["labels"]] == ["negative", "positive"]
    assert health == {"status": "ok", "tasks": ["sst2"], "in_flight": 0}
    op = spec["paths"]["/v1/classify"]["post"]
    assert "422" in op["responses"] and "503" in op["responses"]
    req = spec["components"]["schemas"]["ClassifyRequest"]
    assert {"text", "texts", "task", "hints"} <= set(req["properties"])
    assert "/v1/tasks" in spec["paths"] and "/metrics" in spec["paths"]


def test_several_tasks_need_a_task_name(task: Task, store: Store, llm: FakeProvider) -> None:
    topics = Task(name="topics", kind="multiclass", labels={"a": "", "b": "", "c": ""})
    with FakeProvider(default="b") as fake:
        other = Router.from_config(
            {"backends": {"llm": fake.spec()}, "fallbacks": ["llm"]}, task=topics, store=store
        )
        app = create_app([make_router(task, store, llm), other])
        with Server(app) as srv, srv.client() as c:
            no_task = c.post("/v1/classify", json={"text": "hi"})
            unknown = c.post("/v1/classify", json={"text": "hi", "task": "nope"})
            ok = c.post("/v1/classify", json={"text": "hi", "task": "topics"})
    assert no_task.status_code == 422
    assert "several tasks" in error_of(no_task)["message"]
    assert unknown.status_code == 404 and error_of(unknown)["type"] == "unknown_task"
    assert ok.json()["prediction"]["label"] == "b"


# -- errors ---------------------------------------------------------------------------------------
def test_bad_input_gets_clear_json_errors(task: Task, store: Store, llm: FakeProvider) -> None:
    settings = ServiceSettings(max_batch_size=3, max_body_bytes=5_000)
    app = create_app([make_router(task, store, llm)], settings)
    with Server(app) as srv, srv.client() as c:
        cases = {
            "not json": c.post(
                "/v1/classify", content=b"{nope", headers={"content-type": "application/json"}
            ),
            "both": c.post("/v1/classify", json={"text": "a", "texts": ["b"]}),
            "neither": c.post("/v1/classify", json={"task": "sst2"}),
            "empty text": c.post("/v1/classify", json={"texts": ["fine", "  "]}),
            "empty list": c.post("/v1/classify", json={"texts": []}),
            "wrong type": c.post("/v1/classify", json={"text": 3}),
            "lone surrogate": c.post(
                "/v1/classify",
                content=b'{"text": "great \\ud800 film"}',
                headers={"content-type": "application/json"},
            ),
            "unknown field": c.post("/v1/classify", json={"text": "a", "colour": "red"}),
            "bad hint": c.post("/v1/classify", json={"text": "a", "hints": {"min_confidence": 2}}),
            "unknown backend hint": c.post(
                "/v1/classify", json={"text": "a", "hints": {"backend": "gpt-9"}}
            ),
            "batch too large": c.post("/v1/classify", json={"texts": ["a"] * 4}),
            "body too large": c.post("/v1/classify", json={"text": "x" * 6_000}),
            "chunked too large": c.post(
                "/v1/classify",
                content=iter([b'{"text": "', b"y" * 6_000, b'"}']),
                headers={"content-type": "application/json"},
            ),
            "no route": c.get("/v2/everything"),
            "wrong method": c.get("/v1/classify"),
        }
    expected = {
        "not json": (422, "invalid_request", "the body is not valid JSON"),
        "both": (422, "invalid_request", "give exactly one of 'text'"),
        "neither": (422, "invalid_request", "give exactly one of 'text'"),
        "empty text": (422, "bad_input", "input #1: text is empty"),
        "empty list": (422, "invalid_request", "texts: List should have at least 1 item"),
        "wrong type": (422, "invalid_request", "text: Input should be a valid string"),
        "lone surrogate": (422, "bad_input", "input #0: text is not valid Unicode"),
        "unknown field": (422, "invalid_request", "colour: unknown field"),
        "bad hint": (422, "invalid_request", "hints.min_confidence: Input should be less"),
        "unknown backend hint": (422, "bad_input", "hint backend 'gpt-9' is not one of"),
        "batch too large": (413, "batch_too_large", "4 texts in one request; the limit is 3"),
        "body too large": (413, "body_too_large", "over the limit of 5000 bytes"),
        "chunked too large": (413, "body_too_large", "over the limit of 5000 bytes"),
        "no route": (404, "not_found", "Not Found"),
        "wrong method": (405, "method_not_allowed", "Method Not Allowed"),
    }
    for name, resp in cases.items():
        status, type_, fragment = expected[name]
        err = error_of(resp)
        assert (resp.status_code, err["type"]) == (status, type_), (name, resp.text)
        assert fragment in err["message"], (name, err)


class Exploding(Backend):
    """A broken backend: raises an unexpected error carrying internal details."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.name = "exploding"

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        raise RuntimeError("secret internals at /srv/model/weights")


def test_no_stack_trace_reaches_the_client(task: Task, store: Store, llm: FakeProvider) -> None:
    with Server(create_app(Exploding(task))) as srv, srv.client() as c:
        resp = c.post("/v1/classify", json={"text": "hi"})
    assert resp.status_code == 500
    assert error_of(resp) == {
        "type": "internal",
        "message": "internal error; the server log has the details",
    }
    assert "secret" not in resp.text and "Traceback" not in resp.text


def test_every_backend_failing_is_a_502_naming_each(task: Task, store: Store) -> None:
    with FakeProvider() as a, FakeProvider() as b:
        router = Router.from_config(
            {
                "backends": {"a": {"spec": a.spec(), "options": {"max_retries": 0}},
                             "b": {"spec": b.spec(), "options": {"max_retries": 0}}},
                "fallbacks": ["a", "b"],
            },
            task=task,
            store=store,
        )
        a.push(Fault.status(500))
        b.push(Fault.status(503))
        with Server(create_app(router)) as srv, srv.client() as c:
            resp = c.post("/v1/classify", json={"text": "hi"})
    err = error_of(resp)
    assert resp.status_code == 502 and err["type"] == "all_failed"
    assert "a: ProviderServerError" in err["message"] and "b: ProviderServerError" in err["message"]


def test_overload_answers_503_with_retry_after(task: Task, store: Store, llm: FakeProvider) -> None:
    settings = ServiceSettings(max_in_flight=1, retry_after_s=2)
    app = create_app([make_router(task, store, llm)], settings)
    llm.push(Fault.delay(3.0))
    with Server(app) as srv, srv.client() as c, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(c.post, "/v1/classify", json={"text": "meh"})  # escalates: slow LLM
        deadline = time.monotonic() + 10
        while c.get("/healthz").json()["in_flight"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = c.post("/v1/classify", json={"text": "a great film"})
        assert slow.result().status_code == 200
        after = c.post("/v1/classify", json={"text": "a great film"})
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "2"
    assert error_of(busy)["type"] == "overloaded"
    assert after.status_code == 200


# -- auth and rate limits -------------------------------------------------------------------------
def test_api_key_auth(task: Task, store: Store, llm: FakeProvider) -> None:
    settings = ServiceSettings(api_keys=frozenset({"k-one", "k-two"}))
    app = create_app([make_router(task, store, llm)], settings)
    body = {"text": "a great film"}
    with Server(app) as srv, srv.client() as c:
        missing = c.post("/v1/classify", json=body)
        wrong = c.post("/v1/classify", json=body, headers={"X-API-Key": "k-three"})
        header = c.post("/v1/classify", json=body, headers={"X-API-Key": "k-one"})
        bearer = c.post("/v1/classify", json=body, headers={"Authorization": "Bearer k-two"})
        tasks = c.get("/v1/tasks")
        health = c.get("/healthz")
        metrics = c.get("/metrics")
    assert missing.status_code == 401 and error_of(missing)["type"] == "unauthorized"
    assert "X-API-Key" in error_of(missing)["message"]
    assert wrong.status_code == 401 and error_of(wrong)["message"] == "invalid API key"
    assert header.status_code == 200 and bearer.status_code == 200
    assert tasks.status_code == 401
    assert health.status_code == 200 and metrics.status_code == 200


def test_rate_limit_is_per_key(task: Task, store: Store, llm: FakeProvider) -> None:
    settings = ServiceSettings(
        api_keys=frozenset({"alice", "bob"}), rate_limit_per_s=0.5, rate_burst=2
    )
    app = create_app([make_router(task, store, llm)], settings)
    body = {"text": "a great film"}
    with Server(app) as srv, srv.client() as c:
        alice = [c.post("/v1/classify", json=body, headers={"X-API-Key": "alice"})
                 for _ in range(3)]
        bob = c.post("/v1/classify", json=body, headers={"X-API-Key": "bob"})
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert error_of(alice[2])["type"] == "rate_limited"
    assert int(alice[2].headers["retry-after"]) >= 1
    assert bob.status_code == 200


# -- metrics --------------------------------------------------------------------------------------
def test_metrics_text(task: Task, store: Store, llm: FakeProvider) -> None:
    router = make_router(
        task, store, llm,
        shadow={"backend": "llm", "share": 1.0, "min_samples": 1},
    )
    app = create_app([router])
    with Server(app) as srv, srv.client() as c:
        for text in ["a great film", "awful", "meh", "meh"]:
            assert c.post("/v1/classify", json={"text": text}).status_code == 200
        c.post("/v1/classify", json={"text": ""})
        llm.push(Fault.status(429, retry_after=0))
        c.post("/v1/classify", json={"text": "meh, uncached", "hints": {"backend": "llm"}})
        deadline = time.monotonic() + 20
        while (router.shadow_stats().completed < 2):  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        text = c.get("/metrics").text
    assert metric(text, "llmclf_http_requests_total", endpoint="/v1/classify", status="200") == 4
    assert metric(text, "llmclf_http_requests_total", endpoint="/v1/classify", status="422") == 1
    assert metric(text, "llmclf_http_requests_total", endpoint="/v1/classify", status="502") == 1
    assert metric(text, "llmclf_errors_total", type="bad_input") == 1
    assert metric(text, "llmclf_errors_total", type="all_failed") == 1
    assert metric(text, "llmclf_texts_total", task="sst2", backend="student") == 2
    assert metric(text, "llmclf_texts_total", task="sst2", backend="llm") == 2
    assert metric(text, "llmclf_escalations_total", task="sst2") == 2
    assert metric(text, "llmclf_cascade_texts_total", task="sst2") == 4
    assert metric(text, "llmclf_escalation_rate", task="sst2") == 0.5
    # the second "meh" was answered from the LLM response cache
    assert metric(text, "llmclf_cache_hits_total", task="sst2", backend="llm") == 1
    assert metric(text, "llmclf_backend_latency_seconds_count", backend="student") == 4
    assert metric(text, "llmclf_backend_latency_seconds_bucket", backend="llm", le="+Inf") == 3
    assert metric(text, "llmclf_backend_calls_total", backend="llm", outcome="ok") == 2
    assert metric(text, "llmclf_backend_calls_total", backend="llm", outcome="rate_limit") == 1
    # the shadow LLM agreed with the student on "a great film" and "awful"
    assert metric(text, "llmclf_shadow_agreement", task="sst2", backend="llm") == 1.0
    assert metric(text, "llmclf_shadow_compared_total", task="sst2", agreed="true") == 2
    assert metric(text, "llmclf_provider_faults_total", backend="llm", kind="rate_limit") == 1
    assert metric(text, "llmclf_microbatch_size_count", backend="student") >= 1
    assert metric(text, "llmclf_http_request_duration_seconds_count", endpoint="/v1/classify") == 6


def test_ab_arms_have_their_own_metrics(task: Task, store: Store, llm: FakeProvider) -> None:
    router = make_router(task, store, llm, ab={"arms": {"cascade": 1, "llm": 1}})
    keys = {router.arm_for("x", Hints(request_key=f"k{i}")): f"k{i}" for i in range(50)}
    with Server(create_app(router)) as srv, srv.client() as c:
        for arm, n in (("cascade", 3), ("llm", 2)):
            for _ in range(n):
                r = c.post("/v1/classify",
                           json={"text": "a great film", "hints": {"request_key": keys[arm]}})
                assert r.json()["prediction"]["route_reason"].startswith(f"ab arm {arm}: ")
        text = c.get("/metrics").text
    assert metric(text, "llmclf_ab_texts_total", task="sst2", arm="cascade", outcome="ok") == 3
    assert metric(text, "llmclf_ab_texts_total", task="sst2", arm="llm", outcome="ok") == 2
    assert metric(text, "llmclf_ab_latency_seconds_count", task="sst2", arm="llm") == 2


# -- micro-batching and isolation -----------------------------------------------------------------
async def _post_many(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        return list(await asyncio.gather(*(c.post("/v1/classify", json=b) for b in bodies)))


def test_concurrent_single_text_requests_are_micro_batched(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    student = KeywordStudent(task, RULES, delay_s=0.05)  # slow enough for requests to pile up
    app = create_app([make_router(task, store, llm, student)], ServiceSettings(microbatch_max=8))
    texts = [f"great film number {i}" for i in range(40)]
    with Server(app) as srv:
        resps = asyncio.run(_post_many(srv.url, [{"text": t} for t in texts]))
        with srv.client() as c:
            text = c.get("/metrics").text
    assert all(r.status_code == 200 for r in resps)
    # each response answers its own text
    assert sorted(r.json()["prediction"]["route_reason"] for r in resps) == [
        "student confident 0.97>=0.80"
    ] * 40
    sizes = [len(b) for b in student.batches]
    assert sum(sizes) == 40 and sorted(t for b in student.batches for t in b) == sorted(texts)
    assert max(sizes) > 1 and max(sizes) <= 8
    assert metric(text, "llmclf_microbatch_size_count", backend="student") == len(sizes)
    assert metric(text, "llmclf_microbatch_size_sum", backend="student") == 40


def test_micro_batcher_keeps_requests_with_different_hints_apart(task: Task) -> None:
    student = KeywordStudent(task, RULES, delay_s=0.02)
    batcher = MicroBatcher(student, max_wait_ms=20, max_batch=16)

    async def go() -> list[list[Prediction]]:
        calls = [batcher.apredict_batch([f"great {i}"], Hints(request_key=str(i % 2)))
                 for i in range(10)]
        return list(await asyncio.gather(*calls))

    out = asyncio.run(go())
    assert [p[0].label for p in out] == ["positive"] * 10
    for batch in student.batches:
        assert len({int(t.split()[1]) % 2 for t in batch}) == 1
    assert sum(batcher.batch_sizes.elements()) == 10


def test_escalations_do_not_hold_up_student_answers(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    app = create_app([make_router(task, store, llm)])
    llm.push(Fault.delay(5.0))
    with Server(app) as srv, srv.client() as c, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(c.post, "/v1/classify", json={"text": "meh"})
        deadline = time.monotonic() + 10
        while c.get("/healthz").json()["in_flight"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fast = [c.post("/v1/classify", json={"text": f"great {i}"}) for i in range(20)]
        # all twenty student answers came back while the escalation is still waiting
        assert not slow.done()
        assert all(r.json()["prediction"]["backend"] == "student" for r in fast)
        assert slow.result().json()["prediction"]["backend"] == "llm"


def test_service_answers_like_the_python_classifier(
    tmp_path: Path, task: Task, llm: FakeProvider
) -> None:
    with FakeProvider(rules={"meh": "positive"}, default="negative", confidence=0.7) as student:
        cfg = tmp_path / "router.yaml"
        cfg.write_text(
            f"task: {REPO / 'eval_sets/sst2/task.yaml'}\n"
            "backends:\n"
            f"  student: {{spec: '{student.spec()}', options: {{max_retries: 0}}}}\n"
            f"  llm: '{llm.spec()}'\n"
            "cascade: {student: student, escalate_to: llm, threshold: 0.8}\n"
            "review: {threshold: 0.95}\n",
            encoding="utf-8",
        )
        texts = ["meh", "awful", "a great film"]
        hints = [{}, {"min_confidence": 0.6}, {"backend": "llm"}]
        with Classifier(task, backend=f"router:{cfg}") as clf:
            local = [clf.predict(t, Hints(**h)) for t, h in zip(texts, hints, strict=True)]
        with Server(create_app(Router.from_yaml(cfg))) as srv, srv.client() as c:
            remote = [
                c.post("/v1/classify", json={"text": t, "hints": h}).json()["prediction"]
                for t, h in zip(texts, hints, strict=True)
            ]
    assert [(p.label, list(p.route), p.route_reason, p.scores) for p in local] == [
        (r["label"], r["route"], r["route_reason"], r["scores"]) for r in remote
    ]
    assert [p.route_reason for p in local] == [
        "escalated: 0.70<0.80",
        "student confident 0.70>=0.60 (min_confidence hint)",
        "forced by hint",
    ]


# -- the CLI --------------------------------------------------------------------------------------
def test_llmclf_serve_cli(tmp_path: Path, llm: FakeProvider) -> None:
    with FakeProvider(default="positive", confidence=0.95) as student:
        cfg = tmp_path / "router.yaml"
        cfg.write_text(
            "task: sst2\nbackends:\n"
            f"  student: '{student.spec()}'\n  llm: '{llm.spec()}'\n"
            "cascade: {student: student, escalate_to: llm, threshold: 0.9}\n"
            "review: {threshold: 0.99}\n",
            encoding="utf-8",
        )
        port = free_port()
        env = {**os.environ, "SVC_KEY": "cli-secret"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
             "--port", str(port), "--api-key-env", "SVC_KEY"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, proc, 60)
            denied = httpx.post(url + "/v1/classify", json={"text": "hi"})
            ok = httpx.post(url + "/v1/classify", json={"text": "hi"},
                            headers={"X-API-Key": "cli-secret"})
            # the review page and its API, under the same key, on the router's queue
            page = httpx.get(url + "/review")
            review_denied = httpx.get(url + "/v1/review/items")
            deadline = time.monotonic() + 30
            items: list = []
            while not items and time.monotonic() < deadline:
                items = httpx.get(url + "/v1/review/items",
                                  headers={"X-API-Key": "cli-secret"}).json()["items"]
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert denied.status_code == 401
    assert ok.status_code == 200
    assert ok.json()["prediction"]["route_reason"] == "student confident 0.95>=0.90"
    assert page.status_code == 200 and "llmclf review" in page.text
    assert review_denied.status_code == 401
    assert [it["text"] for it in items] == ["hi"]
    assert f"serving sst2 on http://127.0.0.1:{port}" in err
    assert "cli-secret" not in err


def test_llmclf_serve_reports_config_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text("task: sst2\nbackends:\n  a: llm:local\nfallbacks: [b]\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"{cfg}:4: fallbacks.0: unknown backend 'b'" in proc.stderr
    assert "Traceback" not in proc.stderr
