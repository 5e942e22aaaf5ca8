"""The router: cascade, thresholds, hints, fallbacks, timeouts, shadow, review queue, A/B, config.

LLM backends are the real litellm → instructor → HTTP path against `FakeProvider` on 127.0.0.1;
the "student" is `KeywordStudent`, a real backend defined here whose confidence the tests set.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmclf.backends.base import Backend, Hints
from llmclf.classifier import Classifier
from llmclf.errors import (
    AllBackendsFailed,
    BackendTimeout,
    TaskFileError,
    UnknownBackendHint,
)
from llmclf.hooks import Event, Hooks
from llmclf.router import (
    ABSplit,
    Cascade,
    Entry,
    Fallback,
    Review,
    Router,
    RouterListener,
    Slot,
)
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Task
from tests.helpers import REPO, RULES


@pytest.fixture
def llm2() -> Iterator[FakeProvider]:
    with FakeProvider(default="negative", confidence=0.8) as fp:
        yield fp


def make_router(
    task: Task,
    store: Store,
    config: dict,
    student: Backend | None = None,
) -> Router:
    backends = {"student": student} if student is not None else None
    return Router.from_config(config, task=task, store=store, backends=backends)


def llm_entry(fake: FakeProvider, **extra: object) -> dict:
    return {"spec": fake.spec(), "options": {"max_retries": 0, "cache": False}, **extra}


def cascade_config(llm: FakeProvider, **extra: object) -> dict:
    return {
        "backends": {"llm": llm_entry(llm)},
        "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
        **extra,
    }


def texts_sent(fake: FakeProvider) -> list[str]:
    return [FakeProvider.text_of(r) for r in fake.chat_requests]


# -- cascade --------------------------------------------------------------------------------------
def test_cascade_answers_confident_texts_from_the_student_and_escalates_the_rest(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    student = KeywordStudent(task, RULES)
    with make_router(task, store, cascade_config(llm), student) as router:
        great, meh, awful = router.predict_batch(["a great film", "a meh film", "awful acting"])

    assert (great.label, great.backend, great.route) == ("positive", "student", ("student",))
    assert great.route_reason == "student confident 0.97>=0.80"
    assert (awful.label, awful.backend, awful.route) == ("negative", "student", ("student",))
    # the student said positive at 0.55; the LLM was asked and its answer won
    assert (meh.label, meh.backend, meh.route) == ("negative", "llm", ("student", "llm"))
    assert meh.route_reason == "escalated: 0.55<0.80"
    assert meh.usage.llm_calls == 1 and great.usage.llm_calls == 0
    # the student saw the whole batch once; only the unsure text reached the LLM
    assert student.batches == [["a great film", "a meh film", "awful acting"]]
    assert texts_sent(llm) == ["a meh film"]
    stats = router.stats()
    assert (stats.cascade_texts, stats.escalated) == (3, 1)
    assert stats.answered_by == {"student": 2, "llm": 1}


def test_threshold_defaults_to_the_students_calibrated_one(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    cfg = cascade_config(llm)
    del cfg["cascade"]["threshold"]
    student = KeywordStudent(task, RULES, escalation_threshold=0.65)
    with make_router(task, store, cfg, student) as router:
        assert router.thresholds == {"negative": 0.65, "positive": 0.65}
        fine, meh = router.predict_batch(["fine", "meh"])
    assert fine.route_reason == "student confident 0.70>=0.65"
    assert meh.route == ("student", "llm")


def test_per_label_thresholds(task: Task, store: Store, llm: FakeProvider) -> None:
    cfg = cascade_config(llm)
    cfg["cascade"]["threshold"] = {"positive": 0.99, "negative": 0.9}
    with make_router(task, store, cfg, KeywordStudent(task, RULES)) as router:
        great, awful = router.predict_batch(["great", "awful"])
    # positive needs 0.99: 0.97 escalates; negative needs 0.90: 0.96 does not
    assert great.route == ("student", "llm") and great.route_reason == "escalated: 0.97<0.99"
    assert awful.route == ("student",) and awful.route_reason == "student confident 0.96>=0.90"


def test_missing_threshold_is_a_config_error_naming_the_field(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    cfg = cascade_config(llm)
    del cfg["cascade"]["threshold"]
    with pytest.raises(TaskFileError) as err:
        make_router(task, store, cfg, KeywordStudent(task, RULES, escalation_threshold=None))
    assert err.value.field == "cascade.threshold"
    assert "escalation_threshold" in str(err.value)


# -- hints ----------------------------------------------------------------------------------------
def test_hint_backend_forces_one_backend(task: Task, store: Store, llm: FakeProvider) -> None:
    student = KeywordStudent(task, RULES)
    with make_router(task, store, cascade_config(llm), student) as router:
        (p,) = router.predict_batch(["a great film"], Hints(backend="llm"))
        with pytest.raises(UnknownBackendHint, match="'gpt-9' is not one of"):
            router.predict_batch(["x"], Hints(backend="gpt-9"))
    assert (p.backend, p.route, p.route_reason) == ("llm", ("llm",), "forced by hint")
    assert student.batches == []


def test_hint_min_confidence_replaces_the_threshold(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        (great,) = router.predict_batch(["great"], Hints(min_confidence=0.99))
        (meh,) = router.predict_batch(["meh"], Hints(min_confidence=0.5))
    assert great.route == ("student", "llm")
    assert great.route_reason == "escalated: 0.97<0.99 (min_confidence hint)"
    assert meh.route == ("student",)
    assert meh.route_reason == "student confident 0.55>=0.50 (min_confidence hint)"


def test_latency_budget_keeps_the_students_answer_when_the_llm_is_too_slow(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        llm.push(Fault.delay(3.0))
        (p,) = router.predict_batch(["meh"], Hints(max_latency_ms=300))
        assert p.backend == "student" and p.label == "positive"
        assert p.route_reason is not None
        assert p.route_reason.startswith("latency budget: llm did not answer within the budget")
        assert p.route_reason.endswith("answered by student (0.55<0.80)")
        # once the router has seen the LLM's latency, it does not even try within a tiny budget
        router.predict_batch(["meh, again"])  # a normal call teaches it the LLM's latency
        before = len(llm.chat_requests)
        (q,) = router.predict_batch(["meh, once more"], Hints(max_latency_ms=0.001))
        assert len(llm.chat_requests) == before
        assert q.route == ("student",)
        assert q.route_reason is not None and q.route_reason.startswith(
            "latency budget: answered by student (0.55<0.80; llm needs ~"
        )
        assert router.stats().budget_kept == 2


# -- fallbacks and timeouts -----------------------------------------------------------------------
def test_escalation_falls_back_to_the_next_backend(
    task: Task, store: Store, llm: FakeProvider, llm2: FakeProvider
) -> None:
    cfg = cascade_config(llm, fallbacks=["llm2"])
    cfg["backends"]["llm2"] = llm_entry(llm2)
    with make_router(task, store, cfg, KeywordStudent(task, RULES)) as router:
        llm.push(Fault.status(500))
        (p,) = router.predict_batch(["meh"])
    assert (p.backend, p.route) == ("llm2", ("student", "llm", "llm2"))
    assert p.route_reason is not None
    assert p.route_reason.startswith("escalated: 0.55<0.80; fallback after llm failed: ")
    assert "ProviderServerError" in p.route_reason


def test_failed_escalation_keeps_the_students_answer(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        llm.push(Fault.status(503))
        (p,) = router.predict_batch(["meh"])
    assert (p.backend, p.label, p.route) == ("student", "positive", ("student", "llm"))
    assert p.route_reason is not None
    assert p.route_reason.startswith("escalation failed (llm: ProviderServerError")
    assert p.route_reason.endswith("answered by student (0.55<0.80)")


def test_student_failure_falls_back_to_the_llm(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    student = KeywordStudent(task, RULES, fail_on="boom")
    with make_router(task, store, cascade_config(llm), student) as router:
        (p,) = router.predict_batch(["great boom"])
    assert (p.backend, p.route, p.label) == ("llm", ("student", "llm"), "positive")
    assert p.route_reason == (
        "fallback after student failed: BackendError: [keyword-student] student crashed"
    )


def test_all_backends_failing_raises_a_typed_error_naming_each(
    task: Task, store: Store, llm: FakeProvider, llm2: FakeProvider
) -> None:
    cfg = {
        "backends": {"llm": llm_entry(llm), "llm2": llm_entry(llm2)},
        "fallbacks": ["llm", "llm2"],
    }
    with make_router(task, store, cfg) as router:
        (ok,) = router.predict_batch(["fine"])
        llm.push(Fault.status(500))
        llm2.push(Fault.status(401))
        with pytest.raises(AllBackendsFailed) as err:
            router.predict_batch(["fine"])
    assert (ok.backend, ok.route, ok.route_reason) == ("llm", ("llm",), "primary backend")
    assert set(err.value.failures) == {"llm", "llm2"}
    assert "llm: ProviderServerError" in str(err.value)
    assert "llm2: AuthError" in str(err.value)
    assert router.stats().failed == 1


def test_a_backend_timeout_moves_on_to_the_next(
    task: Task, store: Store, llm: FakeProvider, llm2: FakeProvider
) -> None:
    cfg = {
        "backends": {"llm": llm_entry(llm), "llm2": llm_entry(llm2)},
        "fallbacks": ["llm", "llm2"],
        "timeouts": {"default": 60_000, "llm": 200},
    }
    with make_router(task, store, cfg) as router:
        llm.push(Fault.delay(3.0))
        (p,) = router.predict_batch(["fine"])
    assert (p.backend, p.route) == ("llm2", ("llm", "llm2"))
    assert p.route_reason == (
        "fallback after llm failed: BackendTimeout: [llm] no answer within 200 ms"
    )
    assert BackendTimeout.kind == "timeout"


# -- shadow traffic -------------------------------------------------------------------------------
def wait_for(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_shadow_traffic_tracks_agreement_and_warns_when_it_drops(
    task: Task, store: Store, llm: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cascade_config(
        llm, shadow={"backend": "llm", "share": 1.0, "window": 4, "warn_below": 0.8,
                     "min_samples": 4}
    )
    # the student is confident on all four texts and the shadow LLM agrees with each
    student = KeywordStudent(task, {"great": 0.97, "awful": 0.04, "meh": 0.05})
    with make_router(task, store, cfg, student) as router, caplog.at_level(logging.WARNING):
        preds = router.predict_batch(["great", "awful", "great story", "meh"])
        assert all(p.route == ("student",) for p in preds)
        wait_for(lambda: router.shadow_stats().completed == 4)  # type: ignore[union-attr]
        stats = router.shadow_stats()
    assert stats is not None
    # LLM: great→positive (agree), awful→negative (agree), great story→positive (agree),
    # meh→negative (agree with the student's negative): 4/4
    assert (stats.samples, stats.agreement, stats.sent, stats.dropped) == (4, 1.0, 4, 0)
    assert not stats.below_threshold
    assert "shadow agreement" not in caplog.text

    student2 = KeywordStudent(task, {"great": 0.03, "awful": 0.97})  # a drifted student
    with make_router(task, store, cfg, student2) as router, caplog.at_level(logging.WARNING):
        router.predict_batch(["great", "awful", "great story", "awful plot"])
        wait_for(lambda: router.shadow_stats().completed == 4)  # type: ignore[union-attr]
        stats = router.shadow_stats()
    assert stats is not None and stats.agreement == 0.0 and stats.below_threshold
    assert "shadow agreement with llm fell to 0.000" in caplog.text


def test_shadow_never_delays_the_answer_and_drops_when_its_queue_is_full(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    cfg = cascade_config(
        llm, shadow={"backend": "llm", "share": 1.0, "queue_size": 1, "workers": 1}
    )
    with make_router(task, store, cfg, KeywordStudent(task, RULES)) as router:
        llm.push(Fault.delay(3.0))
        (first,) = router.predict_batch(["great"])
        wait_for(lambda: len(llm.chat_requests) == 1)  # the worker is stuck in the slow LLM
        preds = router.predict_batch(["great"] * 4)
        # answered while the shadow request is still in the LLM
        stats = router.shadow_stats()
        assert stats is not None and stats.completed == 0
        assert all(p.route == ("student",) for p in [first, *preds])
        # one request in the worker, one in the queue, three dropped
        assert (stats.sent, stats.dropped) == (2, 3)


# -- review queue ---------------------------------------------------------------------------------
def test_low_confidence_answers_go_to_the_review_queue_once_per_request_id(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    llm_low = FakeProvider(rules={"meh": "negative"}, default="positive", confidence=0.6)
    with llm_low:
        cfg = cascade_config(llm_low, review={"threshold": 0.7})
        with make_router(task, store, cfg, KeywordStudent(task, RULES)) as router:
            router.predict_batch(["great", "meh film"], Hints(request_id="req-1"))
            router.predict_batch(["great", "meh film"], Hints(request_id="req-1"))  # a retry
            router.predict_batch(["meh again"])
    rows = store.review_list(task="sst2")
    assert [r["text"] for r in rows] == ["meh film", "meh again"]
    first = rows[0]
    assert first["request_id"] == "req-1#1"
    assert first["prediction"]["route"] == ["student", "llm"]
    assert first["prediction"]["scores"] == {"negative": 0.6, "positive": 0.4}
    assert first["prediction"]["task"]["labels"] == ["negative", "positive"]


# -- A/B ------------------------------------------------------------------------------------------
def test_ab_split_is_weighted_sticky_and_counted_per_arm(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    cfg = cascade_config(llm, ab={"arms": {"cascade": 3, "llm": 1}})
    with make_router(task, store, cfg, KeywordStudent(task, RULES)) as router:
        arms = [router.arm_for("great", Hints(request_key=f"user-{i}")) for i in range(400)]
        n_llm = arms.count("llm")
        assert 60 < n_llm < 140  # about a quarter
        key_llm = f"user-{arms.index('llm')}"
        key_cascade = f"user-{arms.index('cascade')}"
        for _ in range(3):  # sticky: the same key always lands on the same arm
            (a,) = router.predict_batch(["great"], Hints(request_key=key_llm))
            (b,) = router.predict_batch(["great"], Hints(request_key=key_cascade))
            assert (a.backend, a.route_reason) == ("llm", "ab arm llm: primary backend")
            assert (b.backend, b.route_reason) == (
                "student", "ab arm cascade: student confident 0.97>=0.80"
            )
        stats = router.ab_stats()
    assert stats["llm"].texts == 3 and stats["llm"].answered_by == {"llm": 3}
    assert stats["cascade"].texts == 3 and stats["cascade"].answered_by == {"student": 3}
    assert stats["cascade"].mean_latency_ms is not None


def test_listener_sees_every_backend_call_and_answer(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    class Recorder(RouterListener):
        def __init__(self) -> None:
            self.calls: list[tuple[str, int, str | None]] = []
            self.routed_: list[tuple[str, bool]] = []

        def backend_call(self, router, backend, texts, seconds, error):  # type: ignore[no-untyped-def]
            self.calls.append((backend, texts, type(error).__name__ if error else None))

        def routed(self, router, prediction, *, arm, escalated):  # type: ignore[no-untyped-def]
            self.routed_.append((prediction.backend, escalated))

    rec = Recorder()
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        router.add_listener(rec)
        llm.push(Fault.status(500))
        router.predict_batch(["great", "meh"])
    assert rec.calls == [("student", 2, None), ("llm", 1, "ProviderServerError")]
    assert rec.routed_ == [("student", False), ("student", True)]


# -- config files ---------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_from_yaml_resolves_paths_and_serves_through_classifier(
    tmp_path: Path, task: Task, llm: FakeProvider
) -> None:
    with FakeProvider(default="positive", confidence=0.95) as student_llm:
        (tmp_path / "tasks").mkdir()
        write(tmp_path / "tasks" / "s.yaml", (REPO / "eval_sets/sst2/task.yaml").read_text())
        cfg = write(
            tmp_path / "router.yaml",
            f"""
