"""``--engine batch``: label through a provider's Batch API (litellm files/batches).

```
missing items ──► request bodies (LLMBackend.request_body: the online call, not sent)
  ──► chunks (≤ max_requests lines, ≤ max_bytes) ──► store row 'submitting' ──► create_file
  ──► create_batch(metadata: chunk id) ──► store row: batch id
re-run / --status / --wait ──► retrieve_batch ──► file_content(output, error)
  ──► each line validated like an online answer ──► teacher_labels (one transaction each)
  ──► invalid or failed lines retried online (bounded) ──► the rest reported
  ──► expired / failed / cancelled batch: only its unfinished items go into a new chunk
```

A chunk is recorded in the store before it is submitted, and its id travels as the batch's
metadata: after a crash anywhere, a re-run finds every submitted batch (by id, or by metadata
in the provider's batch list) and never submits a chunk twice. Labels are committed before a
chunk is marked done, so a crash mid-download re-downloads and skips what is stored.

Example:
    >>> engine = BatchEngine(job, BatchOptions(wait=True, poll_s=60))    # doctest: +SKIP
    >>> report = engine.run()
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llmclf.backends.llm import LLMBackend, classify_provider_error
from llmclf.errors import BackendError, ConfigError, InputTextError
from llmclf.labelling.job import Item, LabelJob
from llmclf.types import Usage

log = logging.getLogger("llmclf.labelling.batch")

#: Provider batch states after which nothing changes.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Our own final states of a chunk: all downloaded ('done'), or given up on ('retired':
#: the batch failed, expired or was cancelled; its unfinished items go into a new chunk).
CLOSED = frozenset({"done", "retired"})
#: OpenAI's limits on one batch input file.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"


@dataclass
class BatchOptions:
    """How the batch engine submits and waits. ``status_only`` polls and downloads but never
    submits; ``wait`` polls every ``poll_s`` seconds until every chunk is closed.
    ``max_online_retries``: invalid or failed result lines retried online per run (the rest
    are reported). ``max_resubmits``: how often an item of an expired/failed batch goes into
    a new chunk before it is reported instead."""

    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    poll_s: float = 30.0
    wait: bool = False
    status_only: bool = False
    max_online_retries: int = 100
    max_resubmits: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise ConfigError(f"max_requests must be in 1..{MAX_REQUESTS}, got {self.max_requests}")
        if not 1 <= self.max_bytes <= MAX_BYTES:
            raise ConfigError(f"max_bytes must be in 1..{MAX_BYTES}, got {self.max_bytes}")
        if self.poll_s < 0:
            raise ConfigError(f"poll_s must be >= 0, got {self.poll_s}")


@dataclass
class BatchReport:
    """What one run of the batch engine did."""

    n_new: int = 0
    n_online: int = 0
    n_from_cache: int = 0
    submitted: int = 0
    usage: Usage = field(default_factory=Usage)
    failures: list[tuple[Item, str]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)


class BatchEngine:
    """Runs one labelling job through the teacher provider's Batch API."""

    def __init__(self, job: LabelJob, options: BatchOptions | None = None) -> None:
        if not isinstance(job.backend, LLMBackend):
            raise ConfigError(
                f"--engine batch needs an llm: teacher (a provider with a Batch API), "
                f"got {job.teacher_shown}"
            )
        self.job = job
        self.backend: LLMBackend = job.backend
        self.opts = options or BatchOptions()
        self.report = BatchReport()
        self.by_key = {it.key: it for it in job.items}
        self._online_left = self.opts.max_online_retries
        import litellm

        cfg = self.backend.config
        try:
            self.provider = str(litellm.get_llm_provider(model=cfg.model)[1])
        except Exception as exc:
            raise ConfigError(f"{job.teacher_shown}: unknown provider ({exc})") from None

    # -- provider calls -------------------------------------------------------------------------
    def _call(self, name: str, **kwargs: Any) -> Any:
        import litellm

        cfg = self.backend.config
        api_base = cfg.api_base
        provider_url = getattr(self.backend, "_base_url_provider", None)
        if provider_url is not None:
            api_base = provider_url()
        try:
            return getattr(litellm, name)(
                custom_llm_provider=self.provider,
                api_base=api_base,
                api_key=cfg.api_key,
                **kwargs,
            )
        except BackendError:
            raise
        except Exception as exc:
            typed, _ = classify_provider_error(exc, self.backend.name, [cfg.api_key])
            raise typed from None

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> BatchReport:
        """Recover, poll and download, submit what is missing, and wait when asked."""
        self._recover_submitting()
        self.poll()
        if not self.opts.status_only:
            self.submit_missing()
        if self.opts.wait:
            self._wait()
        self.report.chunks = self.job.store.batches(self.job.job)
        return self.report

    def _open_chunks(self) -> list[dict[str, Any]]:
        return [c for c in self.job.store.batches(self.job.job) if c["status"] not in CLOSED]

    def _wait(self) -> None:
        total = len(self.job.items)
        with contextlib.ExitStack() as stack:
            bar: Any = None
            if self.opts.progress:
                from llmclf.progress import open_bar

                bar, tid = open_bar(
                    stack,
                    f"batch {self.job.teacher_shown}",
                    total=total,
                    done=len(self.job.done_keys()),
                    stats=self._stats(),
                )
            while self._open_chunks():
                time.sleep(self.opts.poll_s)
                self.poll()
                if not self.opts.status_only:
                    self.submit_missing()  # the unfinished items of an expired batch
                if bar is not None:
                    done = len(self.job.done_keys() & set(self.by_key))
                    bar.update(tid, completed=done, stats=self._stats())

    def _stats(self) -> str:
        states = Counter(c["status"] for c in self.job.store.batches(self.job.job))
        return " · ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no batches"

    # -- submitting -----------------------------------------------------------------------------
    def _recover_submitting(self) -> None:
        """Chunks recorded but not confirmed (a crash during submission): find their batch in
        the provider's list by metadata; submit them only when the provider has none."""
        stuck = [c for c in self._open_chunks() if c["batch_id"] is None]
        if not stuck:
            return
        found: dict[str, Any] = {}
        try:
            page = self._call("list_batches", limit=100)
            for b in getattr(page, "data", None) or []:
                chunk = (getattr(b, "metadata", None) or {}).get("llmclf_chunk")
                if chunk:
                    found.setdefault(chunk, b)
        except BackendError as exc:
            log.warning("cannot list batches to recover a submission: %s", exc)
        for c in stuck:
            b = found.get(c["id"])
            if b is not None:
                self.job.store.batch_update(
                    c["id"], batch_id=b.id, input_file_id=b.input_file_id, status=b.status
                )
            elif not self.opts.status_only:
                items = [self.by_key[k] for k in c["keys"] if k in self.by_key]
                self._submit_chunk(c["id"], self._lines(items)[0])

    def submit_missing(self) -> None:
        """Submit every missing item that no open chunk holds, in chunks within the limits."""
        chunks = self.job.store.batches(self.job.job)
        covered = {k for c in chunks if c["status"] not in CLOSED for k in c["keys"]}
        tries = Counter(k for c in chunks for k in c["keys"])
        reported = {it.key for it, _ in self.report.failures}
        todo: list[Item] = []
        for it in self.job.missing():
            if it.key in covered or it.key in reported:
                continue
            if tries[it.key] > self.opts.max_resubmits:
                self.report.failures.append(
                    (
                        it,
                        f"not labelled after {tries[it.key]} batches; "
                        "label it online with --engine async",
                    )
                )
                continue
            todo.append(it)
        for lines, keys in self._chunked(todo):
            generation = max(tries[k] for k in keys)
            chunk_id = self.job.store.batch_add(self.job.job, self.provider, keys, generation)
            self._submit_chunk(chunk_id, lines)

    def _lines(self, items: list[Item]) -> tuple[list[bytes], list[str]]:
        """Batch input lines for ``items``; an item whose answer is cached is labelled from the
        cache instead (no request)."""
        lines: list[bytes] = []
        keys: list[str] = []
        for it in items:
            cache_key, body = self.backend.request_body(it.text)
            if self.backend.config.cache and self.job.store.cache_get(cache_key) is not None:
                pred = self.backend.classify(it.text)  # a cache hit: no provider call
                self.job.commit(it, pred)
                self.report.n_from_cache += 1
                self.report.n_new += 1
                continue
            line = {"custom_id": it.key, "method": "POST", "url": ENDPOINT, "body": body}
            lines.append(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            keys.append(it.key)
        return lines, keys

    def _chunked(self, items: list[Item]) -> Iterator[tuple[list[bytes], list[str]]]:
        lines, keys = self._lines(items)
        cur: list[bytes] = []
        cur_keys: list[str] = []
        size = 0
        for line, key in zip(lines, keys, strict=True):
            if len(line) > self.opts.max_bytes:
                raise ConfigError(
                    f"{self.job.source}:{self.by_key[key].line}: one request is {len(line):,} "
                    f"bytes, over the batch file limit of {self.opts.max_bytes:,}"
                )
            if cur and (
                len(cur) >= self.opts.max_requests or size + len(line) > self.opts.max_bytes
            ):
                yield cur, cur_keys
                cur, cur_keys, size = [], [], 0
            cur.append(line)
            cur_keys.append(key)
            size += len(line)
        if cur:
            yield cur, cur_keys

    def _submit_chunk(self, chunk_id: str, lines: list[bytes]) -> None:
        if not lines:
            self.job.store.batch_update(chunk_id, status="done", info={"from_cache": True})
            return
        data = b"".join(lines)
        f = self._call("create_file", file=(f"{chunk_id}.jsonl", data), purpose="batch")
        self.job.store.batch_update(chunk_id, input_file_id=f.id)
        b = self._call(
            "create_batch",
            completion_window="24h",
            endpoint=ENDPOINT,
            input_file_id=f.id,
            metadata={"llmclf_job": self.job.job, "llmclf_chunk": chunk_id},
        )
        self.job.store.batch_update(chunk_id, batch_id=b.id, status=b.status or "submitted")
        self.report.submitted += 1
        log.info("submitted %s (%d requests) as %s", chunk_id, len(lines), b.id)

    # -- polling and downloading ----------------------------------------------------------------
    def poll(self) -> None:
        """Ask the provider about every open chunk; download and store those that finished."""
        for c in self._open_chunks():
            if c["batch_id"] is None:
                continue
            b = self._call("retrieve_batch", batch_id=c["batch_id"])
            status = str(b.status)
            if status in TERMINAL:
                self._download(c, b)
            elif status != c["status"]:
                counts = getattr(b, "request_counts", None)
                info = dict(c["info"])
                if counts is not None:
                    info["request_counts"] = {
                        "total": counts.total,
                        "completed": counts.completed,
                        "failed": counts.failed,
                    }
                self.job.store.batch_update(c["id"], status=status, info=info)

    def _file_lines(self, file_id: str | None) -> list[bytes]:
        if not file_id:
            return []
        content = self._call("file_content", file_id=file_id)
        data = getattr(content, "content", content)
        if isinstance(data, str):
            data = data.encode()
        return [ln for ln in bytes(data).splitlines() if ln.strip()]

    def _download(self, chunk: dict[str, Any], batch: Any) -> None:
        keys = set(chunk["keys"])
        done = self.job.done_keys()
        seen: set[str] = set()
        retry: dict[str, str] = {}
        malformed = unknown = labelled = 0
        errors: list[str] = []
        lines = self._file_lines(batch.output_file_id) + self._file_lines(batch.error_file_id)
        for raw in lines:
            try:
                obj = json.loads(raw)
            except ValueError:
                malformed += 1
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                malformed += 1
                continue
            cid: str = obj["custom_id"]
            if cid not in keys or cid not in self.by_key:
                unknown += 1
                continue
            if cid in done or cid in seen:
                seen.add(cid)
                continue
            item = self.by_key[cid]
            resp = obj.get("response") if isinstance(obj.get("response"), dict) else {}
            assert isinstance(resp, dict)
            outcome = _line_error(obj.get("error"), resp)
            if outcome == "unfinished":
                continue  # never ran (expired/cancelled): goes into a new chunk
            if outcome is not None:
                retry[cid] = outcome
                continue
            try:
                pred = self.backend.prediction_from_response(item.text, resp.get("body") or {})
            except BackendError as exc:
                retry[cid] = f"{type(exc).__name__}: {exc}"
                continue
            self.job.commit(item, pred)
            seen.add(cid)
            labelled += 1
            self.report.n_new += 1
            self.report.usage = self.report.usage + pred.usage
        online = self._retry_online([self.by_key[k] for k in retry], retry)
        errors = [f"{self.by_key[k].line}: {m}" for k, m in list(retry.items())[:5]]
        unfinished = keys - done - seen - set(retry)
        info = {
            "provider_status": str(batch.status),
            "labelled": labelled,
            "retried_online": online,
            "invalid_or_failed": len(retry),
            "unfinished": len(unfinished),
            "malformed_lines": malformed,
            "unknown_ids": unknown,
            "errors": errors,
        }
        status = "done" if batch.status == "completed" else "retired"
        if unfinished:
            log.warning(
                "%s: %d item(s) of batch %s (%s) unfinished: they go into a new chunk",
                chunk["id"],
                len(unfinished),
                batch.id,
                batch.status,
            )
        self.job.store.batch_update(chunk["id"], status=status, info=info)

    def _retry_online(self, items: list[Item], why: dict[str, str]) -> int:
        """Label invalid or failed result lines with online calls (at most
        ``max_online_retries`` per run); report the rest."""
        n = 0
        for it in items:
            if self._online_left <= 0:
                self.report.failures.append((it, f"batch: {why[it.key]} (online retries spent)"))
                continue
            self._online_left -= 1
            try:
                pred = self.backend.classify(it.text)
            except (BackendError, InputTextError) as exc:
                self.report.failures.append(
                    (it, f"batch: {why[it.key]}; online: {type(exc).__name__}: {exc}")
                )
                continue
            self.job.commit(it, pred)
            n += 1
            self.report.n_new += 1
            self.report.n_online += 1
            self.report.usage = self.report.usage + pred.usage
        return n


def _line_error(err: Any, resp: dict[str, Any]) -> str | None:
    """None for a 200 answer; ``'unfinished'`` for a request the batch never ran; else what
    went wrong with the line."""
    if not err and resp.get("status_code") == 200:
        return None
    code = err.get("code") if isinstance(err, dict) else None
    if code in ("batch_expired", "batch_cancelled"):
        return "unfinished"
    msg = err.get("message") if isinstance(err, dict) else None
    body = resp.get("body")
    if not msg and isinstance(body, dict) and isinstance(body.get("error"), dict):
        msg = body["error"].get("message")
    return f"HTTP {resp.get('status_code')}: {msg or err or 'failed'}"
