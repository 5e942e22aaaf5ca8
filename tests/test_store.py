"""The store on both databases: the same suite against a SQLite file and a real PostgreSQL server
(`TempPostgres`, Debian's binaries): cache, eval runs, ``runs diff``, teacher labels, the review
queue through the CLI, concurrent writers in several processes, ``kill -9`` of a writer, and a
bad or unreachable store URL failing at start-up without printing its password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmclf.backends.base import Hints
from llmclf.classifier import Classifier
from llmclf.cli.main import app
from llmclf.datasets import load_cases, load_eval_set
from llmclf.distill import label_unlabeled
from llmclf.errors import StoreError
from llmclf.evaluate import evaluate
from llmclf.router import Router
from llmclf.storage import parse_url, redact_url
from llmclf.storage.postgres import ddl_to_postgres, to_postgres
from llmclf.store import MIGRATIONS, Store, open_store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider
from llmclf.testing.postgres import TempPostgres
from llmclf.types import Task
from tests.helpers import REPO, RULES, free_port, make_eval_set

runner = CliRunner()
SECRET = "hunter2-s3cret"


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``llmclf`` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def dialect_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


# ---------------------------------------------------------------------------- URLs


def test_urls_parse_to_a_dialect_and_print_without_the_password(tmp_path: Path) -> None:
    assert parse_url(f"sqlite:///{tmp_path}/a.db").path == f"{tmp_path}/a.db"
    assert parse_url("sqlite:///rel/a.db").path == "rel/a.db"
    assert parse_url("sqlite:///:memory:").path == ":memory:"
    assert parse_url(tmp_path / "b.db").path == str(tmp_path / "b.db")  # a bare path, as before
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        u = parse_url(f"{scheme}://app:{SECRET}@db.example:5433/llmclf?sslmode=require")
        assert u.dialect == "postgresql" and u.password == SECRET
        assert u.conninfo.startswith("postgresql://app:")
        assert SECRET not in u.redacted and "app:***@db.example:5433/llmclf" in u.redacted
    assert SECRET not in redact_url(f"postgresql://h/db?user=a&password={SECRET}")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"mysql://root:{SECRET}@localhost/db", "unknown scheme 'mysql'"),
        (f"postgresql://root:{SECRET}@/db", "no host"),
        (f"postgresql://root:{SECRET}@host:notaport/db", "bad store URL"),
        ("sqlite://relative.db", "sqlite:///relative/path"),
        ("   ", "empty store URL"),
    ],
)
def test_a_bad_url_is_a_clear_error_naming_it_without_the_password(url: str, why: str) -> None:
    with pytest.raises(StoreError, match=why) as err:
        Store(url)
    assert SECRET not in str(err.value)
    if "://" in url and "@" in url:
        assert "root:***@" in str(err.value)


def test_an_unreachable_database_fails_at_start_up_without_the_password() -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/llmclf"
    with pytest.raises(StoreError, match="cannot connect to store") as err:
        Store(url)
    assert SECRET not in str(err.value)
    assert f"postgresql://app:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in str(err.value)
    # the CLI says it in one line and exits 2, from --db or from $LLMCLF_DATABASE_URL
    for args, env in (
        (["runs", "list", "--db", url], {}),
        (["review", "list"], {"LLMCLF_DATABASE_URL": url}),
        (["serve", "--router", "router.yaml", "--workers", "2", "--db", url], {}),
    ):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: cannot connect to store postgresql://app:***@")
        assert len(proc.stderr.strip().splitlines()) == 1
        assert SECRET not in proc.stderr + proc.stdout


def test_a_wrong_password_is_refused_by_the_real_server_and_not_echoed(
    postgres: TempPostgres,
) -> None:
    url = postgres.url("postgres", password=SECRET)
    with pytest.raises(StoreError, match="password authentication failed") as err:
        Store(url)
    assert SECRET not in str(err.value) and ":***@127.0.0.1" in str(err.value)


def test_sql_is_translated_for_postgres_and_non_portable_sql_is_refused() -> None:
    assert to_postgres("SELECT a FROM t WHERE b = ? AND c LIKE ?", True) == (
        "SELECT a FROM t WHERE b = %s AND c LIKE %s"
    )
    assert to_postgres("SELECT '?', 'a%' FROM t WHERE x = ?", True) == (
        "SELECT '?', 'a%' FROM t WHERE x = %s"
    )
    assert to_postgres("SELECT 5 % 2 FROM t WHERE x = ?", True) == (
        "SELECT 5 %% 2 FROM t WHERE x = %s"
    )
    assert to_postgres("INSERT OR IGNORE INTO t VALUES (?)", True) == (
        "INSERT INTO t VALUES (%s) ON CONFLICT DO NOTHING"
    )
    with pytest.raises(StoreError, match="ON CONFLICT"):
        to_postgres("INSERT OR REPLACE INTO t VALUES (?)", True)
    assert "DOUBLE PRECISION" in ddl_to_postgres(MIGRATIONS[0][1])


def test_sqlite_schema_is_unchanged_for_existing_databases(tmp_path: Path) -> None:
    """Databases written before store URLs existed open as they are: same tables, same SQL."""
    import sqlite3

    store = Store(tmp_path / "old.db")
    con = sqlite3.connect(tmp_path / "old.db")
    sql = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    assert "id INTEGER PRIMARY KEY AUTOINCREMENT" in sql["review"]
    assert "created REAL NOT NULL" in sql["cache"]
    assert store.dialect == "sqlite" and store.integrity_check() == "ok"


# ---------------------------------------------------------------------------- the store suite


def test_threads_that_end_do_not_leave_their_sqlite_connections_open(tmp_path: Path) -> None:
    """Each thread keeps its own SQLite connection; a service whose worker threads come and go
    must not pile up one open file (plus WAL and shm) per thread that ever touched the store."""
    store = Store(tmp_path / "threads.db")
    store.cache_put("k", "m", {"label": "a"})

    def open_files() -> int:
        fds = Path("/proc/self/fd")
        n = 0
        for fd in fds.iterdir():
            try:
                n += "threads.db" in os.readlink(fd)
            except OSError:
                continue
        return n

    before = open_files()
    for _ in range(30):
        t = threading.Thread(target=lambda: store.cache_get("k"))
        t.start()
        t.join()
    after = open_files()
    assert store.cache_get("k") == {"label": "a"}
    # at most the last ended thread's connection is still open (closed by the next new one)
    assert after - before <= 3, f"{after - before} files left open by 30 ended threads"
    store.close()


def test_store_dialect_follows_the_url(db_url: str) -> None:
    store = open_store()
    assert store.dialect == dialect_of(db_url)
    assert store.count("cache") == 0 and store.integrity_check() == "ok"
    done = {r[0] for r in store._read("SELECT name FROM _migrations")}
    assert done == {name for name, _ in MIGRATIONS}
    # opening again applies nothing twice
    again = Store(db_url)
    assert again._read("SELECT COUNT(*) FROM _migrations")[0][0] == len(MIGRATIONS)
    again.close()


def test_cache_answers_the_second_call_from_the_store(
    db_url: str, fake: FakeProvider, sentiment_task: Task
) -> None:
    first = Classifier(sentiment_task, backend=fake.spec()).predict("good film")
    second = Classifier(sentiment_task, backend=fake.spec()).predict("good film")
    assert first.label == second.label == "positive"
    assert len(fake.chat_requests) == 1  # the second answer came from the store's cache
    store = open_store()
    assert store.dialect == dialect_of(db_url)
    assert store.cache_count() == 1
    (model,) = store._read("SELECT model FROM cache")[0]
    assert model  # the model is recorded with the response


def test_eval_runs_diff_and_report_on_the_store(db_url: str, tmp_path: Path) -> None:
    es = load_eval_set(make_eval_set(tmp_path))
    with FakeProvider(rules={"loved": "positive", "good": "positive"}, default="negative") as f:
        first = evaluate(es, f.spec(cache="false"), progress=False)
        f.rules = {"loved": "positive"}
        second = evaluate(es, f.spec(cache="false"), progress=False)
    store = open_store()
    assert store.get_run(first.run_id)["status"] == "done"  # type: ignore[index]
    assert len(store.run_cases(second.run_id)) == 8
    rows = json.loads(cli("runs", "list", "--json", "--db", db_url))
    assert [r["id"] for r in rows] == [second.run_id, first.run_id]
    diff = json.loads(cli("runs", "diff", first.run_id, second.run_id, "--json", "--db", db_url))
    assert {f["id"]: f["change"] for f in diff["flipped"]} == {
        "c02": "broken", "c04": "fixed", "c08": "fixed"
    }  # fmt: skip
    out = tmp_path / "r.html"
    cli("report", second.run_id[:-2], "--html", str(out), "--db", db_url)
    assert second.run_id in out.read_text()


def test_teacher_labels_are_stored_once_and_resumed(
    db_url: str, fake: FakeProvider, sentiment_task: Task, tmp_path: Path
) -> None:
    src = tmp_path / "u.jsonl"
    texts = ["good one", "bad one", "loved it", "dull", "good grief", "meh"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    labels = label_unlabeled(sentiment_task, fake.spec(), src, progress=False)
    assert labels.n_new == 6
    n = len(fake.chat_requests)
    again = label_unlabeled(sentiment_task, fake.spec(), src, progress=False)
    assert again.n_new == 0 and len(fake.chat_requests) == n  # read back, not asked again
    assert [r.text for r in again.rows] == texts
    assert open_store().count("teacher_labels") == 6


@pytest.fixture
def review_task() -> Task:
    shipped = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    return shipped.model_copy(update={"threshold": 0.5})


def _route(task: Task, request_id: str) -> None:
    with FakeProvider(rules={"meh": "negative"}, default="positive", confidence=0.6) as llm:
        router = Router.from_config(
            {
                "backends": {"llm": {"spec": llm.spec(), "options": {"max_retries": 0}}},
                "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
                "review": {"threshold": 0.75},
            },
            task=task,
            backends={"student": KeywordStudent(task, RULES)},
        )
        with router:
            router.predict_batch(["a great film", "meh film", "fine, I guess", "awful"],
                                 Hints(request_id=request_id))  # fmt: skip


def test_review_list_label_export_and_idempotent_writes(
    db_url: str, review_task: Task, tmp_path: Path
) -> None:
    _route(review_task, "r1")
    _route(review_task, "r1")  # the same request again: stored once
    store = open_store()
    assert store.dialect == dialect_of(db_url)
    rows = [json.loads(x) for x in cli("review", "list", "--json", "--db", db_url).splitlines()]
    assert [r["text"] for r in rows] == ["meh film", "fine, I guess"]
    assert [r["request_id"] for r in rows] == ["r1#1", "r1#2"]
    assert "labelled positive" in cli("review", "label", str(rows[0]["id"]), "positive",
                                      "--db", db_url)  # fmt: skip
    (done,) = store.review_list(status="labelled")
    assert done["gold"] == ["positive"] and done["text"] == "meh film"
    out = tmp_path / "reviewed.jsonl"
    assert "wrote 1 labelled rows" in cli("review", "export", "--out", str(out), "--db", db_url)
    (case,) = load_cases(out, review_task)
    assert (case.text, case.label) == ("meh film", "positive")
    assert store.count("review") == 2


# ---------------------------------------------------------------------------- processes

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from llmclf.store import Store
    url, start, n, tag = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = Store(url)
    while time.time() < start:
        time.sleep(0.005)
    for i in range(n):
        store.review_add("t", f"text {i}", {"by": tag}, request_id=f"req-{i}")
        store.cache_put(f"key-{i}", "m", {"by": tag, "i": i})
    print("done", flush=True)
    """
)


