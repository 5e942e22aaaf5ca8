"""Crash safety: ``kill -9`` at random points, then a re-run completes with no lost or duplicated
rows and SQLite's ``PRAGMA integrity_check`` is clean.

- ``llmclf eval`` killed several times at random points (``tests/test_evaluate.py`` kills it once
  at a fixed point; here the points are random and the file is checked after every kill);
- ``llmclf serve`` killed while concurrent clients make it write to the review queue: every
  acknowledged request's row is there, and a client retrying every request afterwards (same
  ``request_id``) leaves exactly one row per request.

Random points come from a seeded generator: ``LLMCLF_CRASH_SEED`` picks another seed, and a
failing run prints the one it used.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmclf.testing.fake_provider import FakeProvider
from tests.helpers import REPO, free_port, make_eval_set, texts_asked, wait_until

SEED = int(os.environ.get("LLMCLF_CRASH_SEED", "20250611"))


@pytest.fixture
def rng() -> Iterator[random.Random]:
    r = random.Random(SEED)
    yield r


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` from a fresh connection (which also replays the WAL)."""
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def kill9(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# -- eval -----------------------------------------------------------------------------------------
def test_eval_killed_at_random_points_resumes_to_one_complete_run(
    tmp_path: Path, rng: random.Random
) -> None:
    cases = [(f"k{i:02d}", f"case {i} " + ("good" if i % 3 else "bad"), "positive")
             for i in range(30)]  # fmt: skip
    d = make_eval_set(tmp_path, "crashy", cases)
    db = Path(os.environ["LLMCLF_HOME"]) / "llmclf.db"
    jitter = random.Random(SEED + 1)
    lock = threading.Lock()

    def slow(text: str) -> str:
        with lock:
            pause = jitter.uniform(0.02, 0.25)
        time.sleep(pause)
        return "positive" if "good" in text else "negative"

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = 0
    finished_before: set[str] = set()
    finished = False
    with FakeProvider(labeler=slow) as fake:
        args = [sys.executable, "-m", "llmclf.cli.main", "eval", "-e", str(d),
                "-b", fake.spec(cache="false"), "--concurrency", "3", "--no-progress"]  # fmt: skip
        while kills < 3:
            asked_before = len(fake.chat_requests)
            proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            # a random point: from "still importing" to "well into the run"
            delay = rng.uniform(0.5, 6.0)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            kill9(proc)
            kills += 1
            if db.exists():
                assert integrity(db) == "ok", f"seed {SEED}, kill {kills} at {delay:.2f}s"
                rows = query(
                    db,
                    "SELECT c.case_id, c.prediction FROM run_cases c "
                    "JOIN runs r ON r.id = c.run_id WHERE r.eval_set = 'crashy'",
                )
                status = query(db, "SELECT status FROM runs WHERE eval_set = 'crashy'")
                assert len(status) <= 1, f"seed {SEED}: a kill made a second run"
                if status and status[0][0] == "done":
                    finished = True  # the run completed before this kill landed
                    break
                done_now = {json.loads(p)["text"] for _, p in rows}
                # nothing that was finished before this run was asked again by it
                asked = set(texts_asked(fake, asked_before))
                assert not (finished_before & asked), f"seed {SEED}: finished case re-asked"
                assert finished_before <= done_now, f"seed {SEED}: a finished case was lost"
                finished_before = done_now
        asked_last: list[str] = []
        if not finished:
            asked_before = len(fake.chat_requests)
            res = subprocess.run(
                args, env=env, cwd=REPO, capture_output=True, text=True, timeout=180
            )
            assert res.returncode == 0, res.stderr
            asked_last = texts_asked(fake, asked_before)
    assert integrity(db) == "ok"
    runs = query(db, "SELECT id, status, metrics FROM runs WHERE eval_set = 'crashy'")
    assert len(runs) == 1 and runs[0][1] == "done", f"seed {SEED}: {runs}"
    ids = [r[0] for r in query(db, "SELECT case_id FROM run_cases WHERE run_id = ?",
                               (runs[0][0],))]  # fmt: skip
    assert sorted(ids) == sorted(c[0] for c in cases), f"seed {SEED}: lost or duplicated cases"
    assert not finished_before & set(asked_last), f"seed {SEED}: finished case re-asked"
    metrics = json.loads(runs[0][2])
    assert metrics["n"] == len(cases) and metrics["errors"] == 0
    assert metrics["accuracy"] == pytest.approx(20 / 30)


# -- the service's review queue -------------------------------------------------------------------
def request_body(n: int) -> tuple[dict[str, Any], list[str]]:
    """Request ``n`` and the review-queue request ids it must leave (batches get ``#i``)."""
    rid = f"req-{n:05d}"
    if n % 4 == 3:
        texts = [f"batch {n} first", f"batch {n} second"]
        return {"texts": texts, "hints": {"request_id": rid}}, [f"{rid}#0", f"{rid}#1"]
    return {"text": f"single text {n}", "hints": {"request_id": rid}}, [rid]


class Hammer:
    """Client threads sending numbered requests until the server goes away."""

    def __init__(self, url: str, start: int, threads: int = 6) -> None:
        self.url = url
        self.next = start
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=20) as c:
            while not self.stop.is_set():
                with self.lock:
                    n = self.next
                    self.next += 1
                    self.sent.add(n)
                body, _ = request_body(n)
                try:
                    resp = c.post("/v1/classify", json=body)
                except httpx.HTTPError:
                    return  # the server was killed
                with self.lock:
                    if resp.status_code == 200:
                        self.acked.add(n)
                    else:
                        self.failures.append(f"{resp.status_code} {resp.text}")


