"""SQLite store: response cache, eval runs, teacher labels and the review queue, in one file.

The schema is a list of ordered migrations (applied once each, recorded in ``_migrations``).
Every write is one transaction in WAL mode, so a crash or a ``kill -9`` leaves either the whole
row or nothing, and many threads and processes can share the file.

Example:
    >>> s = Store(":memory:")
    >>> s.cache_put("k", "model-x", {"label": "a"})
    >>> s.cache_get("k")
    {'label': 'a'}
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmclf.errors import StoreError

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_cache",
        """
        CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            response TEXT NOT NULL,
            created REAL NOT NULL
        );
        """,
    ),
    (
        "002_runs",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            kind TEXT NOT NULL,
            eval_set TEXT NOT NULL,
            backend TEXT NOT NULL,
            prompt TEXT,
            prompt_hash TEXT,
            resume_key TEXT,
            config TEXT NOT NULL,
            metrics TEXT,
            status TEXT NOT NULL
        );
        CREATE INDEX runs_resume ON runs(resume_key, status);
        CREATE TABLE run_cases (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            case_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            gold TEXT NOT NULL,
            prediction TEXT NOT NULL,
            PRIMARY KEY (run_id, case_id)
        );
        """,
    ),
    (
        "003_teacher_labels",
        """
        CREATE TABLE teacher_labels (
            job TEXT NOT NULL,
            item_key TEXT NOT NULL,
            position INTEGER NOT NULL,
            text TEXT NOT NULL,
            prediction TEXT NOT NULL,
            PRIMARY KEY (job, item_key)
        );
        """,
    ),
    (
        "004_review",
        """
        CREATE TABLE review (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT UNIQUE,
            created REAL NOT NULL,
            task TEXT NOT NULL,
            text TEXT NOT NULL,
            prediction TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            gold TEXT,
            reviewed REAL
        );
        CREATE INDEX review_task_status ON review(task, status);
        """,
    ),
    (
        "007_label_batches",
        """
        CREATE TABLE label_batches (
            id TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            seq INTEGER NOT NULL,
            provider TEXT NOT NULL,
            batch_id TEXT,
            input_file_id TEXT,
            status TEXT NOT NULL,
            keys TEXT NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0,
            info TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE INDEX label_batches_job ON label_batches(job, seq);
        """,
    ),
]


def _dumps(obj: Any) -> str:
    out = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    if not out.isascii():
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: SQLite cannot bind it, JSON can escape it
            out = json.dumps(obj, sort_keys=True)
    return out