def test_two_processes_writing_the_same_keys_leave_exactly_one_row_each(db_url: str) -> None:
    Store(db_url).close()  # migrated once; the writers race on rows, not on the schema
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(start), "40", tag],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    store = open_store()
    assert store.count("review") == 40 and store.cache_count() == 40
    ids = [r[0] for r in store._read("SELECT request_id FROM review ORDER BY request_id")]
    assert ids == sorted(f"req-{i}" for i in range(40))
    assert store.integrity_check() == "ok"


MIGRATOR = textwrap.dedent(
    """
    import sys, time
    from llmclf.store import Store
    url, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    Store(url).close()
    """
)


def test_processes_starting_at_once_apply_each_migration_once(db_url: str) -> None:
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", MIGRATOR, db_url, str(start)],
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = open_store()._read("SELECT name FROM _migrations ORDER BY name")
    assert [r[0] for r in rows] == sorted(name for name, _ in MIGRATIONS)


KILLED = textwrap.dedent(
    """
    import sys
    from llmclf.store import Store
    store = Store(sys.argv[1])
    run = store.create_run(kind="eval", eval_set="e", backend="b", config={"n": 1})
    print(run, flush=True)
    i = 0
    while True:
        store.add_run_case(run, f"c{i}", i, "pos", {"labels": ["pos"], "pad": "x" * 2000})
        store.review_add("t", f"text {i}", {"i": i}, request_id=f"k-{i}")
        i += 1
    """
)


