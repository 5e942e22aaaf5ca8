"""The OpenAI Files and Batches API of `FakeProvider`: ``/v1/files`` and ``/v1/batches``.

A batch is answered line by line by the provider's own chat logic, after a scripted number of
polls. A `BatchScript` says how it ends: ``completed``, ``failed`` (no output), ``expired`` or
``cancelled`` (only the first ``finished`` lines answered), with some lines failed (error file),
malformed (an answer outside the label schema), garbled (not JSON) or never written anywhere.

Example:
    >>> with FakeProvider(default="negative") as fake:                  # doctest: +SKIP
    ...     fake.batches.script(BatchScript(polls=2, fail={"3:ab12"}))  # the next batch created
    ...     # litellm.create_file(..., api_base=fake.base_url) / create_batch / retrieve_batch
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

#: The terminal states a script can end in.
FINAL_STATES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchScript:
    """How one batch behaves. ``polls``: how many ``GET /v1/batches/{id}`` see it unfinished
    (``validating`` first, then ``in_progress``). ``final``: its terminal status. ``finished``:
    for ``expired``/``cancelled``, how many lines were answered before it stopped (default half).
    ``fail``: custom ids answered with a 500 in the error file. ``malformed``: custom ids
    answered 200 with a label outside the set. ``garble``: custom ids whose output line is not
    JSON. ``drop``: custom ids written nowhere."""

    polls: int = 1
    final: str = "completed"
    finished: int | None = None
    fail: frozenset[str] | set[str] = frozenset()
    malformed: frozenset[str] | set[str] = frozenset()
    garble: frozenset[str] | set[str] = frozenset()
    drop: frozenset[str] | set[str] = frozenset()

    def __post_init__(self) -> None:
        if self.final not in FINAL_STATES:
            raise ValueError(f"final must be one of {FINAL_STATES}, got {self.final!r}")


@dataclass
class FakeBatchAPI:
    """Files and batches held in memory. ``answer(body)`` answers one chat request body with a
    chat-completion JSON body (the provider's own logic)."""

    answer: Callable[[dict[str, Any]], dict[str, Any]]
    default_script: BatchScript = field(default_factory=BatchScript)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: every ``POST /v1/batches`` body, in order (tests count submissions here)
    created: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._scripts: deque[BatchScript] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._internal: dict[str, tuple[BatchScript, int]] = {}

    def script(self, *scripts: BatchScript) -> None:
        """Queue scripts; each is taken by the next batch created (then `default_script`)."""
        with self._lock:
            self._scripts.extend(scripts)

    # -- HTTP routing ---------------------------------------------------------------------------
    def handle(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any] | None:
        """``(status, payload)`` for a Files/Batches request (payload: JSON-able, or bytes for a
        file's content), or None when ``path`` is not one of ours."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if parts[:1] == ["v1"]:
            parts = parts[1:]
        if not parts or parts[0] not in ("files", "batches"):
            return None
        with self._lock:
            if parts[0] == "files":
                return self._files(method, parts[1:], headers, raw)
            return self._batches(method, parts[1:], raw)

    def _files(
        self, method: str, rest: list[str], headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any]:
        if method == "POST" and not rest:
            form = _multipart(headers.get("content-type", ""), raw)
            if "file" not in form:
                return 400, _error("multipart form has no 'file' part")
            fid = f"file-{next(self._ids)}"
            name, content = form["file"]
            purpose = form.get("purpose", (None, b"batch"))[1].decode()
            self.files[fid] = {
                "content": content,
                "filename": name or "upload.jsonl",
                "purpose": purpose,
                "created_at": int(time.time()),
            }
            return 200, self._file_object(fid)
        if not rest or rest[0] not in self.files:
            return 404, _error("no such file")
        if method == "GET" and rest[1:] == ["content"]:
            return 200, bytes(self.files[rest[0]]["content"])
        if method == "GET" and len(rest) == 1:
            return 200, self._file_object(rest[0])
        return 405, _error("method not allowed")

    def _file_object(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["content"]),
            "created_at": f["created_at"],
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _batches(self, method: str, rest: list[str], raw: bytes) -> tuple[int, Any]:
        if method == "POST" and not rest:
            body = json.loads(raw or b"{}")
            if body.get("input_file_id") not in self.files:
                return 400, _error(f"input file {body.get('input_file_id')!r} not found")
            self.created.append(body)
            bid = f"batch_{next(self._ids)}"
            script = self._scripts.popleft() if self._scripts else self.default_script
            self._internal[bid] = (script, 0)
            self.batches[bid] = {
                "id": bid,
                "object": "batch",
                "endpoint": body.get("endpoint"),
                "errors": None,
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }
            return 200, self.batches[bid]
        if method == "GET" and not rest:
            data = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
            return 200, {"object": "list", "data": data, "has_more": False}
        if not rest or rest[0] not in self.batches:
            return 404, _error("no such batch")
        bid = rest[0]
        if method == "POST" and rest[1:] == ["cancel"]:
            script, polls = self._internal[bid]
            self._internal[bid] = (BatchScript(polls=0, final="cancelled", finished=0), polls)
            return 200, self.batches[bid]
        if method == "GET" and len(rest) == 1:
            self._advance(bid)
            return 200, self.batches[bid]
        return 405, _error("method not allowed")

    # -- running a batch ------------------------------------------------------------------------
    def _advance(self, bid: str) -> None:
        batch = self.batches[bid]
        if batch["status"] in FINAL_STATES:
            return
        script, polls = self._internal[bid]
        polls += 1
        self._internal[bid] = (script, polls)
        lines = _jsonl(self.files[batch["input_file_id"]]["content"])
        batch["request_counts"]["total"] = len(lines)
        if polls <= script.polls:
            batch["status"] = "validating" if polls == 1 else "in_progress"
            return
        self._finish(bid, script, lines)

    def _finish(self, bid: str, script: BatchScript, lines: list[dict[str, Any]]) -> None:
        batch = self.batches[bid]
        batch["status"] = script.final
        now = int(time.time())
        batch[f"{script.final}_at"] = now
        if script.final == "failed":
            batch["errors"] = {
                "object": "list",
                "data": [{"code": "scripted_failure", "message": "the batch failed (scripted)"}],
            }
            return
        todo = lines
        if script.final in ("expired", "cancelled"):
            todo = lines[: len(lines) // 2 if script.finished is None else script.finished]
        out: list[str] = []
        err: list[str] = []
        done = failed = 0
        for i, line in enumerate(todo):
            cid = str(line.get("custom_id"))
            rid = f"batch_req_{bid}_{i}"
            if cid in script.drop:
                continue
            if cid in script.fail:
                failed += 1
                err.append(
                    json.dumps(
                        {
                            "id": rid,
                            "custom_id": cid,
                            "response": {
                                "status_code": 500,
                                "request_id": rid,
                                "body": _error("scripted line failure"),
                            },
                            "error": None,
                        }
                    )
                )
                continue
            if cid in script.garble:
                out.append('{"id": "' + rid + '", "custom_id": ' + json.dumps(cid) + ", garbage")
                continue
            answer = self.answer(dict(line.get("body") or {}))
            if cid in script.malformed:
                answer["choices"][0]["message"]["content"] = '{"label": "no-such-label"}'
                answer["choices"][0]["logprobs"] = None
            done += 1
            out.append(
                json.dumps(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "response": {"status_code": 200, "request_id": rid, "body": answer},
                        "error": None,
                    }
                )
            )
        if script.final in ("expired", "cancelled"):
            code = "batch_expired" if script.final == "expired" else "batch_cancelled"
            for i, line in enumerate(lines[len(todo) :], start=len(todo)):
                cid = str(line.get("custom_id"))
                if cid in script.drop:
                    continue
                err.append(
                    json.dumps(
                        {
                            "id": f"batch_req_{bid}_{i}",
                            "custom_id": cid,
                            "response": None,
                            "error": {
                                "code": code,
                                "message": f"not run before the batch was {script.final}",
                            },
                        }
                    )
                )
        batch["request_counts"] = {"total": len(lines), "completed": done, "failed": failed}
        if out:
            batch["output_file_id"] = self._add_file("\n".join(out) + "\n", "batch_output")
        if err:
            batch["error_file_id"] = self._add_file("\n".join(err) + "\n", "batch_output")

    def _add_file(self, text: str, purpose: str) -> str:
        fid = f"file-{next(self._ids)}"
        self.files[fid] = {
            "content": text.encode(),
            "filename": f"{fid}.jsonl",
            "purpose": purpose,
            "created_at": int(time.time()),
        }
        return fid


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake"}}


def _jsonl(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: ``{name: (filename, bytes)}``."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + raw)
    form: dict[str, tuple[str | None, bytes]] = {}
    if not msg.is_multipart():
        return form
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            form[name] = (part.get_filename(), payload)
    return form
