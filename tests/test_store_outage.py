"""PostgreSQL restarted under load: a real ``llmclf serve`` on a real PostgreSQL server
(`TempPostgres`), an LLM on `FakeProvider` and a review gate that queues every answer.

While the database is down every request is still answered (200), ``/healthz`` says the store is
degraded (HTTP 200: the process is alive) and the review rows are spooled to disk; when it returns
the spool drains and the queue holds each request id exactly once. A service killed with
``kill -9`` while rows are spooled writes them, once, when it is started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmclf.store import Store
from llmclf.testing.fake_provider import FakeProvider
from llmclf.testing.postgres import TempPostgres, postgres_bin_dir
from tests.helpers import free_port, metric, wait_until


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    """A PostgreSQL server of this module's own: its tests stop and start it."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (scripts/test.sh "
                    "installs it when run as root)")  # fmt: skip
    pytest.importorskip("psycopg_pool", reason="psycopg 3 is not installed: llmclf[postgres]")
    with TempPostgres() as server:
        yield server


@pytest.fixture
def llm() -> Iterator[FakeProvider]:
    """An LLM whose answers (confidence 0.6) are all under the review threshold."""
    with FakeProvider(default="positive", confidence=0.6) as fp:
        yield fp


class Service:
    """``llmclf serve`` in a child process, on a free port."""

    def __init__(self, router: Path, db: str, workers: int = 1) -> None:
        self.router, self.db, self.workers = router, db, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.err: str | None = None

    def start(self) -> Service:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(self.router),
             "--port", str(self.port), "--db", self.db, "--workers", str(self.workers)],
            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: self.health()["status"] == "ok", self.proc, 300)
        return self

    def health(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/healthz", timeout=30)
        assert r.status_code == 200, r.text  # liveness: 200 even while degraded
        return dict(r.json())

    def wait(self, check: Any, timeout: float = 180) -> None:
        assert self.proc is not None
        wait_until(check, self.proc, timeout)

    def classify(self, client: httpx.Client, rid: str) -> int:
        body = {"text": f"text {rid}", "hints": {"request_id": rid}}
        return client.post(self.url + "/v1/classify", json=body, timeout=60).status_code

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop it (``sig``); its stderr. Stopping it again is a no-op."""
        if self.proc is None or self.err is not None:
            return self.err or ""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, self.err = self.proc.communicate(timeout=120)
        return self.err


class Load:
    """``clients`` threads sending requests with distinct request ids until stopped."""

    def __init__(self, service: Service, clients: int = 3) -> None:
        self.service = service
        self.codes: dict[str, int] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in range(clients)]

    def _run(self, c: int) -> None:
        with httpx.Client() as client:
            i = 0
            while not self.halt.is_set():
                rid = f"c{c}-{i}"
                try:
                    code = self.service.classify(client, rid)
                except httpx.HTTPError as exc:  # a refused or cut request is a failure too
                    code = -1
                    print("request failed:", rid, exc)
                with self.lock:
                    self.codes[rid] = code
                i += 1

    def answered(self) -> int:
        with self.lock:
            return len(self.codes)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=120)


def router_yaml(tmp_path: Path, llm: FakeProvider) -> Path:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        f"task: sst2\nbackends:\n  llm: '{llm.spec()}'\nfallbacks: [llm]\n"
        "review: {threshold: 0.75}\n",
        encoding="utf-8",
    )
    return cfg


def review_ids(db: str) -> list[str]:
    store = Store(db)
    try:
        return sorted(str(r[0]) for r in store._read("SELECT request_id FROM review"))
    finally:
        store.close()


def spool_files(home: Path) -> list[Path]:
    return sorted(home.glob("spool/*/review-*.jsonl"))


@pytest.mark.parametrize("workers", [1, 2])
def test_answers_keep_flowing_while_postgres_is_down_and_the_spool_drains_once(
    pg: TempPostgres, llm: FakeProvider, tmp_path: Path, llmclf_home: Path, workers: int
) -> None:
    db = pg.create_database("outage_" + uuid.uuid4().hex[:8])
    service = Service(router_yaml(tmp_path, llm), db, workers).start()
    try:
        with Load(service) as load:
            service.wait(lambda: load.answered() >= 20)
            pg.stop_server()
            t_down, n_down = time.monotonic(), load.answered()
            try:
                degraded = {}

                def is_degraded() -> bool:
                    degraded.update(service.health())
                    return degraded["status"] == "degraded" and degraded["store"]["spooled"] >= 10

                service.wait(is_degraded, 120)
                during = load.answered()
                # still answering; down past the pool's 10 s reconnection attempt, which it gives
                # up and starts afresh on the next use
                service.wait(lambda: load.answered() >= during + 30
                             and time.monotonic() - t_down >= 15, 120)  # fmt: skip
                down = service.health()
            finally:
                pg.start_server()
            t_up, n_up = time.monotonic(), load.answered()
            service.wait(lambda: service.health()["status"] == "ok", 180)
            t_ok = time.monotonic()
            after = load.answered()
            service.wait(lambda: load.answered() >= after + 20)
        # every worker's spool drained (each worker answers /healthz for itself)
        service.wait(lambda: review_ids(db) == sorted(load.codes), 180)
        healths = [service.health() for _ in range(6)]
        scrape = httpx.get(service.url + "/metrics", timeout=30).text
    finally:
        err = service.stop()
    codes = load.codes
    print(f"\n{workers} worker(s): {len(codes)} requests, {n_up - n_down} answered in the "
          f"{t_up - t_down:.1f} s PostgreSQL was down; /healthz ok {t_ok - t_up:.1f} s after "
          f"it was back; {degraded['store']['spooled']} rows spooled in one worker when seen")
    assert set(codes.values()) == {200}, {k: v for k, v in codes.items() if v != 200}
    store = degraded["store"]
    assert store["ok"] is False and store["spooled"] >= 10
    assert f"127.0.0.1:{pg.port}" in store["error"] and pg.password not in json.dumps(down)
    assert store["url"] == pg.url(db.rsplit("/", 1)[1], password="***")
    # every answer's row, each exactly once (the spooled ones written when the database returned)
    assert review_ids(db) == sorted(codes)
    assert spool_files(llmclf_home) == []
    assert all(h["status"] == "ok" and h["store"]["spooled"] == 0 for h in healths), healths
    assert metric(scrape, "llmclf_review_spooled") == 0
    assert metric(scrape, "llmclf_review_queued_total", task="sst2") == len(codes)
    errors = sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
                 if line.startswith("llmclf_store_errors_total{"))  # fmt: skip
    assert errors >= 1
    assert "is unreachable, degrading" in err and "reachable again" in err
    assert pg.password not in err


def test_a_service_killed_with_rows_spooled_writes_them_once_when_restarted(
    pg: TempPostgres, llm: FakeProvider, tmp_path: Path, llmclf_home: Path
) -> None:
    db = pg.create_database("killed_" + uuid.uuid4().hex[:8])
    service = Service(router_yaml(tmp_path, llm), db).start()
    sent: list[str] = []
    try:
        with httpx.Client() as client:
            for i in range(5):
                sent.append(f"before-{i}")
                assert service.classify(client, sent[-1]) == 200
            pg.stop_server()
            try:
                for i in range(15):
                    sent.append(f"down-{i}")
                    assert service.classify(client, sent[-1]) == 200
                    # a retried request (same id) while down: spooled again, stored once
                    if i == 3:
                        assert service.classify(client, sent[-1]) == 200
                health = service.health()
                assert health["status"] == "degraded" and health["store"]["spooled"] == 16
                assert spool_files(llmclf_home)  # on disk, fsync'd
                service.stop(signal.SIGKILL)
            finally:
                pg.start_server()
        assert review_ids(db) == sorted(sent[:5])  # the spooled rows are not in yet
        restarted = Service(service.router, db).start()
        restarted.wait(lambda: restarted.health()["store"]["spooled"] == 0
                       and restarted.health()["status"] == "ok")  # fmt: skip
        err = restarted.stop()
    finally:
        service.stop(signal.SIGKILL)
    assert review_ids(db) == sorted(sent)  # each once: the retried one too
    assert spool_files(llmclf_home) == []
    assert "adopted" in err


def test_healthz_reports_a_healthy_store_and_its_url_without_the_password(
    pg: TempPostgres, llm: FakeProvider, tmp_path: Path
) -> None:
    db = pg.create_database("healthy_" + uuid.uuid4().hex[:8])
    service = Service(router_yaml(tmp_path, llm), db).start()
    try:
        h = service.health()
    finally:
        service.stop()
    assert h["status"] == "ok"
    assert h["store"] == {"ok": True, "error": None, "since": None, "spooled": 0,
                          "url": pg.url(db.rsplit("/", 1)[1], password="***")}  # fmt: skip