def test_serve_killed_while_writing_the_review_queue_loses_and_duplicates_nothing(
    tmp_path: Path, rng: random.Random
) -> None:
    db = tmp_path / "service.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FakeProvider(default="positive", confidence=0.95) as student, FakeProvider(
        default="negative"
    ) as llm:
        cfg = tmp_path / "router.yaml"
        cfg.write_text(
            "task: sst2\nbackends:\n"
            f"  student: '{student.spec()}'\n  llm: '{llm.spec()}'\n"
            "cascade: {student: student, escalate_to: llm, threshold: 0.9}\n"
            "review: {threshold: 1.0}\n",  # every answer goes to the review queue
            encoding="utf-8",
        )

        log = tmp_path / "serve.log"

        def serve() -> tuple[subprocess.Popen[str], str]:
            port = free_port()
            with open(log, "a") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
                     "--port", str(port), "--store", str(db)],
                    env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True,
                    start_new_session=True,
                )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, proc, 90)
            except AssertionError:
                kill9(proc)
                raise AssertionError(f"llmclf serve did not come up: {log.read_text()}") from None
            return proc, url

        all_sent: set[int] = set()
        acked: set[int] = set()
        start = 0
        for round_ in range(2):
            proc, url = serve()
            # the first request warms the server up (imports, connections); it must persist too
            warm = httpx.post(url + "/v1/classify", json=request_body(start)[0], timeout=60)
            assert warm.status_code == 200, warm.text
            all_sent.add(start)
            acked.add(start)
            start += 1
            try:
                with Hammer(url, start) as hammer:
                    # a random point while the clients are writing
                    time.sleep(rng.uniform(0.5, 3.0))
                    kill9(proc)
            finally:
                kill9(proc)
            all_sent |= hammer.sent
            acked |= hammer.acked
            start = hammer.next
            print(f"round {round_}: {len(hammer.acked)} answered of {len(hammer.sent)} sent")
            assert hammer.acked, "no request was answered before the kill"
            assert not hammer.failures, hammer.failures[:3]
            assert integrity(db) == "ok", f"seed {SEED}, round {round_}"
            rows = [r[0] for r in query(db, "SELECT request_id FROM review")]
            assert len(rows) == len(set(rows)), f"seed {SEED}: duplicated rows"
            must = {rid for n in acked for rid in request_body(n)[1]}
            assert must <= set(rows), f"seed {SEED}: acknowledged rows lost: {must - set(rows)}"

        # the clients retry every request they sent (answered or not): one row each, no more
        proc, url = serve()
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                for n in sorted(all_sent):
                    resp = c.post("/v1/classify", json=request_body(n)[0])
                    assert resp.status_code == 200, resp.text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert integrity(db) == "ok"
    rows = query(db, "SELECT request_id, text, task FROM review ORDER BY id")
    expected = {rid for n in all_sent for rid in request_body(n)[1]}
    got = [r[0] for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected, f"seed {SEED}"
    texts = {r[0]: r[1] for r in rows}
    for n in all_sent:
        body, rids = request_body(n)
        want = [body["text"]] if "text" in body else body["texts"]
        assert [texts[r] for r in rids] == want
    assert {r[2] for r in rows} == {"sst2"}


# -- distill: labelling and model export ----------------------------------------------------------
def _sst2_train(n: int) -> list[str]:
    path = Path("/work/shared/datasets/sst2/train.jsonl")
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["text"] for r in rows[:n]]


