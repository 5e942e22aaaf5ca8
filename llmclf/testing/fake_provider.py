"""A deterministic OpenAI-compatible chat server on 127.0.0.1, for tests and offline demos.

It answers ``POST /v1/chat/completions`` with labels chosen by substring rules, emits token
logprobs for them, and plays scripted faults: HTTP errors (429 with Retry-After, 500, 503),
delays, dropped connections, invalid JSON, labels outside the set and empty ``choices``.
Like a vLLM server, it also honours vLLM's ``structured_outputs`` field: ``choice`` is answered
with the bare label (and logprobs of it alone), ``json`` with JSON of that schema; more than
one constraint gets vLLM's 400, and so (stricter than vLLM, which would quietly add the response
format as a second constraint) does a constraint beside a ``json_schema`` response format.
It also serves the OpenAI Files and Batches API (``/v1/files``, ``/v1/batches``), answering a
batch's lines with the same logic after a scripted number of polls (`fake.batches`,
`llmclf.testing.fake_batches.BatchScript`).

Example:
    >>> with FakeProvider(rules={"loved": "positive"}, default="negative") as fake:
    ...     fake.push(Fault.status(429, retry_after=0))          # the next request gets a 429
    ...     spec = f"llm:openai/fake?api_base={fake.base_url}"   # use it like any provider
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmclf.testing.fake_batches import BatchScript, FakeBatchAPI

Answer = str | list[str]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next request."""

    kind: str
    code: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    content: str = ""

    @staticmethod
    def status(code: int, retry_after: float | None = None) -> Fault:
        """Answer with HTTP ``code`` (and a Retry-After header when given)."""
        return Fault("status", code=code, retry_after=retry_after)

    @staticmethod
    def delay(seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally (a slow provider, or a timeout)."""
        return Fault("delay", seconds=seconds)

    @staticmethod
    def drop() -> Fault:
        """Close the connection mid-response, after a partial HTTP header."""
        return Fault("drop")

    @staticmethod
    def raw(content: str) -> Fault:
        """Answer 200 with this message content (invalid JSON, a label outside the set...)."""
        return Fault("raw", content=content)

    @staticmethod
    def empty_choices() -> Fault:
        """Answer 200 with ``choices: []``."""
        return Fault("empty_choices")


@dataclass
class FakeProvider:
    """A scripted OpenAI-compatible server. Use as a context manager, or `start`/`stop`.

    ``rules`` map a lower-case substring of the text to an answer (a label, or a list for
    multi-label); the first match wins, else ``default``, else the first allowed label.
    ``confidence`` is the probability the emitted logprobs give the chosen answer.
    """

    rules: Mapping[str, Answer] = field(default_factory=dict)
    default: Answer | None = None
    confidence: float = 0.9
    logprobs: bool = True
    labeler: Callable[[str], Answer] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.fault_counts: dict[str, int] = {}
        #: the Files/Batches API (``fake.batches.script(BatchScript(...))``, ``.created``)
        self.batches = FakeBatchAPI(answer=self.answer_body, default_script=BatchScript())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _batch_api(self, method: str, raw: bytes) -> bool:
                headers = {k.lower(): v for k, v in self.headers.items()}
                routed = provider.batches.handle(method, self.path, headers, raw)
                if routed is None:
                    return False
                status, payload = routed
                if isinstance(payload, bytes):
                    self.send_response(status)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    self._send(status, payload)
                return True

            def do_GET(self) -> None:
                if self._batch_api("GET", b""):
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if self._batch_api("POST", raw):
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "request body is not JSON"}})
                    return
                try:
                    provider._handle(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (e.g. its timeout)

            def _send(
                self, status: int, payload: Any, headers: Mapping[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the provider first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def spec(self, **options: Any) -> str:
        """A backend spec that points llmclf at this server."""
        opts = "&".join(f"{k}={v}" for k, v in {"api_base": self.base_url, **options}.items())
        return f"llm:openai/fake?{opts}"

    # -- scripting ------------------------------------------------------------------------------
    def push(self, *faults: Fault) -> None:
        """Queue faults; each is consumed by one request, in order."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "messages" in r]

    # -- answering ------------------------------------------------------------------------------
    @staticmethod
    def text_of(body: Mapping[str, Any]) -> str:
        """The text being classified: the last user message, without a ``Text:`` prefix."""
        contents = []
        for m in body.get("messages", []):
            if m.get("role") != "user":
                continue
            content = m.get("content", "")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            contents.append(str(content))
        # a re-ask appends the validation error as a later user turn: the text is the last
        # user turn that carries one
        with_text = [c for c in contents if "Text:" in c]
        if with_text:
            return with_text[-1].split("Text:", 1)[1].strip()
        return contents[-1] if contents else ""

    @staticmethod
    def schema_of(body: Mapping[str, Any]) -> tuple[list[str], bool]:
        """The allowed labels and whether the answer is a list, read from the request schema
        (``response_format``, or vLLM's ``structured_outputs``: ``choice`` or ``json``)."""
        so = body.get("structured_outputs") or {}
        if "choice" in so:
            return [str(c) for c in so["choice"]], False
        rf = body.get("response_format") or {}
        schema = (
            so.get("json") or rf.get("schema") or (rf.get("json_schema") or {}).get("schema") or {}
        )
        props = schema.get("properties", {})
        if "labels" in props:
            items = props["labels"].get("items", {})
            return list(_enum(items, schema)), True
        if "label" in props:
            return list(_enum(props["label"], schema)), False
        return [], False

    def answer_for(self, text: str, choices: list[str], multi: bool) -> list[str]:
        low = text.lower()
        ans: Answer | None = None
        if self.labeler is not None:
            ans = self.labeler(text)
        else:
            for needle, value in self.rules.items():
                if needle.lower() in low:
                    ans = value
                    break
            if ans is None:
                ans = self.default
        if ans is None:
            ans = choices[:1]
        return [ans] if isinstance(ans, str) else list(ans)

    @staticmethod
    def structured_outputs_error(body: Mapping[str, Any]) -> str | None:
        """Why a vLLM (>= 0.12) server would refuse ``structured_outputs`` (None: it would
        not): more than one of ``json``, ``regex``, ``choice``; or (stricter than vLLM, which
        adds it as a second constraint) one of them beside a ``json_schema`` response format."""
        so = body.get("structured_outputs")
        if not so:
            return None
        kinds = [k for k in ("json", "regex", "choice") if so.get(k) is not None]
        rf = (body.get("response_format") or {}).get("type")
        if len(kinds) > 1 or (kinds and rf in ("json_schema", "json_object")):
            return (
                "You can only use one kind of constraints for structured outputs "
                "('json', 'regex' or 'choice')."
            )
        return None

    def _handle(self, handler: Any, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)
            fault = self._faults.popleft() if self._faults else None
        refused = self.structured_outputs_error(body)
        if refused is not None:
            handler._send(400, {"error": {"message": refused, "type": "BadRequestError"}})
            return
        if fault is not None:
            self.fault_counts[fault.kind] = self.fault_counts.get(fault.kind, 0) + 1
            if fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    headers["retry-after"] = str(fault.retry_after)
                handler._send(
                    fault.code,
                    {"error": {"message": f"scripted {fault.code}", "type": "fake"}},
                    headers,
                )
                return
            if fault.kind == "drop":
                handler.wfile.write(b'HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{"id":')
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.close()
                return
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            if fault.kind == "empty_choices":
                handler._send(200, self._envelope([], body))
                return
            if fault.kind == "raw":
                handler._send(200, self._envelope([self._choice(fault.content, None)], body))
                return
        handler._send(200, self.answer_body(body))

    def answer_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat-completion body that answers one request body (no faults)."""
        choices, multi = self.schema_of(body)
        answer = self.answer_for(self.text_of(body), choices, multi)
        bare = "choice" in (body.get("structured_outputs") or {})  # vLLM: the label alone
        if bare:
            content = answer[0]
        else:
            content = json.dumps({"labels": answer} if multi else {"label": answer[0]})
        lp = None
        if self.logprobs and body.get("logprobs"):
            lp = self._logprobs(answer, choices, multi, bare=bare)
        return self._envelope([self._choice(content, lp)], body)

    def _logprobs(
        self, answer: list[str], choices: list[str], multi: bool, *, bare: bool = False
    ) -> dict[str, Any]:
        others = [c for c in choices if c not in answer[:1]] or ["?"]
        p_rest = max(1e-6, (1.0 - self.confidence) / len(others))

        def tok(t: str, alts: list[tuple[str, float]] | None = None) -> dict[str, Any]:
            alts = alts or [(t, 1.0)]
            return {
                "token": t,
                "logprob": math.log(dict(alts).get(t, 1.0)),
                "bytes": None,
                "top_logprobs": [
                    {"token": a, "logprob": math.log(p), "bytes": None} for a, p in alts
                ],
            }

        if bare:  # a vLLM ``choice`` answer: one token, the label, among the other labels
            alts = [(answer[0], self.confidence)]
            alts += [(o, p_rest) for o in choices if o != answer[0]][:19]
            return {"content": [tok(answer[0], alts)], "refusal": None}
        content = [tok('{"labels": [' if multi else '{"label": ')]
        for i, lab in enumerate(answer):
            alts = [(f'"{lab}"', self.confidence)]
            alts += [(f'"{o}"', p_rest) for o in choices if o != lab][:19]
            if i:
                content.append(tok(", "))
            content.append(tok(f'"{lab}"', alts))
        content.append(tok("]}" if multi else "}"))
        return {"content": content, "refusal": None}

    @staticmethod
    def _choice(content: str, logprobs: Any) -> dict[str, Any]:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": logprobs,
            "finish_reason": "stop",
        }

    @staticmethod
    def _envelope(choices: list[dict[str, Any]], body: Mapping[str, Any]) -> dict[str, Any]:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": 8,
                "total_tokens": prompt_chars // 4 + 9,
            },
        }


def _enum(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    if "enum" in node:
        return list(node["enum"])
    if "const" in node:
        return [node["const"]]
    ref = node.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        return _enum(root.get("$defs", {}).get(name, {}), root)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return [v for sub in node[key] for v in _enum(sub, root)]
    return []
