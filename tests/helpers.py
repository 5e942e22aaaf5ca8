"""Helpers shared by test modules (fixtures live in conftest.py).

Servers on loopback, waiting for them, reading error bodies and Prometheus samples, parsing HTML
as a browser's parser would, and a small sentiment eval set written to disk.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from llmclf.testing.fake_provider import FakeProvider

REPO = Path(__file__).resolve().parents[1]

#: `KeywordStudent` rules of the router and service tests: P(positive) by word.
RULES = {"great": 0.97, "awful": 0.04, "meh": 0.55, "fine": 0.7}


def local_model_available() -> bool:
    """True when the embedded Gemma server can run here (and LLMCLF_SKIP_MODEL_TESTS is unset)."""
    from llmclf.backends.local_server import llama_server_available

    return llama_server_available() and not os.environ.get("LLMCLF_SKIP_MODEL_TESTS")


# -- servers on loopback ---------------------------------------------------------------------------
class Server:
    """A uvicorn server for ``app`` on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1]}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come up")


# -- reading answers -------------------------------------------------------------------------------
def error_of(resp: httpx.Response) -> dict[str, str]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    return body["error"]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels matched as a subset)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^([^{ ]+)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if m.group(1) == name and all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"no sample {name} {labels}")


def parse_tags(html: str) -> tuple[set[str], set[str]]:
    """The tag names and attribute names of a page, as a parser (not a regex) sees them."""
    tags: set[str] = set()
    attrs: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, at: list[tuple[str, str | None]]) -> None:
            tags.add(tag)
            attrs.update(name for name, _ in at)

    Collect().feed(html)
    return tags, attrs


# -- a small eval set on disk ----------------------------------------------------------------------
SENTIMENT_TASK = """\
name: sentiment
kind: binary
positive_label: positive
labels:
  - name: negative
    description: the writer dislikes it
  - name: positive
    description: the writer likes it
"""

CASES = [
    ("c01", "I loved it", "positive"),
    ("c02", "good fun all round", "positive"),
    ("c03", "awful and dull", "negative"),
    ("c04", "good grief, what a mess", "negative"),
    ("c05", "a quiet delight", "positive"),
    ("c06", "boring", "negative"),
    ("c07", "loved the cast", "positive"),
    ("c08", "not good at all", "negative"),
]


def make_eval_set(root: Path, name: str = "mini", cases=CASES, pool=None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.yaml").write_text(SENTIMENT_TASK)
    with open(d / "cases.jsonl", "w") as f:
        for cid, text, label in cases:
            f.write(json.dumps({"id": cid, "text": text, "label": label}) + "\n")
    if pool:
        with open(d / "pool.jsonl", "w") as f:
            for text, label in pool:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return d


def texts_asked(fake: FakeProvider, start: int = 0) -> list[str]:
    return [FakeProvider.text_of(r) for r in fake.chat_requests[start:]]
