"""The review page's HTTP API on a real server: key and rate limit as /v1/*, POST-only actions,
decide/undo/bulk with one decision per row (409 for the second), filters, multi-label, and
``llmclf review ui`` serving the page without a classifier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmclf.service import ServiceSettings
from llmclf.service.app import create_review_app
from llmclf.store import Store
from tests.helpers import Server, error_of, free_port, wait_until

KEY = "k-review"
AUTH = {"X-API-Key": KEY}
SST2 = {"name": "sst2", "kind": "binary", "labels": ["negative", "positive"]}
TAGS = {"name": "tags", "kind": "multilabel", "labels": ["joy", "anger", "surprise"]}


def pred(label: str, conf: float, route: list[str], task: dict = SST2, **extra: object) -> dict:
    other = next(lab for lab in task["labels"] if lab != label)
    return {"labels": [label], "label": label, "scores": {label: conf, other: round(1 - conf, 6)},
            "confidence": conf, "route": route, "route_reason": "escalated: 0.55<0.80"
            if len(route) > 1 else "student confident", "task": task, **extra}  # fmt: skip


@pytest.fixture
def rows(store: Store) -> dict[str, int]:
    return {
        "low": store.review_add("sst2", "meh film", pred("negative", 0.45, ["student", "llm"])),
        "mid": store.review_add("sst2", "fine, I guess", pred("positive", 0.6, ["student"])),
        "high": store.review_add(
            "sst2", "great", pred("positive", 0.95, ["student"], review_strategy="disagreement",
                                  shadow={"backend": "llm", "labels": ["negative"]})
        ),
        "tags": store.review_add("tags", "what a day", pred("joy", 0.6, ["llm"], task=TAGS)),
    }


def test_the_api_needs_the_key_and_actions_are_posts(store: Store, rows: dict[str, int]) -> None:
    app = create_review_app(store, ServiceSettings(api_keys=frozenset({KEY})))
    with Server(app) as srv, srv.client() as c:
        page = c.get("/review")  # the page itself holds no data
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/review/static/review.js"' in page.text and "http" not in page.text
        assert c.get("/review/config").json() == {"auth_required": True}
        assert c.get("/review/static/review.js").status_code == 200
        js = c.get("/review/static/review.js").text
        assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
        assert c.get("/review/static/../store.py").status_code == 404

        assert error_of(c.get("/v1/review/items"))["type"] == "unauthorized"
        r = c.post(f"/v1/review/items/{rows['low']}/decide", json={"action": "accept"})
        assert r.status_code == 401
        assert c.get(f"/v1/review/items/{rows['low']}/decide", headers=AUTH).status_code == 405
        assert store.review_counts("sst2")["pending"] == 3  # nothing was decided
        assert c.get("/v1/review/items", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/review/items", headers={"Authorization": f"Bearer {KEY}"}).is_success


def test_the_rate_limit_applies_to_the_review_api(store: Store, rows: dict[str, int]) -> None:
    settings = ServiceSettings(api_keys=frozenset({KEY}), rate_limit_per_s=0.01, rate_burst=2)
    with Server(create_review_app(store, settings)) as srv, srv.client() as c:
        assert c.get("/v1/review/tasks", headers=AUTH).is_success
        assert c.get("/v1/review/items", headers=AUTH).is_success
        r = c.post(f"/v1/review/items/{rows['low']}/decide", headers=AUTH,
                   json={"action": "skip"})  # fmt: skip
        assert r.status_code == 429 and r.headers["retry-after"]
    assert store.review_counts("sst2")["skipped"] == 0


def test_decide_undo_bulk_and_conflicts(store: Store, rows: dict[str, int]) -> None:
    with Server(create_review_app(store, ServiceSettings())) as srv, srv.client() as c:
        tasks = c.get("/v1/review/tasks").json()["tasks"]
        assert [(t["name"], t["kind"], t["counts"]["pending"]) for t in tasks] == [
            ("sst2", "binary", 3), ("tags", "multilabel", 1)
        ]
        low = c.post(f"/v1/review/items/{rows['low']}/decide",
                     json={"action": "label", "labels": ["positive"], "reviewer": "ann"})
        assert low.status_code == 200, low.text
        assert low.json()["counts"] == {"pending": 2, "labelled": 1, "skipped": 0}
        # a second person on the same row: one decision kept, a clear message for the second
        again = c.post(f"/v1/review/items/{rows['low']}/decide",
                       json={"action": "label", "labels": ["negative"], "reviewer": "bob"})
        assert again.status_code == 409
        body = again.json()["error"]
        assert body["type"] == "conflict"
        assert body["message"].startswith(f"review #{rows['low']} was already labelled positive "
                                          "by ann")  # fmt: skip
        row = store.review_get(rows["low"])
        assert row is not None and row["gold"] == ["positive"]

        bad = c.post(f"/v1/review/items/{rows['mid']}/decide",
                     json={"action": "label", "labels": ["great"]})  # fmt: skip
        assert bad.status_code == 422 and "unknown label(s) ['great']" in error_of(bad)["message"]
        two = c.post(f"/v1/review/items/{rows['mid']}/decide",
                     json={"action": "label", "labels": ["negative", "positive"]})  # fmt: skip
        assert two.status_code == 422 and "exactly one label" in error_of(two)["message"]
        assert c.post("/v1/review/items/999/decide", json={"action": "skip"}).status_code == 404

        skip = c.post(f"/v1/review/items/{rows['mid']}/decide", json={"action": "skip"}).json()
        undo = c.post(f"/v1/review/decisions/{skip['decision']['id']}/undo")
        assert undo.status_code == 200 and undo.json()["item"]["status"] == "pending"
        assert c.post(f"/v1/review/decisions/{skip['decision']['id']}/undo").status_code == 409

        bulk = c.post("/v1/review/bulk-accept", json={"ids": [rows["mid"], rows["low"]]}).json()
        assert [d["review_id"] for d in bulk["accepted"]] == [rows["mid"]]
        assert bulk["accepted"][0]["gold"] == ["positive"]  # the model's label
        assert [r["id"] for r in bulk["refused"]] == [rows["low"]]

        multi = c.post(f"/v1/review/items/{rows['tags']}/decide",
                       json={"action": "label", "labels": ["joy", "surprise"]})  # fmt: skip
        assert multi.status_code == 200 and multi.json()["decision"]["gold"] == ["joy", "surprise"]
    assert store.review_counts("sst2") == {"pending": 1, "labelled": 2, "skipped": 0}
    assert store.count("review_decisions") == 4  # the undone skip is kept


def test_filters_by_task_status_band_and_route(store: Store, rows: dict[str, int]) -> None:
    with Server(create_review_app(store, ServiceSettings())) as srv, srv.client() as c:
        def ids(**q: object) -> list[int]:
            r = c.get("/v1/review/items", params=q)
            assert r.status_code == 200, r.text
            return [it["id"] for it in r.json()["items"]]

        assert ids() == [rows["low"], rows["mid"], rows["high"], rows["tags"]]
        assert ids(task="tags") == [rows["tags"]]
        assert ids(max_conf=0.5) == [rows["low"]]
        assert ids(min_conf=0.5, max_conf=0.7) == [rows["mid"], rows["tags"]]
        assert ids(min_conf=0.9, max_conf=1.0) == [rows["high"]]
        assert ids(route="escalated") == [rows["low"]]
        assert ids(route="student") == [rows["mid"], rows["tags"]]  # answered without escalating
        assert ids(route="shadow") == [rows["high"]]
        c.post(f"/v1/review/items/{rows['mid']}/decide", json={"action": "skip"})
        assert ids(status="skipped") == [rows["mid"]]
        assert ids(status="all", task="sst2") == [rows["low"], rows["mid"], rows["high"]]
        item = c.get("/v1/review/items", params={"route": "shadow"}).json()["items"][0]
        assert item["text"] == "great" and item["shadow"]["labels"] == ["negative"]
        assert c.get("/v1/review/items", params={"route": "nope"}).status_code == 422


def test_review_ui_serves_the_page_without_a_classifier(
    store: Store, rows: dict[str, int], tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "REVIEW_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmclf.cli.main", "review", "ui", "--port", str(port),
         "--store", store.path, "--api-key-env", "REVIEW_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/review", timeout=2).status_code == 200, proc, 60)
        items = httpx.get(url + "/v1/review/items", headers=AUTH, timeout=10).json()["items"]
        assert len(items) == 4
        assert httpx.get(url + "/v1/review/items", timeout=10).status_code == 401
        assert httpx.post(f"{url}/v1/review/items/{rows['low']}/decide", headers=AUTH,
                          json={"action": "accept"}, timeout=10).status_code == 200  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    row = Store(store.path).review_get(rows["low"])
    assert row is not None and row["status"] == "labelled" and row["gold"] == ["negative"]
