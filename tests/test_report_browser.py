"""The HTML report, opened in a real headless Chromium driven over the DevTools protocol.

Chromium is Debian's (``apt-get install -y chromium``); it is driven through
``--remote-debugging-pipe`` (NUL-separated JSON on file descriptors 3 and 4), so no Python
package beyond the standard library is needed. The page must render its figures, log no console
error, and not run the ``<script>`` planted in a case text.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmclf.cli.main import app
from llmclf.datasets import load_eval_set
from llmclf.evaluate import evaluate
from llmclf.report import render_html
from llmclf.testing.fake_provider import FakeProvider
from tests.helpers import parse_tags

PLANTED = "<script>document.title='PWNED';window.__pwned=1;console.error('pwned')</script>"
PLANTED_IMG = "<img src=x onerror=\"document.title='PWNED-IMG'\">"
BAD_ID = "<b>bold-id</b>"

TASK = """\
name: sentiment
kind: binary
positive_label: positive
labels:
  - name: negative
    description: dislikes it
  - name: positive
    description: likes it
"""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium on a DevTools pipe: send commands, collect events."""

    def __init__(self, exe: str, workdir: Path) -> None:
        cmd_r, cmd_w = os.pipe()  # we write commands; Chromium reads them on fd 3
        res_r, res_w = os.pipe()  # Chromium writes replies on fd 4; we read them
        # move the child's ends above fd 10 so that dup2 onto 3 and 4 cannot clobber them
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(res_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(res_w)

        def wire_fds() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.log_path = workdir / "chromium.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                exe, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-extensions",
                "--remote-debugging-pipe", f"--user-data-dir={workdir / 'profile'}",
                "--window-size=1280,1600", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=wire_fds, close_fds=False,
        )  # fmt: skip
        os.close(child_r)
        os.close(child_w)
        self._w, self._r = cmd_w, res_r
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from Chromium; log: {self.log_path.read_text()}")
            # a selector, not select(): late in a long run this process's fds pass 1024
            with selectors.DefaultSelector() as sel:
                sel.register(self._r, selectors.EVENT_READ)
                ready = sel.select(left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError(f"Chromium closed the pipe; log: {self.log_path.read_text()}")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab and wait for its load event; returns the session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        res = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"]["value"]

    def console_errors(self) -> list[str]:
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in {"error", "assert"}:
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append(str(p["exceptionDetails"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self._log.close()


@pytest.fixture
def browser(tmp_path):
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    b = Chromium(exe, tmp_path)
    try:
        yield b
    finally:
        b.close()


PAGE_STATE = """JSON.stringify((() => {
  const fig = id => {
    const s = document.querySelector('#' + id + ' svg');
    if (!s) return null;
    const r = s.getBoundingClientRect();
    const n = sel => s.querySelectorAll(sel).length;
    return {w: r.width, h: r.height, rects: n('rect'), circles: n('circle'),
            polylines: n('polyline')};
  };
  return {
    title: document.title, pwned: window.__pwned || null,
    scripts: document.querySelectorAll('script').length,
    imgs: document.querySelectorAll('img').length,
    bolds: document.querySelectorAll('b').length,
    confusion: fig('confusion'), reliability: fig('reliability'), coverage: fig('coverage'),
    cells: document.querySelectorAll('#confusion g.cell').length,
    worst: document.querySelectorAll('#worst-errors tbody tr').length,
    perLabel: document.querySelectorAll('#per-label tbody tr').length,
    text: document.body.innerText,
    height: document.body.scrollHeight,
  };
})())"""


def make_run(tmp_path: Path):
    d = tmp_path / "xss"
    d.mkdir()
    (d / "task.yaml").write_text(TASK)
    rows = [
        {"id": "ok1", "text": "I loved it", "label": "positive"},
        {"id": "ok2", "text": "dreadful", "label": "negative"},
        {"id": BAD_ID, "text": f"loved the {PLANTED} villain", "label": "negative"},
        {"id": "img", "text": f"loved {PLANTED_IMG} nothing", "label": "negative"},
        {"id": "ok3", "text": "a loved classic", "label": "positive"},
        {"id": "miss", "text": "charming", "label": "positive"},
    ]
    with open(d / "cases.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with FakeProvider(rules={"loved": "positive"}, default="negative") as fake:
        return evaluate(load_eval_set(d), fake.spec(), progress=False)


def test_report_renders_in_chromium_with_figures_and_no_script_runs(tmp_path, browser):
    run = make_run(tmp_path)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", run.run_id, "--html", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;document.title=" in html and "&lt;b&gt;bold-id&lt;/b&gt;" in html
    tags, attrs = parse_tags(html)
    assert not tags & {"script", "img", "iframe", "link", "object", "b"}
    assert not attrs & {"src", "href", "onerror", "onload"}  # nothing loaded, no handlers

    session = browser.open(out.resolve().as_uri())
    state = json.loads(browser.evaluate(session, PAGE_STATE))
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))

    assert state["title"] == f"llmclf eval report: xss / {run.run_id}"
    assert state["pwned"] is None and state["scripts"] == 0 and state["imgs"] == 0
    assert state["bolds"] == 0  # the id's <b> is text, not markup
    assert PLANTED in state["text"] and PLANTED_IMG in state["text"] and BAD_ID in state["text"]
    assert browser.console_errors() == []
    for name in ("confusion", "reliability", "coverage"):
        fig = state[name]
        assert fig is not None, name
        assert fig["w"] > 100 and fig["h"] > 100, (name, fig)
    assert state["cells"] == 4  # 2 x 2 labels
    assert state["reliability"]["rects"] >= 2 and state["coverage"]["circles"] == 10
    assert state["coverage"]["polylines"] == 1
    # the 2 planted texts and "charming" are wrong: most confident errors first
    assert state["worst"] == 3 and state["perLabel"] == 2
    assert "Most confident errors" in state["text"] and "Accuracy counts abstentions" in state[
        "text"
    ]


def test_the_harness_sees_a_script_that_does_run(tmp_path, browser):
    """Control: an unescaped page does run its script and log an error, and the checks see it."""
    page = tmp_path / "unsafe.html"
    page.write_text(
        f"<!DOCTYPE html><html><head><title>t</title></head><body>{PLANTED}</body></html>"
    )
    session = browser.open(page.resolve().as_uri())
    state = json.loads(browser.evaluate(session, PAGE_STATE))
    assert state["pwned"] == 1 and state["title"] == "PWNED" and state["scripts"] == 1
    assert any("pwned" in e for e in browser.console_errors())


def test_multilabel_report_has_thresholds_and_per_label_matrix(tmp_path):
    d = tmp_path / "tags"
    d.mkdir()
    (d / "task.yaml").write_text(
        "name: tags\nkind: multilabel\nlabels:\n  joy: happy\n  anger: angry\n"
    )
    with open(d / "cases.jsonl", "w") as f:
        for i in range(12):
            labs = ["joy"] if i % 2 else ["anger"]
            f.write(json.dumps({"id": f"m{i}", "text": f"text {i} {labs[0]}", "labels": labs}))
            f.write("\n")
    with FakeProvider(labeler=lambda t: ["joy"] if "joy" in t else []) as fake:
        run = evaluate(load_eval_set(d), fake.spec(), progress=False)
    html = render_html(run)
    assert 'id="thresholds"' in html and "tuned thresholds" in html
    out = tmp_path / "sub" / "r.html"
    res = CliRunner().invoke(app, ["report", "last", "--eval-set", "tags", "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == html  # the stored run renders the same page
    assert run.run_id in html
    assert ">TP<" in html and ">TN<" in html  # the per-label confusion columns
    assert 'id="reliability"' in html and "label decision" in html
