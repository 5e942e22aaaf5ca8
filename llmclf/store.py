"""The store: response cache, eval runs, teacher labels and the review queue.

One facade over two databases chosen by URL (`llmclf.storage`): a SQLite file (the embedded
default, ``$LLMCLF_HOME/llmclf.db``) or a shared PostgreSQL server (``postgresql://...``,
``$LLMCLF_DATABASE_URL`` or ``--db``). The schema is a list of ordered migrations (applied once
each, recorded in ``_migrations``; on PostgreSQL in one transaction under an advisory lock).
Every write is one transaction, so a crash or a ``kill -9`` leaves either the whole row or
nothing, and many threads and processes can share the store. Queries are written in the SQL
both databases accept (``?`` placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``).

Example:
    >>> s = Store(":memory:")
    >>> s.cache_put("k", "model-x", {"label": "a"})
    >>> s.cache_get("k")
    {'label': 'a'}
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from llmclf.errors import ReviewConflict, StoreError
from llmclf.storage import Database, connect, default_url, parse_url
from llmclf.storage.base import ACQUIRE_TIMEOUT
from llmclf.storage.health import StoreHealth

log = logging.getLogger("llmclf.store")
_T = TypeVar("_T")

#: How long a request-path store call waits for a connection before the answer goes on
#: without the store (`Store.degradable`).
REQUEST_PATH_TIMEOUT_S = 2.0

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
        # one row per decision a person made on a review item (kept when undone: nothing is
        # lost); review.decision names the current one. Portable SQL (SQLite and PostgreSQL).
        "005_review_decisions",
        """
        CREATE TABLE review_decisions (
            id TEXT PRIMARY KEY,
            review_id INTEGER NOT NULL REFERENCES review(id),
            task TEXT NOT NULL,
            action TEXT NOT NULL,
            gold TEXT,
            reviewer TEXT,
            decided REAL NOT NULL,
            undone REAL
        );
        CREATE INDEX review_decisions_item ON review_decisions(review_id);
        CREATE INDEX review_created ON review(task, created);
        ALTER TABLE review ADD COLUMN decision TEXT;
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

#: What a person can do with a review item: give gold labels, or skip it.
REVIEW_ACTIONS = ("labelled", "skipped")
_DECISION_SQL = (
    "SELECT id, review_id, task, action, gold, reviewer, decided, undone FROM review_decisions"
)


def _dumps(obj: Any) -> str:
    out = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    if not out.isascii():
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: SQLite cannot bind it, JSON can escape it
            out = json.dumps(obj, sort_keys=True)
    return out