class Store:
    """One SQLite file; thread-safe (a connection per thread), process-safe (WAL + busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._memory_conn: sqlite3.Connection | None = None
        self._memory_lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    # -- connection -----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            if self._memory_conn is None:
                self._memory_conn = sqlite3.connect(":memory:", check_same_thread=False)
            return self._memory_conn
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE, so writers queue instead of deadlocking)."""
        conn = self._conn()
        lock = self._memory_lock if self.path == ":memory:" else None
        if lock:
            lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if lock:
                lock.release()

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn()
        if self.path == ":memory:":
            with self._memory_lock:
                return conn.execute(sql, tuple(args)).fetchall()
        return conn.execute(sql, tuple(args)).fetchall()

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied REAL)"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for stmt in sql.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: 'ok' when the file is sound."""
        return str(self._read("PRAGMA integrity_check")[0][0])

    # -- response cache ---------------------------------------------------------------------------
    def cache_get(self, key: str) -> Any | None:
        rows = self._read("SELECT response FROM cache WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def cache_put(self, key: str, model: str, response: Any) -> None:
        """Store a validated response; only ever called after validation succeeded."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)",
                (key, model, _dumps(response), time.time()),
            )

    def cache_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM cache")[0][0])

    # -- runs -------------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        kind: str,
        eval_set: str,
        backend: str,
        config: dict[str, Any],
        prompt: str | None = None,
        prompt_hash: str | None = None,
        resume_key: str | None = None,
    ) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs (id, created, kind, eval_set, backend, prompt, prompt_hash,"
                " resume_key, config, status) VALUES (?,?,?,?,?,?,?,?,?, 'running')",
                (
                    run_id,
                    time.time(),
                    kind,
                    eval_set,
                    backend,
                    prompt,
                    prompt_hash,
                    resume_key,
                    _dumps(config),
                ),
            )
        return run_id

    def find_unfinished_run(self, resume_key: str) -> str | None:
        rows = self._read(
            "SELECT id FROM runs WHERE resume_key = ? AND status = 'running'"
            " ORDER BY created DESC LIMIT 1",
            (resume_key,),
        )
        return str(rows[0][0]) if rows else None

    def add_run_case(
        self, run_id: str, case_id: str, position: int, gold: Any, prediction: dict[str, Any]
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO run_cases VALUES (?, ?, ?, ?, ?)",
                (run_id, case_id, position, _dumps(gold), _dumps(prediction)),
            )

    def run_cases(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT case_id, gold, prediction FROM run_cases WHERE run_id = ? ORDER BY position",
            (run_id,),
        )
        return [
            {"id": r[0], "gold": json.loads(r[1]), "prediction": json.loads(r[2])} for r in rows
        ]

    def finish_run(self, run_id: str, metrics: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET metrics = ?, status = 'done' WHERE id = ?",
                (_dumps(metrics), run_id),
            )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._read(
            "SELECT id, created, kind, eval_set, backend, prompt, prompt_hash, config, metrics,"
            " status FROM runs WHERE id = ? OR id LIKE ? ORDER BY created DESC LIMIT 2",
            (run_id, run_id + "%"),
        )
        if not rows:
            return None
        if len(rows) > 1 and rows[0][0] != run_id:
            raise StoreError(f"run id prefix {run_id!r} is ambiguous")
        return self._run_row(rows[0])

    def list_runs(self, eval_set: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, created, kind, eval_set, backend, prompt, prompt_hash, config, metrics,"
            " status FROM runs"
        )
        args: tuple[Any, ...] = ()
        if eval_set:
            sql += " WHERE eval_set = ?"
            args = (eval_set,)
        sql += " ORDER BY created DESC LIMIT ?"
        return [self._run_row(r) for r in self._read(sql, (*args, limit))]

    @staticmethod
    def _run_row(r: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "id": r[0],
            "created": r[1],
            "kind": r[2],
            "eval_set": r[3],
            "backend": r[4],
            "prompt": r[5],
            "prompt_hash": r[6],
            "config": json.loads(r[7]),
            "metrics": json.loads(r[8]) if r[8] else None,
            "status": r[9],
        }

    # -- teacher labels (distill) -----------------------------------------------------------------
    def teacher_done_keys(self, job: str) -> set[str]:
        return {
            str(r[0])
            for r in self._read("SELECT item_key FROM teacher_labels WHERE job = ?", (job,))
        }

    def teacher_keys_present(self, job: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` already have a label in ``job``."""
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._read(
                f"SELECT item_key FROM teacher_labels WHERE job = ? AND item_key IN ({marks})",
                (job, *part),
            )
            found |= {str(r[0]) for r in rows}
        return found

    def put_teacher_label(
        self, job: str, item_key: str, position: int, text: str, prediction: dict[str, Any]
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO teacher_labels VALUES (?, ?, ?, ?, ?)",
                (job, item_key, position, text, _dumps(prediction)),
            )

    def teacher_labels(self, job: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT item_key, text, prediction FROM teacher_labels WHERE job = ? ORDER BY position",
            (job,),
        )
        return [{"key": r[0], "text": r[1], "prediction": json.loads(r[2])} for r in rows]

    # -- provider batches of a labelling job (llmclf label --engine batch) ------------------------
    def batch_add(self, job: str, provider: str, keys: list[str], generation: int = 0) -> str:
        """Record a chunk of a job *before* it is submitted (status ``submitting``); returns its
        id (``job:seq``), which is also sent as the batch's metadata so a crash between the
        provider's answer and `batch_update` can be recovered without resubmitting."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM label_batches WHERE job = ?", (job,)
            ).fetchone()
            seq = int(row[0])
            chunk_id = f"{job}:{seq}"
            now = time.time()
            conn.execute(
                "INSERT INTO label_batches (id, job, seq, provider, status, keys, generation,"
                " created, updated) VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?, ?)",
                (chunk_id, job, seq, provider, _dumps(keys), generation, now, now),
            )
        return chunk_id

    def batch_update(
        self,
        chunk_id: str,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        input_file_id: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Update one chunk's provider ids, status and info (one transaction)."""
        sets: list[str] = ["updated = ?"]
        args: list[Any] = [time.time()]
        for col, value in (("status", status), ("batch_id", batch_id),
                           ("input_file_id", input_file_id)):  # fmt: skip
            if value is not None:
                sets.append(f"{col} = ?")
                args.append(value)
        if info is not None:
            sets.append("info = ?")
            args.append(_dumps(info))
        with self._tx() as conn:
            conn.execute(
                f"UPDATE label_batches SET {', '.join(sets)} WHERE id = ?", (*args, chunk_id)
            )

    def batches(self, job: str) -> list[dict[str, Any]]:
        """Every chunk of ``job``, in submission order."""
        rows = self._read(
            "SELECT id, seq, provider, batch_id, input_file_id, status, keys, generation, info,"
            " created, updated FROM label_batches WHERE job = ? ORDER BY seq",
            (job,),
        )
        return [
            {"id": r[0], "seq": r[1], "provider": r[2], "batch_id": r[3],
             "input_file_id": r[4], "status": r[5], "keys": json.loads(r[6]),
             "generation": r[7], "info": json.loads(r[8]), "created": r[9], "updated": r[10]}
            for r in rows
        ]  # fmt: skip

    # -- review queue ---------------------------------------------------------------------------
    def review_add(
        self, task: str, text: str, prediction: dict[str, Any], request_id: str | None = None
    ) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO review (request_id, created, task, text, prediction)"
                " VALUES (?, ?, ?, ?, ?)",
                (request_id, time.time(), task, text, _dumps(prediction)),
            )
            return int(cur.lastrowid or 0)

    def review_list(
        self, task: str | None = None, status: str | None = "pending", limit: int = 100
    ) -> list[dict[str, Any]]:
        sql = "SELECT id, request_id, created, task, text, prediction, status, gold FROM review"
        where, args = [], []
        if task:
            where.append("task = ?")
            args.append(task)
        if status:
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        rows = self._read(sql, (*args, limit))
        return [
            {
                "id": r[0],
                "request_id": r[1],
                "created": r[2],
                "task": r[3],
                "text": r[4],
                "prediction": json.loads(r[5]),
                "status": r[6],
                "gold": json.loads(r[7]) if r[7] else None,
            }
            for r in rows
        ]

    def review_label(self, review_id: int, gold: list[str]) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE review SET status = 'labelled', gold = ?, reviewed = ? WHERE id = ?",
                (_dumps(gold), time.time(), review_id),
            )
            return cur.rowcount == 1

    def count(self, table: str, where: str = "", args: Iterable[Any] = ()) -> int:
        if table not in {"cache", "runs", "run_cases", "teacher_labels", "review",
                         "label_batches"}:  # fmt: skip
            raise StoreError(f"unknown table {table!r}")
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(self._read(sql, args)[0][0])


_default: dict[str, Store] = {}
_default_lock = threading.Lock()


def open_store(path: str | Path | None = None, *, factory: Callable[[str], Store] = Store) -> Store:
    """The process-wide store for ``path`` (default: ``$LLMCLF_HOME/llmclf.db``)."""
    from llmclf.paths import store_path

    key = str(path or store_path())
    with _default_lock:
        if key not in _default:
            _default[key] = factory(key)
        return _default[key]
