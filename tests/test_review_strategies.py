"""Which answers enter the review queue: strategies, the daily budget and label quotas on
scripted scores; k-center and `suggest`; the router's ``review:`` block end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from llmclf.errors import TaskFileError
from llmclf.review_strategies import ReviewGate, entropy, k_center_greedy, margin, suggest
from llmclf.router import Router
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider
from llmclf.types import Task


def sc(p: float) -> dict[str, float]:
    """Binary scores with P(pos) = p."""
    return {"neg": round(1 - p, 6), "pos": p}


def label(p: float) -> tuple[str, ...]:
    return ("pos",) if p >= 0.5 else ("neg",)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


DAY0 = 1_800_000_000.0 - (1_800_000_000.0 % 86400) + 3600  # 01:00 UTC on some day


def test_margin_and_entropy_on_scripted_scores() -> None:
    assert margin({"a": 0.6, "b": 0.3, "c": 0.1}) == pytest.approx(0.3)
    assert margin({"a": 1.0}) == 1.0
    assert entropy({"a": 1.0, "b": 0.0}) == 0.0
    assert entropy({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}) == pytest.approx(1.0)
    assert 0.0 < entropy({"a": 0.9, "b": 0.1}) < entropy({"a": 0.6, "b": 0.4}) < 1.0


@pytest.mark.parametrize(
    ("strategy", "threshold", "picked"),
    [
        # P(pos) of the answers: 0.55, 0.62, 0.7, 0.95, 0.2
        ("threshold", 0.65, [0.55, 0.62]),
        ("margin", 0.3, [0.55, 0.62]),  # margins 0.1, 0.24, 0.4, 0.9, 0.6
        ("margin", 0.5, [0.55, 0.62, 0.7]),
        ("entropy", 0.9, [0.55, 0.62]),  # normalised entropy: .99, .96, .88, .29, .72
        ("entropy", 0.7, [0.55, 0.62, 0.7, 0.2]),
    ],
)
def test_each_strategy_picks_the_uncertain_answers(
    strategy: str, threshold: float, picked: list[float]
) -> None:
    gate = ReviewGate(strategy=strategy, threshold=threshold)  # type: ignore[arg-type]
    ps = [0.55, 0.62, 0.7, 0.95, 0.2]
    got = [p for p in ps if gate.admit(label(p), sc(p)).admitted]
    assert got == picked


def test_disagreement_picks_answers_the_shadow_labelled_otherwise() -> None:
    gate = ReviewGate(strategy="disagreement")
    assert not gate.admit(("pos",), sc(0.99), shadow_labels=["pos"]).admitted
    assert not gate.admit(("pos",), sc(0.51)).admitted  # not compared: nothing to go on
    d = gate.admit(("pos",), sc(0.99), shadow_labels=["neg"])
    assert d.admitted and d.reason == "shadow disagreement: neg"


def test_the_daily_budget_stops_admissions_and_resets_at_utc_midnight() -> None:
    clock = Clock(DAY0)
    gate = ReviewGate(strategy="threshold", threshold=0.9, budget=3, clock=clock)
    got = [gate.admit(label(0.6), sc(0.6)) for _ in range(5)]
    assert [d.admitted for d in got] == [True, True, True, False, False]
    assert got[-1].reason == "daily budget of 3 spent"
    clock.t = DAY0 + 22 * 3600  # still the same UTC day
    assert not gate.admit(label(0.6), sc(0.6)).admitted
    clock.t = DAY0 + 23 * 3600 + 1  # 00:00:01 the next day
    assert gate.admit(label(0.6), sc(0.6)).admitted
    assert gate.used_today() == 1


def test_the_budget_survives_a_restart_through_the_days_history() -> None:
    seen: list[float] = []

    def history(day: float) -> list[list[str]]:
        seen.append(day)
        return [["pos"], ["pos"]]  # two rows already queued today

    gate = ReviewGate(strategy="threshold", threshold=0.9, budget=3, history=history,
                      clock=Clock(DAY0))  # fmt: skip
    assert [gate.admit(label(0.6), sc(0.6)).admitted for _ in range(2)] == [True, False]
    assert seen == [DAY0 - 3600]


def test_quotas_get_rare_labels_reviewed_and_hold_budget_for_them() -> None:
    # the student is unsure of many "pos" answers and sure of every "neg" one
    gate = ReviewGate(strategy="threshold", threshold=0.8, budget=5,
                      min_per_label={"neg": 2}, clock=Clock(DAY0))  # fmt: skip
    stream = [0.6] * 6 + [0.05, 0.03, 0.02]
    got = [(p, gate.admit(label(p), sc(p))) for p in stream]
    admitted = [p for p, d in got if d.admitted]
    # three unsure "pos" (the budget of 5 minus 2 held for "neg"), then two sure "neg" by quota
    assert admitted == [0.6, 0.6, 0.6, 0.05, 0.03]
    reasons = [d.reason for p, d in got]
    assert reasons[3] == "budget held for labels under their quota (2)"
    assert reasons[6] == "quota: label neg under 2 today"
    assert reasons[8] == "not picked by the strategy"  # sure, and the quota is met


def test_an_int_quota_applies_to_every_label() -> None:
    gate = ReviewGate(strategy="margin", threshold=0.0, min_per_label=1, labels=["neg", "pos"])
    got = [gate.admit(label(p), sc(p)).admitted for p in (0.99, 0.98, 0.01, 0.02)]
    assert got == [True, False, True, False]


def test_k_center_greedy_spreads_its_picks() -> None:
    rng = np.random.default_rng(0)
    # three tight clusters: 20 points near 0, 5 near 10, 1 at 100
    x = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(10, 0.1, (5, 2)), [[100, 100]]])
    picks = k_center_greedy(x, 3)
    assert picks[0] == 0 and picks[1] == 25
    assert 20 <= picks[2] < 25  # one from each cluster, not three from the big one
    # with centers already labelled, the first pick is the farthest from them
    assert k_center_greedy(x, 1, centers=x[:25])[0] == 25


def test_suggest_takes_unsure_texts_that_are_unlike_each_other() -> None:
    # rows 0-3 are unsure duplicates of one text; row 4 unsure and elsewhere; row 5 sure
    scores = np.array([[0.5, 0.5], [0.52, 0.48], [0.49, 0.51], [0.5, 0.5], [0.6, 0.4], [1.0, 0]])
    emb = np.array([[0.0, 0], [0, 0.001], [0.001, 0], [0, 0], [5, 5], [9, 9]])
    assert suggest(scores, emb, 2) == [0, 4]
    assert sorted(suggest(scores, emb, 2, pool_factor=1)) == [0, 3]  # uncertainty alone
    assert 5 not in suggest(scores, emb, 5, pool_factor=1)


# -- the router's review block --------------------------------------------------------------------
def config(llm: FakeProvider, review: dict, **extra: object) -> dict:
    return {
        "backends": {"llm": {"spec": llm.spec(), "options": {"max_retries": 0, "cache": False}}},
        "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.5},
        "review": review,
        **extra,
    }


def test_router_margin_strategy_with_a_budget_fills_the_queue(task: Task, store: Store,
                                                            llm: FakeProvider) -> None:
    student = KeywordStudent(task, {"meh": 0.55, "fine": 0.7, "great": 0.97, "awful": 0.04})
    cfg = config(llm, {"strategy": "margin", "threshold": 0.5, "budget": 2})
    with Router.from_config(cfg, task=task, store=store, backends={"student": student}) as r:
        r.predict_batch(["great", "meh", "fine", "awful", "meh again"])
    rows = store.review_list(task="sst2")
    # margins: great .94, meh .1, fine .4, awful .92, meh again .1 (over the budget of 2)
    assert [row["text"] for row in rows] == ["meh", "fine"]
    assert rows[0]["prediction"]["review_reason"] == "margin 0.10<0.50"
    assert rows[0]["prediction"]["review_strategy"] == "margin"
    # a new router on the same store finds today's rows: the budget stays spent
    with Router.from_config(cfg, task=task, store=store, backends={"student": student}) as r:
        r.predict_batch(["meh once more"])
    assert store.count("review") == 2


def test_router_disagreement_strategy_queues_what_the_shadow_llm_disputes(
    task: Task, store: Store
) -> None:
    student = KeywordStudent(task, {"great": 0.97, "awful": 0.03, "meh": 0.9})
    with FakeProvider(rules={"meh": "negative", "awful": "negative"}, default="positive",
                      confidence=0.9) as llm:  # fmt: skip
        cfg = config(llm, {"strategy": "disagreement"},
                     shadow={"backend": "llm", "share": 1.0})  # fmt: skip
        with Router.from_config(cfg, task=task, store=store,
                                backends={"student": student}) as r:  # fmt: skip
            r.predict_batch(["great", "meh film", "awful"])
            deadline = time.monotonic() + 120
            while r.shadow_stats().completed < 3:  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.01)
    (row,) = store.review_list(task="sst2")
    assert row["text"] == "meh film"
    pred = row["prediction"]
    assert pred["labels"] == ["positive"] and pred["route"] == ["student"]
    assert pred["shadow"]["labels"] == ["negative"]
    assert pred["review_reason"] == "shadow disagreement: negative"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_review_config_errors_name_file_line_and_field(tmp_path: Path, llm: FakeProvider) -> None:
    head = f'task: sst2\nbackends:\n  llm: "{llm.spec()}"\nfallbacks: [llm]\n'
    cfg = tmp_path / "router.yaml"
    write(cfg, head + "review:\n  strategy: margins\n  threshold: 0.2\n")
    with pytest.raises(TaskFileError, match=r"router.yaml:6: review.strategy: "):
        Router.from_yaml(cfg)
    write(cfg, head + "review:\n  strategy: entropy\n")
    with pytest.raises(TaskFileError, match=r"router.yaml:5: review: .*needs a threshold"):
        Router.from_yaml(cfg)
    write(cfg, head + "review:\n  strategy: disagreement\n")
    with pytest.raises(TaskFileError,
                       match=r"router.yaml:6: review.strategy: .*add a shadow section"):
        Router.from_yaml(cfg)
    write(cfg, head + "review:\n  threshold: 0.5\n  budget: 0\n")
    with pytest.raises(TaskFileError, match=r"router.yaml:7: review.budget: "):
        Router.from_yaml(cfg)
    quotas = "  min_per_label:\n    negative: 3\n    postive: 2\n"
    write(cfg, head + "review:\n  threshold: 0.5\n" + quotas)
    with pytest.raises(TaskFileError,
                       match=r"router.yaml:9: review.min_per_label.postive: unknown label"):
        Router.from_yaml(cfg)
    write(cfg, head + "review:\n  threshold: 0.5\n  min_per_label: -1\n")
    with pytest.raises(TaskFileError, match=r"router.yaml:7: review.min_per_label: "):
        Router.from_yaml(cfg)
