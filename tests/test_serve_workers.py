"""``llmclf serve --workers 2``: a real server of two uvicorn worker processes on one port, on a
SQLite file and on a real PostgreSQL: review rows and cache entries written by both workers land
exactly once, and ``/metrics`` counts every request once whichever worker answers the scrape."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from llmclf.store import open_store
from llmclf.testing.fake_provider import FakeProvider
from tests.helpers import free_port, metric, wait_until

TEXTS = [f"review number {i}" for i in range(10)]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under the supervisor ``pid``."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_two_workers_share_the_port_the_store_and_the_metrics(
    db_url: str, tmp_path: Path
) -> None:
    mp_dir = tmp_path / "prom"
    with FakeProvider(default="positive", confidence=0.6) as llm:
        cfg = tmp_path / "router.yaml"
        cfg.write_text(
            f"task: sst2\nbackends:\n  llm: '{llm.spec()}'\nfallbacks: [llm]\n"
            "review: {threshold: 0.75}\n",
            encoding="utf-8",
        )
        port = free_port()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
             "--port", str(port), "--workers", "2", "--db", db_url],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: len(_workers(proc.pid)) == 2, proc, 240)
            wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, proc, 300)

            # until both workers have answered (each writes its counter file on its first
            # request): a worker still starting leaves every connection to the other one
            workers = _workers(proc.pid)
            warm = 0

            def both_answered() -> bool:
                nonlocal warm
                body = {"text": "warm", "hints": {"request_id": f"warm-{warm}"}}
                assert httpx.post(url + "/v1/classify", json=body, timeout=60).status_code == 200
                warm += 1
                return all((mp_dir / f"counter_{pid}.db").exists() for pid in workers)

            wait_until(both_answered, proc, 300)

            def ask(i: int) -> int:
                body = {"text": TEXTS[i % len(TEXTS)], "hints": {"request_id": f"req-{i % 30}"}}
                # a new connection each time, so the kernel spreads them over both workers
                return httpx.post(url + "/v1/classify", json=body, timeout=60).status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(ask, range(60)))  # each request id twice
            assert codes == [200] * 60
            scrapes = [httpx.get(url + "/metrics").text for _ in range(8)]
            assert _workers(proc.pid) == workers  # none was replaced
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert len(workers) == 2
    total = warm + 60
    for text in scrapes:  # whichever worker answered the scrape, it counts every request
        assert metric(text, "llmclf_http_requests_total", endpoint="/v1/classify",
                      status="200") == total  # fmt: skip
        assert metric(text, "llmclf_review_queued_total", task="sst2") == total
    store = open_store(db_url)
    # idempotent by request id across workers: each id once
    ids = sorted(r[0] for r in store._read("SELECT request_id FROM review"))
    assert ids == sorted([f"req-{i}" for i in range(30)] + [f"warm-{i}" for i in range(warm)])
    assert store.cache_count() == len(TEXTS) + 1  # one row per key, whichever worker wrote it
    assert store.integrity_check() == "ok"
    assert "starting 2 workers" in err
    for pid in workers:  # the workers stop with the supervisor
        assert not Path(f"/proc/{pid}").exists() or b"spawn_main" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_bytes()
