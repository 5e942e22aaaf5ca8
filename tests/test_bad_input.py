"""Bad input: property-based tests of the task, prompt, eval-set, router-config and text loaders;
schemathesis against the service's OpenAPI spec; Unicode, very long texts, control characters,
empty batches and 10k-text batches.

``tests/test_task.py`` and ``tests/test_datasets.py`` already fuzz raw task text and case rows;
here the fuzzing is structure-aware (it reaches the deeper validators) and covers the loaders
they do not. Every loader either returns a valid object or raises a typed llmclf error that
names the file; the service never answers 5xx to any request its spec allows or forbids.

``pytest -s`` prints how many bad inputs were tried and how many 5xx answers were seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import unsupported_method

from llmclf import Classifier
from llmclf.datasets import load_eval_set
from llmclf.errors import InputTextError, LLMClfError, TaskFileError
from llmclf.evaluate import evaluate
from llmclf.prompts import PromptTemplate
from llmclf.report import render_html
from llmclf.router import Router
from llmclf.service import ServiceSettings, create_app
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider
from llmclf.types import Example, Task
from llmclf.unlabeled import iter_texts
from tests.helpers import REPO, RULES, Server, error_of

SST2 = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
TRIED: Counter[str] = Counter()  # bad inputs tried, by loader / endpoint
STATUS: Counter[int] = Counter()  # statuses the service answered to schemathesis
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    fives = sum(n for code, n in STATUS.items() if code >= 500)
    print(f"\nbad inputs tried: {sum(TRIED.values())} {dict(TRIED)}; "
          f"service statuses {dict(sorted(STATUS.items()))}; 5xx: {fives}")  # fmt: skip


# -- loaders: structure-aware fuzzing -------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2), st.just(float("nan")),
    st.text(max_size=12),
    st.sampled_from(["binary", "multiclass", "multilabel", "positive", "negative", "a", "b",
                     "abstain", "zero_shot", "few_shot", "nope.v9", " a", "a\n"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)
label_lists = st.one_of(
    st.lists(st.one_of(st.sampled_from(["a", "b", "c", "positive", "negative"]), values),
             max_size=5),
    st.lists(st.fixed_dictionaries({"name": values}, optional={"description": values,
                                                                "examples": values}), max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "c", "positive", "negative"]), values, max_size=4),
    values,
)  # fmt: skip
task_docs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["t", "my-task", "bad name", ""]), values),
        "kind": st.one_of(st.sampled_from(["binary", "multiclass", "multilabel"]), values),
        "labels": label_lists,
        "positive_label": st.one_of(st.sampled_from(["a", "positive"]), values),
        "threshold": st.one_of(st.floats(-1, 2), values),
        "allow_abstain": values,
        "examples": st.lists(
            st.fixed_dictionaries({}, optional={"text": values, "label": values,
                                                "labels": values}), max_size=3),
        "prompt": values,
        "max_text_chars": st.one_of(st.integers(-3, 100), values),
        "description": values,
        "extra_field": values,
    },
)  # fmt: skip


@FUZZ
@given(doc=task_docs)
def test_task_loader_on_structured_garbage(doc: dict[str, Any]) -> None:
    TRIED["task.yaml"] += 1
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        task = Task.from_yaml_text(text, path="fuzz/task.yaml")
    except TaskFileError as exc:
        assert str(exc).startswith("fuzz/task.yaml"), exc
        return
    assert len(task.labels) >= 2 and len(set(task.label_names)) == len(task.labels)
    if task.kind == "binary":
        assert task.positive_label in task.label_names


fragments = st.sampled_from([
    "{{ text }}", "{{ labels }}", "{{ label_names | join(', ') }}", "{{ task.name }}",
    "{% for l in labels %}{{ l.name }}: {{ l.description }}\n{% endfor %}", "{{ nope }}",
    "{% if multilabel %}", "{% endif %}", "{% for %}", "{{ ''.__class__.__mro__ }}",
    "{{ example.text }}", "{{ example.answer }}", "{{ examples | length }}", "{#", "}}", "{{",
    "{{ task.nope.deeper }}", "{% raw %}{{ x }}{% endraw %}", "Text: ", "\n", "label",
])  # fmt: skip
templates = st.lists(st.one_of(fragments, st.text(max_size=8)), max_size=6).map("".join)
prompt_docs = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "version": st.one_of(st.just(1), values)},
    optional={
        "system": st.one_of(templates, values),
        "user": st.one_of(templates, values),
        "example_user": templates,
        "example_assistant": templates,
        "few_shot": st.one_of(st.booleans(), values),
        "params": values,
        "description": values,
        "colour": values,
    },
)


@FUZZ
@given(doc=prompt_docs, text=st.text(min_size=1, max_size=30))
def test_prompt_loader_and_renderer_on_garbage(
    tmp_path: Path, doc: dict[str, Any], text: str
) -> None:
    TRIED["prompt"] += 1
    path = tmp_path / "fuzz.v1.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        tpl = PromptTemplate.from_file(path)
        shots = [Example(text="an example", label="positive")]
        messages = tpl.render(SST2, text, shots)
    except TaskFileError as exc:
        assert str(path) in str(exc), exc
        return
    assert messages and messages[-1]["role"] == "user"
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)


case_lines = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=20), values)},
        optional={"id": values, "label": st.one_of(st.sampled_from(["positive", "negative"]),
                                                   values), "labels": values})),
    st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s),
)  # fmt: skip


@FUZZ
@given(
    task=st.one_of(st.just(None), task_docs),
    lines=st.lists(case_lines, max_size=5),
    cases_name=st.sampled_from(["cases.jsonl", "cases.csv", "cases.parquet", "other.txt"]),
)
def test_eval_set_loader_on_garbage(
    tmp_path: Path, task: dict[str, Any] | None, lines: list[str], cases_name: str
) -> None:
    TRIED["eval set"] += 1
    d = tmp_path / "set"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    task_text = (REPO / "eval_sets/sst2/task.yaml").read_text() if task is None else (
        yaml.safe_dump(task, allow_unicode=True))  # fmt: skip
    (d / "task.yaml").write_text(task_text, encoding="utf-8")
    (d / cases_name).write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        es = load_eval_set(d)
    except TaskFileError as exc:
        assert str(d) in str(exc), exc
        return
    assert es.cases and all(c.text.strip() for c in es.cases)
    assert all(set(c.labels) <= set(es.task.label_names) for c in es.cases)


router_docs = st.fixed_dictionaries(
    {},
    optional={
        "task": st.one_of(st.sampled_from(["sst2", "nope", "../x.yaml"]), values),
        "backends": st.one_of(
            st.dictionaries(st.sampled_from(["a", "b", "bad name", "cascade"]), st.one_of(
                st.sampled_from(["llm:openai/x?api_base=http://127.0.0.1:9/v1", "llm:", "gpt4",
                                 "setfit:/nonexistent", "foo:bar", "llm:openai/x?temp=1"]),
                st.fixed_dictionaries({"spec": values}, optional={"timeout_ms": values,
                                                                  "concurrency": values}),
                values), max_size=3),
            values),
        "cascade": st.one_of(st.fixed_dictionaries(
            {"student": st.sampled_from(["a", "b", "c"]),
             "escalate_to": st.sampled_from(["a", "b", "c"])},
            optional={"threshold": values}), values),
        "fallbacks": st.one_of(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), values),
        "timeouts": values,
        "review": st.one_of(st.fixed_dictionaries({"threshold": values}), values),
        "shadow": values,
        "ab": st.one_of(st.fixed_dictionaries({"arms": values}), values),
    },
)  # fmt: skip


@FUZZ
@given(doc=router_docs)
def test_router_config_loader_on_garbage(tmp_path: Path, doc: dict[str, Any]) -> None:
    TRIED["router.yaml"] += 1
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        router = Router.from_yaml(path, store=Store(":memory:"))
    except LLMClfError as exc:  # a config error names the file; a missing model is typed too
        if isinstance(exc, TaskFileError):
            assert str(path) in str(exc), exc
        return
    router.close()


@FUZZ
@given(data=st.binary(max_size=120), suffix=st.sampled_from([".jsonl", ".csv", ".txt", ".tsv"]))
def test_unlabeled_text_loader_on_garbage(tmp_path: Path, data: bytes, suffix: str) -> None:
    TRIED["unlabeled texts"] += 1
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    try:
        items = list(iter_texts(str(path)))
    except LLMClfError as exc:
        assert str(path) in str(exc), exc
        return
    assert all(isinstance(i.text, str) for i in items)


# -- the service's OpenAPI spec, fuzzed -----------------------------------------------------------
def _service_app(tmp: Path) -> Any:
    fake = FakeProvider(rules={"awful": "negative"}, default="positive").start()
    router = Router.from_config(
        {"backends": {"llm": {"spec": fake.spec(max_retries=0)}},
         "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
         "review": {"threshold": 0.6}},
        task=SST2, store=Store(tmp / "schemathesis.db"),
        backends={"student": KeywordStudent(SST2, RULES)},
    )  # fmt: skip
    settings_ = ServiceSettings(api_keys=frozenset({"k1"}), max_batch_size=16,
                                max_body_bytes=20_000)  # fmt: skip
    return create_app(router, settings_, close_backends=False)  # the ASGI test client runs
    # the lifespan around each call


schema = schemathesis.openapi.from_asgi("/openapi.json", _service_app(Path(tempfile.mkdtemp())))


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_service_spec_fuzzed_no_5xx_and_every_error_is_a_clear_4xx(case: Any) -> None:
    TRIED[f"{case.method} {case.path}"] += 1
    for headers in ({"X-API-Key": "k1"}, {}):
        resp = case.call(headers=headers)
        STATUS[resp.status_code] += 1
        assert resp.status_code < 500, (resp.status_code, resp.text)
        # the documented statuses, content types and response schemas hold; schema-valid data
        # may still be refused with a 4xx (blank text, unknown backend hint: the schema cannot say)
        excluded = [schemathesis.checks.positive_data_acceptance]
        if not headers and case.path.startswith("/v1/"):
            # without a key every /v1/ request is a 401, whatever its method: auth comes first
            assert resp.status_code == 401, resp.text
            excluded.append(unsupported_method)
        case.validate_response(resp, excluded_checks=excluded)
        if resp.status_code >= 400:
            err = error_of(resp)  # type: ignore[arg-type]
            assert err["type"] and len(err["message"]) > 5 and "Traceback" not in err["message"]


# -- Unicode, control characters, very long texts -------------------------------------------------
WEIRD = [
    "Ünïcödé déjà vu — naïve café",
    "日本語のレビュー：素晴らしい映画でした",
    "مراجعة فيلم رائعة جدا",  # right to left
    "emoji 🎬🍿👍🏽 and a family 👨‍👩‍👧‍👦 and a flag 🇫🇷",
    "combining a\u0301 e\u0308 and zero\u200bwidth\u200dj\ufeffoined",
    "control \x00 nul \x07 bell \x1b[31m ansi red \x1b[0m \x7f del",
    "line\r\nbreaks\u2028and\u2029separators\ttabs\x0bvt\x0cff",
    "\u202eevil right-to-left override\u202c",
    "quotes \" ' ` and backslashes \\ \\n \\u0000 and {braces} and <tags>",
    "x" * 5000,
]


def test_weird_texts_classify_and_reach_the_model_verbatim(fake: FakeProvider) -> None:
    clf = Classifier(SST2, backend=fake.spec())
    preds = clf.predict_many(WEIRD)
    TRIED["weird texts"] += len(WEIRD)
    assert [p.label for p in preds] == ["negative"] * len(WEIRD)
    sent = sorted(FakeProvider.text_of(r) for r in fake.chat_requests)
    assert sent == sorted(t.strip() for t in WEIRD)


def test_lone_surrogates_and_overlong_texts_are_refused_before_any_call(
    fake: FakeProvider,
) -> None:
    clf = Classifier(SST2, backend=fake.spec(max_retries=0))
    with pytest.raises(InputTextError, match=r"input #1: text is not valid Unicode"):
        clf.predict_many(["fine", "broken \ud83c emoji"])
    limit = SST2.max_text_chars
    assert clf.predict("y" * limit).label == "negative"  # at the limit: fine
    with pytest.raises(InputTextError, match=rf"over the limit of {limit}"):
        clf.predict("y" * (limit + 1))
    with pytest.raises(InputTextError, match="text is empty"):
        clf.predict(" \t\n\u3000 ")  # whitespace only, ideographic space included
    TRIED["refused texts"] += 4
    assert len(fake.chat_requests) == 1


def test_weird_texts_through_the_service_and_the_review_queue(tmp_path: Path) -> None:
    store = Store(tmp_path / "weird.db")
    with FakeProvider(default="positive", confidence=0.7) as llm:
        router = Router.from_config(
            {"backends": {"llm": llm.spec()},
             "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
             "review": {"threshold": 1.0}},
            task=SST2, store=store, backends={"student": KeywordStudent(SST2, RULES)},
        )  # fmt: skip
        with Server(create_app(router)) as srv, srv.client() as c:
            resp = c.post("/v1/classify", json={"texts": WEIRD, "hints": {"request_id": "w"}})
            surrogate = c.post(
                "/v1/classify", content=b'{"texts": ["ok", "bad \\udc00"]}',
                headers={"content-type": "application/json"},
            )  # fmt: skip
            long_ = c.post("/v1/classify", json={"text": "z" * (SST2.max_text_chars + 1)})
    TRIED["service texts"] += len(WEIRD) + 2
    assert resp.status_code == 200, resp.text
    assert [p["label"] for p in resp.json()["predictions"]] == ["positive"] * len(WEIRD)
    assert surrogate.status_code == 422 and "input #1" in error_of(surrogate)["message"]
    assert long_.status_code == 422 and error_of(long_)["type"] == "bad_input"
    # every text is stored byte for byte (NUL, RTL override, emoji sequences...)
    rows = store.review_list(task="sst2", limit=100)
    assert {r["request_id"]: r["text"] for r in rows} == {
        f"w#{i}": t for i, t in enumerate(WEIRD)
    }
    assert store.integrity_check() == "ok"


def test_weird_texts_in_an_eval_set_round_trip_to_the_report(tmp_path: Path) -> None:
    d = tmp_path / "weird"
    d.mkdir()
    (d / "task.yaml").write_text((REPO / "eval_sets/sst2/task.yaml").read_text())
    with open(d / "cases.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(WEIRD):
            gold = "negative" if i % 2 else "positive"  # the odd ones are errors: shown
            f.write(json.dumps({"id": f"w{i}", "text": t, "label": gold}) + "\n")
    es = load_eval_set(d)
    assert [c.text for c in es.cases] == WEIRD
    with FakeProvider(default="positive") as fp:
        run = evaluate(es, fp.spec(), progress=False)
    assert run.metrics["accuracy"] == 0.5
    stored = Store(Path(os.environ["LLMCLF_HOME"]) / "llmclf.db").run_cases(run.run_id)
    assert [c["prediction"]["text"] for c in stored] == WEIRD
    html = render_html(run)
    assert "<script" not in html and "<tags>" not in html
    assert "\u202e" in html and "👨\u200d👩" in html  # WEIRD[7] and WEIRD[3]: shown as errors
    (d / "cases.jsonl").write_text('{"id": "s", "text": "cut \\ud83c", "label": "positive"}\n')
    with pytest.raises(TaskFileError, match=r"cases.jsonl:1: text: text is not valid Unicode"):
        load_eval_set(d)
    TRIED["eval-set texts"] += len(WEIRD) + 1


# -- empty and 10k-text batches -------------------------------------------------------------------
def test_empty_batches_are_empty_answers(fake: FakeProvider, tmp_path: Path) -> None:
    clf = Classifier(SST2, backend=fake.spec())
    assert clf.predict_many([]) == []
    assert asyncio.run(clf.apredict_many([])) == []
    assert clf.backend.predict_batch([]) == []
    router = Router.from_config(
        {"backends": {"llm": fake.spec()},
         "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8}},
        task=SST2, store=Store(tmp_path / "e.db"),
        backends={"student": KeywordStudent(SST2, RULES)},
    )  # fmt: skip
    with router:
        assert router.predict_batch([]) == []
        assert Classifier(SST2, backend=router).predict_many([]) == []
    res = subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", "classify", "-t", "sst2", "-b", fake.spec()],
        input="", env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout == "", res.stderr
    assert fake.chat_requests == []
    TRIED["empty batches"] += 6


def test_a_10k_text_request_to_the_service(tmp_path: Path) -> None:
    student = KeywordStudent(SST2, RULES)
    with FakeProvider(default="negative") as llm:
        router = Router.from_config(
            {"backends": {"llm": llm.spec()},
             "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8}},
            task=SST2, store=Store(tmp_path / "10k.db"), backends={"student": student},
        )  # fmt: skip
        texts = [f"{i}: " + ("great" if i % 2 else "awful") for i in range(10_000)]
        big = ServiceSettings(max_batch_size=10_000, max_body_bytes=2_000_000, microbatch_max=512)
        with Server(create_app(router, big)) as srv, httpx.Client(base_url=srv.url,
                                                                  timeout=300) as c:
            resp = c.post("/v1/classify", json={"texts": texts})
            refused = c.post("/v1/classify", json={"texts": [*texts, "one more"]})
        with Server(create_app(router)) as srv, srv.client() as c:
            default = c.post("/v1/classify", json={"texts": texts[:300]})
    TRIED["10k batch"] += 3
    assert resp.status_code == 200, resp.text[:500]
    preds = resp.json()["predictions"]
    assert len(preds) == 10_000
    assert [p["label"] for p in preds] == [
        "positive" if i % 2 else "negative" for i in range(10_000)
    ]
    assert sum(len(b) for b in student.batches) == 10_000
    assert refused.status_code == 413 and error_of(refused)["type"] == "batch_too_large"
    assert default.status_code == 413  # the default limit is 256 texts
    assert llm.chat_requests == []  # every text was confident: the LLM was never asked


def test_10k_texts_through_the_llm_path_and_the_cli(tmp_path: Path) -> None:
    texts = [f"review {i % 40} " + ("good" if i % 3 == 0 else "bad") for i in range(10_000)]
    with FakeProvider(rules={"good": "positive"}, default="negative") as fp:
        preds = Classifier(SST2, backend=fp.spec(concurrency=8)).predict_many(texts)
        assert [p.label for p in preds] == [
            "positive" if i % 3 == 0 else "negative" for i in range(10_000)
        ]
        assert len(fp.chat_requests) <= 200  # 40 distinct texts; the rest from the cache
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                               for i, t in enumerate(texts)))  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-m", "llmclf.cli.main", "classify", "-t", "sst2", "-b", fp.spec(),
             "-i", str(src), "--batch-size", "500"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["id"] for o in out] == [str(i) for i in range(10_000)]  # in input order
    assert [o["label"] for o in out] == [p.label for p in preds]
    TRIED["10k batch"] += 2


def test_every_fuzzed_character_class_survives_the_json_path(fake: FakeProvider) -> None:
    """One text per Unicode category (controls, format chars, private use...)."""
    import unicodedata

    by_cat: dict[str, str] = {}
    for cp in range(0x110000):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat != "Cs" and cat not in by_cat and ch not in string.whitespace:
            by_cat[cat] = ch
    texts = [f"cat {cat}: {ch}{ch}{ch} end" for cat, ch in sorted(by_cat.items())]
    preds = Classifier(SST2, backend=fake.spec()).predict_many(texts)
    assert all(p.label == "negative" for p in preds)
    assert sorted(FakeProvider.text_of(r) for r in fake.chat_requests) == sorted(texts)
    TRIED["unicode categories"] += len(texts)


def test_request_bodies_that_are_not_what_they_claim(tmp_path: Path) -> None:
    app = create_app(
        Router.from_config(
            {"backends": {"llm": "llm:openai/x?api_base=http://127.0.0.1:9/v1"},
             "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.1}},
            task=SST2, store=Store(tmp_path / "b.db"),
            backends={"student": KeywordStudent(SST2, RULES)},
        ),
        ServiceSettings(max_body_bytes=10_000),
    )  # fmt: skip
    js = {"content-type": "application/json"}
    bodies: list[tuple[bytes, dict[str, str]]] = [
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
        (b'{"text": "a"}', {"content-type": "text/plain"}),
        (b'{"text": "a"}', {"content-type": "application/json", "content-length": "abc"}),
        (b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}),
        (b'{"text": "a", "text": "b"}', {"content-type": "application/json"}),
        (b'{"text": null}', {"content-type": "application/json"}),
        (b'{"texts": [null]}', {"content-type": "application/json"}),
        (b'{"text": "a", "hints": {"max_latency_ms": 1e400}}', js),
        (b'{"text": "a", "hints": {"max_latency_ms": NaN}}', js),
        (b"", {"content-type": "application/json"}),
    ]
    with Server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for body, headers in bodies:
            try:
                resp = c.post("/v1/classify", content=body, headers=headers)
            except httpx.HTTPError:  # the client itself refused to send it
                continue
            STATUS[resp.status_code] += 1
            TRIED["raw bodies"] += 1
            assert resp.status_code < 500, (body[:40], resp.status_code, resp.text)
            if resp.status_code >= 400:
                error_of(resp)