def test_a_writer_killed_with_sigkill_leaves_whole_rows_and_a_sound_store(db_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED, db_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read() if proc.stderr else ""
    store = open_store()
    deadline = time.monotonic() + 60
    while store.count("run_cases") < 30:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert store.integrity_check() == "ok"
    cases = store.run_cases(run_id)  # every stored row parses: no half-written JSON
    assert len(cases) >= 30
    assert [c["id"] for c in cases] == [f"c{i}" for i in range(len(cases))]
    assert all(c["prediction"]["pad"] == "x" * 2000 for c in cases)
    n_review = store.count("review")
    assert n_review in (len(cases), len(cases) - 1)  # the kill fell between the two writes
    # the store takes writes afterwards, and the killed writer's keys stay unique
    assert store.review_add("t", "again", {}, request_id="k-0") == 0
    store.add_run_case(run_id, "after", 10_000, "pos", {"labels": ["pos"]})
    assert store.count("run_cases") == len(cases) + 1


def test_the_store_reconnects_after_postgres_restarts() -> None:
    """Connections cut by a server restart are replaced; the writes after it land once."""
    pytest.importorskip("psycopg_pool")
    from llmclf.testing.postgres import postgres_bin_dir

    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    with TempPostgres() as pg:
        store = Store(pg.create_database("restart"))
        store.review_add("t", "before", {}, request_id="a")
        pg.restart()
        assert store.review_add("t", "after", {}, request_id="b") > 0
        assert store.review_add("t", "after", {}, request_id="b") == 0
        assert store.cache_get("missing") is None
        assert store.count("review") == 2
        store.close()