class Store:
    """The store behind a URL or path: thread-safe and process-safe on either database.

    ``target`` is a SQLite path, ``:memory:``, ``sqlite:///PATH`` or ``postgresql://...``
    (`llmclf.storage.url`); a bad URL or an unreachable database raises `StoreError` naming the
    URL without its password."""

    def __init__(self, path: str | Path) -> None:
        self.url = parse_url(path)
        #: the SQLite file (``:memory:``), or the PostgreSQL URL without its password
        self.path = self.url.path if self.url.dialect == "sqlite" else self.url.redacted
        self._db: Database = connect(self.url)
        try:
            self._db.migrate(MIGRATIONS)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        #: whether the store answers now, as the request path last found it
        self.health = StoreHealth(self.path)
        self._probe: threading.Thread | None = None
        self._probe_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.dialect

    # -- connection -----------------------------------------------------------------------------
    def _tx(self) -> AbstractContextManager[Any]:
        """One write transaction (on SQLite BEGIN IMMEDIATE, so writers queue, never deadlock)."""
        return self._db.transaction()

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.read(sql, args)

    def integrity_check(self) -> str:
        """'ok' when the database is sound (SQLite: ``PRAGMA integrity_check``)."""
        return self._db.integrity_check()

    def close(self) -> None:
        """Close this store's connections (a PostgreSQL pool; this thread's SQLite handle)."""
        self._db.close()

    # -- the request path: degrade, never fail or stall ----------------------------------------
    def degradable(self, what: str, call: Callable[[], _T], default: _T) -> _T:
        """``call()``, or ``default`` when the store is degraded (`health`) or fails now.

        The call waits `REQUEST_PATH_TIMEOUT_S` at most for a connection; a failure is logged,
        marks the store degraded (counted) and starts a background probe, so the calls after it
        skip the store at once until it answers again. For what an answer may do without: the
        response cache.

        Example:
            >>> s = Store(":memory:")
            >>> def down(): raise StoreError("server gone")
            >>> s.degradable("cache read", down, None) is None, s.health.ok
            (True, False)
        """
        if not self.health.allow():
            return default
        token = ACQUIRE_TIMEOUT.set(REQUEST_PATH_TIMEOUT_S)
        try:
            return call()
        except (StoreError, sqlite3.Error, OSError) as exc:
            self.mark_unreachable(exc)
            log.warning("store %s: %s skipped: %s", self.path, what, exc)
            return default
        finally:
            ACQUIRE_TIMEOUT.reset(token)

    def mark_unreachable(self, exc: BaseException) -> None:
        """Record a failure (`health`) and probe in the background until the store answers."""
        self.health.failed(exc)
        with self._probe_lock:
            if self._probe is not None and self._probe.is_alive():
                return
            self._probe = threading.Thread(
                target=self._probe_until_healthy, name="llmclf-store-probe", daemon=True
            )
            self._probe.start()

    def _probe_until_healthy(self) -> None:
        while not self.health.ok:
            time.sleep(self.health.backoff_s)
            if self.ping():
                return

    def ping(self) -> bool:
        """Whether the store answers now (``SELECT 1``, on the request path's short timeout);
        a success makes a degraded store healthy again."""
        token = ACQUIRE_TIMEOUT.set(REQUEST_PATH_TIMEOUT_S)
        try:
            self._read("SELECT 1")
        except (StoreError, sqlite3.Error, OSError) as exc:
            self.health.failed(exc)
            return False
        finally:
            ACQUIRE_TIMEOUT.reset(token)
        self.health.succeeded()
        return True

    # -- response cache ---------------------------------------------------------------------------
    def cache_get(self, key: str) -> Any | None:
        rows = self._read("SELECT response FROM cache WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def cache_put(self, key: str, model: str, response: Any) -> None:
        """Store a validated response; only ever called after validation succeeded."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO cache (key, model, response, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET model = excluded.model,"
                " response = excluded.response, created = excluded.created",
                (key, model, _dumps(response), time.time()),
            )

    def cache_lookup(self, key: str) -> Any | None:
        """`cache_get` on the request path: a miss while the store is unreachable."""
        return self.degradable("cache read", lambda: self.cache_get(key), None)

    def cache_offer(self, key: str, model: str, response: Any) -> None:
        """`cache_put` on the request path: skipped while the store is unreachable."""
        self.degradable("cache write", lambda: self.cache_put(key, model, response), None)

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
                "INSERT INTO run_cases (run_id, case_id, position, gold, prediction)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, case_id) DO UPDATE SET"
                " position = excluded.position, gold = excluded.gold,"
                " prediction = excluded.prediction",
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
                "INSERT INTO teacher_labels (job, item_key, position, text, prediction)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job, item_key) DO UPDATE SET"
                " position = excluded.position, text = excluded.text,"
                " prediction = excluded.prediction",
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
        self,
        task: str,
        text: str,
        prediction: dict[str, Any],
        request_id: str | None = None,
        *,
        created: float | None = None,
    ) -> int:
        """Queue one row; its id, or 0 when ``request_id`` was queued already.

        ``created``: when the answer was given (default now; a spooled row keeps its own)."""
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO review (request_id, created, task, text, prediction)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING RETURNING id",
                (request_id, time.time() if created is None else created, task, text,
                 _dumps(prediction)),
            ).fetchone()
            return int(row[0]) if row else 0

    def review_list(
        self,
        task: str | None = None,
        status: str | None = "pending",
        limit: int = 100,
        *,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Queued rows, lowest id first (``status`` None: any); ``after_id`` pages on."""
        sql = (
            "SELECT id, request_id, created, task, text, prediction, status, gold, reviewed,"
            " decision FROM review"
        )
        where: list[str] = []
        args: list[Any] = []
        if task:
            where.append("task = ?")
            args.append(task)
        if status:
            where.append("status = ?")
            args.append(status)
        if after_id is not None:
            where.append("id > ?")
            args.append(after_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        return [self._review_row(r) for r in self._read(sql, (*args, limit))]

    @staticmethod
    def _review_row(r: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "id": r[0],
            "request_id": r[1],
            "created": r[2],
            "task": r[3],
            "text": r[4],
            "prediction": json.loads(r[5]),
            "status": r[6],
            "gold": json.loads(r[7]) if r[7] else None,
            "reviewed": r[8],
            "decision": r[9],
        }

    def review_get(self, review_id: int) -> dict[str, Any] | None:
        """One queued row by id (None when there is none)."""
        rows = self._read(
            "SELECT id, request_id, created, task, text, prediction, status, gold, reviewed,"
            " decision FROM review WHERE id = ?",
            (review_id,),
        )
        return self._review_row(rows[0]) if rows else None

    def review_label(self, review_id: int, gold: list[str]) -> bool:
        """Set the gold labels of a row whatever its state (the CLI's ``review label``)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE review SET status = 'labelled', gold = ?, reviewed = ? WHERE id = ?",
                (_dumps(gold), time.time(), review_id),
            )
            return cur.rowcount == 1

    def review_labels_since(self, task: str, since: float) -> list[list[str]]:
        """The predicted labels of the rows of ``task`` queued at or after ``since``."""
        rows = self._read(
            "SELECT prediction FROM review WHERE task = ? AND created >= ? ORDER BY id",
            (task, since),
        )
        out = []
        for (pred,) in rows:
            labels = json.loads(pred).get("labels") or []
            out.append([str(x) for x in labels])
        return out

    def review_decide(
        self,
        review_id: int,
        action: str,
        gold: list[str] | None = None,
        *,
        reviewer: str | None = None,
    ) -> dict[str, Any]:
        """Record one person's decision on a pending row, in one transaction.

        ``action``: ``labelled`` (with ``gold``) or ``skipped``. Only a pending row can be
        decided: when two people decide the same row, the first is recorded and the second
        gets `ReviewConflict` naming the decision already made. Returns the decision.

        Example:
            >>> s = Store(":memory:")
            >>> rid = s.review_add("t", "meh", {"labels": ["a"]})
            >>> s.review_decide(rid, "labelled", ["b"])["gold"]
            ['b']
            >>> s.review_decide(rid, "labelled", ["a"])             # doctest: +ELLIPSIS
            Traceback (most recent call last):
            llmclf.errors.ReviewConflict: review #1 was already labelled b ...
        """
        if action not in REVIEW_ACTIONS:
            raise StoreError(f"unknown review action {action!r}; one of {REVIEW_ACTIONS}")
        if action == "labelled" and not gold:
            raise StoreError("a 'labelled' decision needs the gold labels")
        decision = {
            "id": uuid.uuid4().hex,
            "review_id": review_id,
            "action": action,
            "gold": list(gold) if action == "labelled" and gold else None,
            "reviewer": reviewer,
            "decided": time.time(),
            "undone": None,
        }
        with self._tx() as conn:
            row = conn.execute(
                "SELECT task, status, decision FROM review WHERE id = ?", (review_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no review row with id {review_id}")
            task, status, current = row
            if status != "pending":
                raise self._conflict(conn, review_id, status, current)
            cur = conn.execute(
                "UPDATE review SET status = ?, gold = ?, reviewed = ?, decision = ?"
                " WHERE id = ? AND status = 'pending'",
                (
                    action,
                    _dumps(decision["gold"]) if decision["gold"] else None,
                    decision["decided"],
                    decision["id"],
                    review_id,
                ),
            )
            if cur.rowcount != 1:  # another writer won between the read and the write
                raise self._conflict(conn, review_id, status, current)
            conn.execute(
                "INSERT INTO review_decisions (id, review_id, task, action, gold, reviewer,"
                " decided, undone) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    decision["id"],
                    review_id,
                    task,
                    action,
                    _dumps(decision["gold"]) if decision["gold"] else None,
                    reviewer,
                    decision["decided"],
                ),
            )
        decision["task"] = task
        return decision

    def _conflict(
        self, conn: Any, review_id: int, status: str, decision_id: str | None
    ) -> ReviewConflict:
        current = self._decision(conn, decision_id) if decision_id else None
        if current is None:
            what = status
        elif current["action"] == "labelled":
            what = "labelled " + ",".join(current["gold"] or [])
        else:
            what = "skipped"
        who = f" by {current['reviewer']}" if current and current["reviewer"] else ""
        when = (
            time.strftime(" at %H:%M:%S UTC", time.gmtime(current["decided"])) if current else ""
        )
        return ReviewConflict(
            f"review #{review_id} was already {what}{who}{when}; "
            "nothing was changed (reload the queue to see it)",
            review_id=review_id,
            current=current,
        )

    @staticmethod
    def _decision(conn: Any, decision_id: str) -> dict[str, Any] | None:
        """One decision, read in the transaction ``conn`` (a `llmclf.storage.base.Tx`)."""
        r = conn.execute(
            _DECISION_SQL + " WHERE id = ?",
            (decision_id,),
        ).fetchone()
        return Store._decision_dict(r) if r is not None else None

    @staticmethod
    def _decision_dict(r: Any) -> dict[str, Any]:
        return {
            "id": r[0],
            "review_id": r[1],
            "task": r[2],
            "action": r[3],
            "gold": json.loads(r[4]) if r[4] else None,
            "reviewer": r[5],
            "decided": r[6],
            "undone": r[7],
        }

    def review_undo(self, decision_id: str) -> dict[str, Any]:
        """Undo a decision: its row is pending again; the decision is kept, marked undone.

        Only the row's current decision can be undone (`ReviewConflict` otherwise: someone
        decided it again since). Returns the row, pending."""
        with self._tx() as conn:
            d = self._decision(conn, decision_id)
            if d is None:
                raise StoreError(f"no review decision with id {decision_id!r}")
            row = conn.execute(
                "SELECT status, decision FROM review WHERE id = ?", (d["review_id"],)
            ).fetchone()
            if d["undone"] is not None or row is None or row[1] != decision_id:
                raise ReviewConflict(
                    f"review #{d['review_id']}: that decision is no longer the current one "
                    "(already undone, or decided again since); nothing was changed",
                    review_id=int(d["review_id"]),
                    current=self._decision(conn, row[1]) if row and row[1] else None,
                )
            now = time.time()
            conn.execute(
                "UPDATE review SET status = 'pending', gold = NULL, reviewed = NULL,"
                " decision = NULL WHERE id = ? AND decision = ?",
                (d["review_id"], decision_id),
            )
            conn.execute(
                "UPDATE review_decisions SET undone = ? WHERE id = ?", (now, decision_id)
            )
        row_out = self.review_get(int(d["review_id"]))
        assert row_out is not None
        return row_out

    def review_decisions(self, review_id: int) -> list[dict[str, Any]]:
        """Every decision made on a row, oldest first (undone ones included)."""
        rows = self._read(
            _DECISION_SQL + " WHERE review_id = ? ORDER BY decided, id", (review_id,)
        )
        return [self._decision_dict(r) for r in rows]

    def review_counts(self, task: str | None = None) -> dict[str, int]:
        """Rows per status (``pending``, ``labelled``, ``skipped``), for one task or all."""
        sql = "SELECT status, COUNT(*) FROM review"
        args: tuple[Any, ...] = ()
        if task:
            sql += " WHERE task = ?"
            args = (task,)
        sql += " GROUP BY status"
        counts = {"pending": 0, "labelled": 0, "skipped": 0}
        for status, n in self._read(sql, args):
            counts[str(status)] = int(n)
        return counts

    def review_tasks(self) -> list[str]:
        """The tasks that have rows in the queue."""
        return [str(r[0]) for r in self._read("SELECT DISTINCT task FROM review ORDER BY task")]

    def count(self, table: str, where: str = "", args: Iterable[Any] = ()) -> int:
        if table not in {
            "cache", "runs", "run_cases", "teacher_labels", "review", "review_decisions",
            "label_batches",
        }:
            raise StoreError(f"unknown table {table!r}")
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(self._read(sql, args)[0][0])


_default: dict[str, Store] = {}
_default_lock = threading.Lock()


def open_store(path: str | Path | None = None, *, factory: Callable[[str], Store] = Store) -> Store:
    """The process-wide store for ``path``: a store URL or SQLite path; by default
    ``$LLMCLF_DATABASE_URL``, else ``$LLMCLF_HOME/llmclf.db``.

    Example:
        >>> open_store("sqlite:///:memory:").dialect
        'sqlite'
    """
    target = str(path) if path else default_url()
    key = f"{os.getpid()}:{target}"  # a forked child never reuses its parent's connections
    with _default_lock:
        if key not in _default:
            _default[key] = factory(target)
        return _default[key]


def close_stores() -> None:
    """Close and forget every store `open_store` opened in this process (tests, shutdown)."""
    with _default_lock:
        stores = list(_default.values())
        _default.clear()
    for s in stores:
        s.close()
