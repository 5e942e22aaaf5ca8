"""The review spool on a real SQLite store: rows spooled while the store is away land exactly once,
a writer killed with ``kill -9`` (appending, or mid-flush) loses nothing and duplicates nothing,
a live process's spool is never taken from it, and a line cut short by a crash is skipped with a
clear log line and kept aside."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmclf.errors import StoreUnavailable
from llmclf.review_writer import ReviewWriter, review_writer, spool_dir
from llmclf.storage.spool import REJECTED, Spool
from llmclf.store import Store
from tests.helpers import REPO


def entry(i: int) -> dict[str, object]:
    return {"task": "sst2", "text": f"text {i}", "prediction": {"labels": ["positive"]},
            "created": 1000.0 + i, "request_id": f"r-{i}"}  # fmt: skip


def rows(store: Store) -> list[tuple[str, float]]:
    return sorted((str(r[0]), float(r[1]))
                  for r in store._read("SELECT request_id, created FROM review"))  # fmt: skip


def run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip


def test_spooled_rows_are_written_once_with_their_own_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    writer = ReviewWriter(store, tmp_path / "spool")
    for i in range(3):
        writer.spool.append(entry(i))
    assert writer.pending == 3
    assert writer.flush() == 3
    assert writer.pending == 0 and writer.flush() == 0
    assert rows(store) == [("r-0", 1000.0), ("r-1", 1001.0), ("r-2", 1002.0)]
    assert list((tmp_path / "spool").glob("review-*.jsonl")) == []  # flushed segments are gone
    # a row spooled again (a crash between the write and the delete) is stored once
    writer.spool.append(entry(1))
    writer.flush()
    assert store.count("review") == 3


def test_a_store_away_spools_and_a_healthy_one_is_written_directly(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    writer = ReviewWriter(store, tmp_path / "spool")
    assert writer.add("sst2", "a", {"labels": ["x"]}, request_id="a1") == "stored"
    assert writer.add("sst2", "a", {"labels": ["x"]}, request_id="a1") == "duplicate"
    store.mark_unreachable(StoreUnavailable("store gone"))  # as the request path found it
    assert writer.add("sst2", "b", {"labels": ["x"]}, request_id="b1") == "spooled"
    assert writer.add("sst2", "c", {"labels": ["x"]}) == "spooled"  # no request id: one is made
    # the flusher (started by the first spooled row) writes them as soon as the store answers
    for _ in range(200):
        if writer.pending == 0:
            break
        writer._stop.wait(0.05)
    writer.close()
    ids = sorted(r[0] for r in store._read("SELECT request_id FROM review"))
    assert ids[:2] == ["a1", "b1"] and ids[2].startswith("spooled-") and len(ids) == 3
    assert store.health.ok


def test_a_live_process_keeps_its_spool_and_a_killed_ones_is_adopted(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child = run_child(f"""
        import sys, time
        from llmclf.storage.spool import Spool
        s = Spool({str(spool)!r}, prefix="review")
        for i in range(5):
            s.append({{"task": "sst2", "text": f"t{{i}}", "prediction": {{}},
                      "created": 1.0, "request_id": f"k-{{i}}"}})
        print("ready", flush=True)
        time.sleep(600)
    """)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        mine = Spool(spool, prefix="review")
        assert mine.adopt() == 0  # its writer is alive: not ours to flush
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert mine.adopt() == 5  # the kernel freed its locks: adopted whole
        store = Store(tmp_path / "s.db")
        assert Spool(spool, prefix="review").adopt() == 0  # held by `mine` now
        assert mine.flush(lambda e: store.review_add(e["task"], e["text"], e["prediction"],
                                                     e["request_id"])) == 5  # fmt: skip
        assert store.count("review") == 5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_crash_mid_flush_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    db, spool = tmp_path / "s.db", tmp_path / "spool"
    child = run_child(f"""
        import os, signal
        from llmclf.review_writer import ReviewWriter
        from llmclf.store import Store
        store = Store({str(db)!r})
        w = ReviewWriter(store, {str(spool)!r})
        for i in range(6):
            w.spool.append({{"task": "sst2", "text": f"t{{i}}", "prediction": {{}},
                            "created": 1.0, "request_id": f"c-{{i}}"}})
        done = 0
        def write(e):
            global done
            w._write(e)
            done += 1
            if done == 3:  # killed after the 3rd row, before the segment is deleted
                os.kill(os.getpid(), signal.SIGKILL)
        w.spool.flush(write)
    """)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    store = Store(db)
    assert store.count("review") == 3
    writer = ReviewWriter(store, spool)
    assert writer.spool.adopt() == 6  # the segment is whole: deleted only once flushed
    assert writer.flush() == 6  # the first 3 again: stored once
    assert sorted(r[0] for r in store._read("SELECT request_id FROM review")) == [
        f"c-{i}" for i in range(6)
    ]
    assert store.integrity_check() == "ok"


def test_a_partial_last_line_is_skipped_with_a_clear_log_line_and_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    dead = spool / "review-999999-dead-1.jsonl"  # as a process killed mid-append left it
    good = [json.dumps(entry(i)) + "\n" for i in range(2)]
    dead.write_text("".join(good) + "not json at all\n" + json.dumps(entry(2))
                    + "\n" + json.dumps(entry(3))[:25], encoding="ascii")  # fmt: skip
    store = Store(tmp_path / "s.db")
    writer = ReviewWriter(store, spool)
    assert writer.spool.adopt() == 3
    with caplog.at_level(logging.ERROR, logger="llmclf.store"):
        assert writer.flush() == 3
    assert [r[0] for r in rows(store)] == ["r-0", "r-1", "r-2"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{dead}:3: corrupt" in logged
    assert f"{dead}:5: partial last line (a crash mid-write?)" in logged
    kept = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
    assert [(k["file"], k["line"]) for k in kept] == [(dead.name, 3), (dead.name, 5)]
    assert not dead.exists()


def test_the_spool_directory_is_per_store_under_llmclf_home(
    tmp_path: Path, llmclf_home: Path
) -> None:
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    assert spool_dir(a).parent == llmclf_home / "spool"
    assert spool_dir(a) != spool_dir(b)
    assert review_writer(a) is review_writer(a)