task: tasks/s.yaml
backends:
  student: {{spec: "{student_llm.spec()}", options: {{max_retries: 0}}}}
  llm: "{llm.spec()}"
cascade: {{student: student, escalate_to: llm, threshold: 0.9}}
""",
        )
        with Classifier(task, backend=f"router:{cfg}") as clf:
            p = clf.predict("anything")
            assert isinstance(clf.backend, Router)
    assert (p.label, p.backend, p.route_reason) == ("positive", "student",
                                                    "student confident 0.95>=0.90")


def test_config_errors_name_file_line_and_field(tmp_path: Path, llm: FakeProvider) -> None:
    cfg = write(
        tmp_path / "router.yaml",
        f"""task: sst2
backends:
  llm: "{llm.spec()}"
cascade:
  student: llm
  escalate_to: gpt
  threshold: 0.8
""",
    )
    with pytest.raises(TaskFileError) as err:
        Router.from_yaml(cfg)
    assert str(err.value).startswith(f"{cfg}:6: cascade.escalate_to: unknown backend 'gpt'")

    write(cfg, "task: sst2\nbackends:\n  llm: nope:thing\nfallbacks: [llm]\n")
    with pytest.raises(TaskFileError, match=r"router.yaml:3: backends.llm.spec: .*unknown backend"):
        Router.from_yaml(cfg)

    write(cfg, f'task: sst2\nbackends:\n  llm: "{llm.spec()}"\nfallbacks: [llm]\nshadow: 3\n')
    with pytest.raises(TaskFileError, match=r"router.yaml:5: shadow"):
        Router.from_yaml(cfg)

    write(cfg, f'task: no-such-set\nbackends:\n  llm: "{llm.spec()}"\nfallbacks: [llm]\n')
    with pytest.raises(TaskFileError, match=r"router.yaml:1: task: task 'no-such-set' not found"):
        Router.from_yaml(cfg)

    write(cfg, f'task: sst2\nbackends:\n  llm: "{llm.spec()}"\nextra: 1\nfallbacks: [llm]\n')
    with pytest.raises(TaskFileError, match=r"router.yaml:4: extra: unknown field"):
        Router.from_yaml(cfg)

    with pytest.raises(TaskFileError, match="router config not found"):
        Router.from_yaml(tmp_path / "missing.yaml")


def test_a_task_that_differs_from_the_routers_is_refused(
    tmp_path: Path, llm: FakeProvider
) -> None:
    other = Task(name="topics", kind="multiclass", labels={"a": "", "b": "", "c": ""})
    cfg = write(
        tmp_path / "r.yaml", f'task: sst2\nbackends:\n  llm: "{llm.spec()}"\nfallbacks: [llm]\n'
    )
    with pytest.raises(TaskFileError, match="the router serves task 'sst2'"):
        Router.from_yaml(cfg, task=other)


def test_async_path_matches_the_sync_path(task: Task, store: Store, llm: FakeProvider) -> None:
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        sync = router.predict_batch(["great", "meh", "awful"])
        asy = asyncio.run(router.apredict_batch(["great", "meh", "awful"]))
    assert [(p.label, p.route, p.route_reason) for p in sync] == [
        (p.label, p.route, p.route_reason) for p in asy
    ]


# -- the tree: policies, deadline, events, construction -------------------------------------------
def test_the_router_is_a_tree_of_policies_that_warm_up_and_close_walks(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    cfg = cascade_config(llm, ab={"arms": {"cascade": 3, "llm": 1}}, review={"threshold": 0.5})
    student = KeywordStudent(task, RULES)
    with make_router(task, store, cfg, student) as router:
        tree = list(router.walk())
        kinds = [type(b) for b in tree]
        assert kinds[:3] == [Router, Review, Entry]
        assert {ABSplit, Cascade, Fallback, Slot} <= set(kinds)
        # every named backend is one slot, shared by the policies that use it
        assert sum(isinstance(b, Slot) for b in tree) == 2
        assert student in tree and router.backends["student"] is student
        # a policy is a backend of its own: the cascade answers without the router around it
        cascade = next(b for b in tree if isinstance(b, Cascade))
        (p,) = cascade.predict_batch(["a great film"])
    assert (p.backend, p.route, p.route_reason) == (
        "student", ("student",), "student confident 0.97>=0.80"
    )


def test_a_nested_router_respects_the_outer_latency_budget(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    """The outer router hands its deadline down: the inner one keeps its student's answer
    instead of waiting for its slow LLM (without the deadline it would wait 3 s)."""
    inner = make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES))
    outer_cfg = {"backends": {"llm": llm_entry(llm)}, "fallbacks": ["inner", "llm"]}
    with Router.from_config(outer_cfg, task=task, store=store, backends={"inner": inner}) as outer:
        llm.push(Fault.delay(3.0))
        t0 = time.perf_counter()
        (p,) = outer.predict_batch(["meh"], Hints(max_latency_ms=300))
        elapsed = time.perf_counter() - t0
        inner_stats = inner.stats()
    assert elapsed < 2.0
    assert (p.backend, p.route, p.label) == ("inner", ("inner",), "positive")  # the student's
    assert inner_stats.budget_kept == 1 and inner_stats.escalated == 1


def test_the_deadline_travels_in_the_hints() -> None:
    h = Hints(max_latency_ms=250, request_key="k", backend="llm").with_deadline(start=100.0)
    assert h.deadline == pytest.approx(100.25)
    # an earlier deadline from an outer router wins; a later one does not
    assert Hints(max_latency_ms=250, deadline=100.1).with_deadline(100.0).deadline == 100.1
    assert Hints(max_latency_ms=50, deadline=100.1).with_deadline(100.0).deadline == 100.05
    # a nested router gets the key, the id and the deadline, not the outer backend's name
    assert h.for_nested() == Hints(request_key="k", deadline=h.deadline)
    assert Hints(min_confidence=0.9).for_nested() is None
    assert Hints().with_deadline(5.0).deadline is None


def test_a_typoed_event_is_impossible() -> None:
    hooks = Hooks()
    with pytest.raises(AttributeError):
        Event.ROUTD  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(TypeError, match="not an llmclf Event"):
        hooks.on("routed", print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an llmclf Event"):
        hooks.emit("routed")  # type: ignore[arg-type]


def test_stats_and_listeners_are_handlers_of_typed_events(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    seen: list[tuple[str, bool, bool]] = []
    with make_router(task, store, cascade_config(llm), KeywordStudent(task, RULES)) as router:
        router.hooks.on(
            Event.ROUTED,
            lambda p, *, arm, escalated, cascade: seen.append((p.backend, escalated, cascade)),
        )
        router.predict_batch(["great", "meh"])
        stats = router.stats()
    assert seen == [("student", False, True), ("llm", True, True)]
    assert (stats.texts, stats.cascade_texts, stats.escalated) == (2, 2, 1)


def test_config_building_takes_make_backend_by_injection(
    task: Task, store: Store, llm: FakeProvider
) -> None:
    built: list[str] = []

    def make(spec: str, task_: Task | None, *, store: Store | None = None, **options: object):  # type: ignore[no-untyped-def]
        built.append(spec)
        return KeywordStudent(task, RULES)

    cfg = {"backends": {"a": "llm:openai/never-called", "b": "setfit:nowhere"},
           "fallbacks": ["a", "b"]}  # fmt: skip
    with Router.from_config(cfg, task=task, store=store, make_backend=make) as router:
        (p,) = router.predict_batch(["great"])
    assert built == ["llm:openai/never-called", "setfit:nowhere"]
    assert (p.backend, p.label) == ("a", "positive")


def test_no_import_cycle_between_the_registry_and_the_router() -> None:
    # the registry, in a fresh interpreter, does not bring the router in ...
    code = (
        "import sys, llmclf.backends.registry as r; "
        "assert 'llmclf.router' not in sys.modules, sorted(sys.modules); "
        "print(','.join(r.registered_kinds()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "llm,setfit,router"  # router: registered by the package root
    # ... and no module of the backends layer names it, not even in a function body
    for path in (REPO / "llmclf" / "backends").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("llmclf.router"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("llmclf.router") for a in node.names), path