def _complete_model(out: Path) -> bool:
    """A model directory that loads, with its ONNX export and card (never a partial one)."""
    from llmclf.backends.setfit import SetFitBackend

    backend = SetFitBackend(out)
    pred = backend.predict_batch(["a gorgeous, witty film"])[0]
    return (
        (out / "model.onnx").is_file()
        and (out / "card.json").is_file()
        and set(pred.scores) == {"negative", "positive"}
    )


@pytest.mark.slow
def test_distill_killed_while_labelling_and_exporting_leaves_no_partial_model(
    tmp_path: Path, rng: random.Random, llmclf_home: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("onnxruntime")
    texts = _sst2_train(40)
    src = tmp_path / "unlabelled.jsonl"
    src.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n"
                           for i, t in enumerate(texts)))  # fmt: skip
    db = llmclf_home / "llmclf.db"
    out = tmp_path / "models" / "student"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}

    def label(text: str) -> str:
        time.sleep(0.04)
        return "positive" if len(text) % 2 else "negative"

    def labels_stored() -> int:
        if not db.exists():
            return 0
        try:
            return int(query(db, "SELECT COUNT(*) FROM teacher_labels")[0][0])
        except sqlite3.OperationalError:
            return 0

    def temp_dirs() -> list[Path]:
        return list(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.exists() else []

    def check_store() -> None:
        assert integrity(db) == "ok", f"seed {SEED}"
        n, distinct = query(db, "SELECT COUNT(*), COUNT(DISTINCT item_key) FROM teacher_labels")[0]
        assert n == distinct <= len(texts), f"seed {SEED}: duplicated teacher labels"

    with FakeProvider(labeler=label) as fp:
        cmd = [sys.executable, "-m", "llmclf.cli.main", "distill", "--task", "sst2",
               "--teacher", fp.spec(max_retries=0, cache="false"), "--unlabeled", str(src),
               "--out", str(out), "--mode", "head-only", "--no-int8", "--concurrency", "2",
               "--quiet", "--json"]  # fmt: skip

        def run_until(stop: Any, then_wait: float, force: bool = False) -> None:
            with open(tmp_path / "distill.log", "a") as log:
                proc = subprocess.Popen(cmd + (["--force"] if force else []), env=env,
                                        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                        start_new_session=True)  # fmt: skip
            deadline = time.monotonic() + 240
            while not stop() and proc.poll() is None:
                assert time.monotonic() < deadline, "distill never reached the kill point"
                time.sleep(0.02)
            time.sleep(then_wait)
            alive = proc.poll() is None
            kill9(proc)
            print(f"distill killed {then_wait:.2f}s after its kill point; it was "
                  f"{'still running' if alive else 'already done'}; temp dirs: "
                  f"{[p.name for p in temp_dirs()]}; out exists: {out.exists()}")

        # 1. a random point while labelling
        k = rng.randint(3, len(texts) - 5)
        run_until(lambda: labels_stored() >= k, 0.0)
        check_store()
        assert not out.exists(), "a model dir appeared before the labels were done"
        labelled = labels_stored()
        assert labelled < len(texts)

        # 2. a random point while the student is written and exported (inside a temp dir)
        asked = len(fp.chat_requests)
        run_until(lambda: bool(temp_dirs()), rng.uniform(0.0, 6.0))
        check_store()
        assert len(fp.chat_requests) - asked <= len(texts) - labelled + 2  # no label asked twice
        assert not out.exists() or _complete_model(out), f"seed {SEED}: a half-written model"

        # 3. a re-run completes and tidies what the killed runs left
        res = subprocess.run([*cmd, "--force"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["n_labelled"] == len(texts)
        check_store()
        assert labels_stored() == len(texts)
        assert _complete_model(out) and not temp_dirs()
        first_card = json.loads((out / "card.json").read_text())

        # 4. replacing a model (--force) killed at a random point: the old or the new, whole
        run_until(lambda: bool(temp_dirs()), rng.uniform(0.0, 8.0), force=True)
        assert out.is_dir() and _complete_model(out), f"seed {SEED}: the model was damaged"
    assert json.loads((out / "card.json").read_text()).keys() == first_card.keys()
