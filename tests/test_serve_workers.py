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
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCLF_ORT_")}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
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
            # the review page's API, whichever worker answers, reads the one shared queue
            queued = [len(httpx.get(url + "/v1/review/items", params={"limit": 1000},
                                    timeout=60).json()["items"]) for _ in range(4)]  # fmt: skip
            assert _workers(proc.pid) == workers  # none was replaced
            worker_env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
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
    assert queued == [len(ids)] * 4
    assert store.cache_count() == len(TEXTS) + 1  # one row per key, whichever worker wrote it
    assert store.integrity_check() == "ok"
    assert "starting 2 workers" in err
    # the workers share the cores out: ONNX Runtime threads per worker, none spin-waits
    share = max(1, (os.cpu_count() or 1) // 2)
    assert f"LLMCLF_ORT_THREADS={share}".encode() in worker_env
    assert b"LLMCLF_ORT_SPIN=0" in worker_env
    for pid in workers:  # the workers stop with the supervisor
        assert not Path(f"/proc/{pid}").exists() or b"spawn_main" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_bytes()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


@pytest.mark.model
@pytest.mark.timeout(1500)
def test_workers_share_one_embedded_llm_server_started_by_the_supervisor(
    tmp_path: Path, llmclf_home: Path
) -> None:
    """The supervisor starts the llama.cpp server once; workers are given its URL, start none
    of their own (not even when warming up), and it stops with the supervisor. Under a service
    it runs on one thread (a niced multi-threaded llama.cpp stalls at its per-layer barrier when
    the student takes a core), unless LLMCLF_LOCAL_THREADS says otherwise."""
    from tests.helpers import local_model_available

    if not local_model_available():
        pytest.skip("the embedded Gemma model is not installed (or LLMCLF_SKIP_MODEL_TESTS)")
    cfg = tmp_path / "router.yaml"
    cfg.write_text("task: sst2\nbackends:\n  llm: llm:local\nfallbacks: [llm]\n", encoding="utf-8")
    port = free_port()
    env_in = {k: v for k, v in os.environ.items() if k != "LLMCLF_LOCAL_THREADS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
         "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_in,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(_workers(proc.pid)) == 2, proc, 600)
        wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, proc, 600)
        workers = _workers(proc.pid)
        llama = [c for c in _children(proc.pid) if b"llama_server_main" in _cmdline(c)]
        under_workers = [
            c for w in workers for c in _children(w) if b"llama_server_main" in _cmdline(c)
        ]
        env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        llama_args = _cmdline(llama[0]).split(b"\0") if llama else []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=300)
    assert len(llama) == 1 and under_workers == []  # one server, the supervisor's
    assert any(e.startswith(b"LLMCLF_LOCAL_SERVER_URL=http://127.0.0.1:") for e in env)
    assert llama_args[llama_args.index(b"--n_threads") + 1] == b"1"
    assert _cmdline(llama[0]) == b""  # and it stops with the supervisor
