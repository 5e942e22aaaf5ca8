"""`llmclf.metrics`: every number checked against values computed by hand on small inputs."""

from __future__ import annotations

import hashlib
import json

import pytest

from llmclf.errors import ConfigError
from llmclf.evaluate import get_metric, regression_check
from llmclf.metrics import compute_metrics, coverage_curve
from llmclf.types import Prediction, Task, Usage


def pred(labels, scores, *, abstained=False, latency=0.0, cached=False, usage=None):
    return Prediction(
        labels=tuple(labels),
        scores=scores,
        score_source="logprobs",
        backend="llm:test",
        abstained=abstained,
        latency_ms=latency,
        cached=cached,
        usage=usage or Usage(),
    )


@pytest.fixture
def binary_task() -> Task:
    return Task(
        name="b", kind="binary", positive_label="pos", labels={"neg": "no", "pos": "yes"}
    )  # type: ignore[arg-type]


def binary_case():
    golds = [("pos",), ("pos",), ("neg",), ("neg",), ("pos",)]
    u = Usage(prompt_tokens=100, completion_tokens=5, llm_calls=1, cost_usd=0.001)
    preds = [
        pred(["pos"], {"neg": 0.1, "pos": 0.9}, latency=10, usage=u),
        pred(["neg"], {"neg": 0.6, "pos": 0.4}, latency=20, usage=u),
        pred(["neg"], {"neg": 0.8, "pos": 0.2}, latency=30, usage=u),
        pred(["pos"], {"neg": 0.3, "pos": 0.7}, latency=40, usage=u),
        pred(["pos"], {"neg": 0.4, "pos": 0.6}, latency=0.5, cached=True),
    ]
    return golds, preds


def test_binary_metrics_match_hand_computed_values(binary_task):
    golds, preds = binary_case()
    m = compute_metrics(binary_task, golds, preds)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    # pos: TP 2, FP 1, FN 1 ; neg: TP 1, FP 1, FN 1
    assert m["per_label"]["pos"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3, "predicted": 3}
    )
    assert m["per_label"]["neg"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    )
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["micro_f1"] == pytest.approx(0.6)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.5) / 5)
    assert m["confusion_matrix"]["rows"] == ["neg", "pos"]
    assert m["confusion_matrix"]["columns"] == ["neg", "pos"]
    assert m["confusion_matrix"]["matrix"] == [[1, 1], [1, 2]]
    # positives score .9 .4 .6 against negatives .2 .7: 4 of 6 pairs ordered right
    assert m["auc_roc"] == pytest.approx(4 / 6)
    assert m["auc_roc_per_label"] == {"neg": m["auc_roc"], "pos": m["auc_roc"]}
    # top-label confidences .9 ok, .6 wrong, .8 ok, .7 wrong, .6 ok
    cal = m["calibration"]
    assert cal["ece"] == pytest.approx((1 * 0.1 + 2 * 0.1 + 1 * 0.2 + 1 * 0.7) / 5)
    by_bin = {round(b["lo"], 1): b for b in cal["bins"] if b["count"]}
    assert set(by_bin) == {0.6, 0.7, 0.8, 0.9}
    assert by_bin[0.6]["count"] == 2 and by_bin[0.6]["accuracy"] == pytest.approx(0.5)
    assert by_bin[0.6]["confidence"] == pytest.approx(0.6)
    assert by_bin[0.7]["accuracy"] == 0.0 and by_bin[0.9]["accuracy"] == 1.0
    assert sum(b["count"] for b in cal["bins"]) == 5 and len(cal["bins"]) == 10
    # ranked .9 ok, .8 ok, .7 wrong, .6 wrong (case 2 first: ties keep order), .6 ok
    curve = {round(r["coverage"], 1): (r["n"], r["accuracy"]) for r in m["coverage_curve"]}
    assert curve[0.1] == (1, 1.0) and curve[0.4] == (2, 1.0)
    assert curve[0.5] == (3, pytest.approx(2 / 3)) and curve[0.7] == (4, 0.5)
    assert curve[1.0] == (5, pytest.approx(0.6))
    # latency over the 4 uncached calls; the cache hit only in latency_ms_all
    assert m["latency_ms"]["p50"] == pytest.approx(25.0)
    assert m["latency_ms"]["p95"] == pytest.approx(38.5)
    assert m["latency_ms_all"]["p50"] == pytest.approx(20.0)
    assert m["cache_hits"] == 1
    assert m["usage"]["prompt_tokens"] == 400 and m["usage"]["completion_tokens"] == 20
    assert m["usage"]["total_tokens"] == 420 and m["usage"]["llm_calls"] == 4
    assert m["usage"]["cost_usd"] == pytest.approx(0.004)
    assert m["errors"] == 0 and m["abstain_rate"] == 0.0
    json.dumps(m, allow_nan=False)  # plain JSON, no NaN


def test_multiclass_with_abstention_error_and_a_label_absent_from_gold():
    task = Task(
        name="m", kind="multiclass", allow_abstain=True, labels={"a": "", "b": "", "c": "", "d": ""}
    )  # type: ignore[arg-type]
    s = lambda a, b, c, d: {"a": a, "b": b, "c": c, "d": d}  # noqa: E731
    golds = [("a",), ("b",), ("c",), ("a",), ("b",), ("c",)]
    preds = [
        pred(["a"], s(0.7, 0.1, 0.1, 0.1)),
        pred(["c"], s(0.1, 0.3, 0.5, 0.1)),
        pred([], s(0.2, 0.2, 0.5, 0.1), abstained=True),
        pred(["a"], s(0.6, 0.2, 0.1, 0.1)),
        None,  # the backend failed on this case
        pred(["c"], s(0.1, 0.1, 0.7, 0.1)),
    ]
    errors = [None, None, None, None, "rate_limit", None]
    m = compute_metrics(task, golds, preds, errors=errors)
    assert m["accuracy"] == pytest.approx(3 / 6)  # the abstention and the error count as wrong
    assert m["abstained"] == 1 and m["abstain_rate"] == pytest.approx(1 / 6)
    assert m["errors"] == 1 and m["error_kinds"] == {"rate_limit": 1}
    assert m["error_rate"] == pytest.approx(1 / 6)
    pl = m["per_label"]
    assert (pl["a"]["precision"], pl["a"]["recall"]) == (1.0, 1.0)
    assert (pl["b"]["precision"], pl["b"]["recall"], pl["b"]["support"]) == (0.0, 0.0, 2)
    assert (pl["c"]["precision"], pl["c"]["recall"]) == (0.5, 0.5)
    assert pl["d"]["support"] == 0 and pl["d"]["predicted"] == 0 and pl["c"]["predicted"] == 2
    # macro averages leave out d (neither gold nor predicted): F1 a 1, b 0, c .5
    assert m["macro_f1"] == pytest.approx(0.5) and m["labels_averaged"] == 3
    assert m["macro_recall"] == pytest.approx(0.5)
    cm = m["confusion_matrix"]
    assert cm["columns"] == ["a", "b", "c", "d", "(abstained)", "(error)"]
    assert cm["matrix"] == [
        [2, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 1],
        [0, 0, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    # one-vs-rest AUC over the scored cases (the error has no scores); d never gold: left out
    auc = m["auc_roc_per_label"]
    assert auc["a"] == 1.0 and auc["b"] == 1.0
    assert auc["c"] == pytest.approx(5.5 / 6)  # one tie at .5 counts a half
    assert auc["d"] is None
    assert m["auc_roc"] == pytest.approx((1 + 1 + 5.5 / 6) / 3)
    assert "['d']" in m["auc_roc_note"]
    # calibration leaves the abstention and the error out: .7 ok, .5 wrong, .6 ok, .7 ok
    assert m["calibration"]["n"] == 4
    assert m["calibration"]["ece"] == pytest.approx((2 * 0.3 + 0.5 + 0.4) / 4)
    # coverage ranks the abstention and the error last
    assert m["coverage_curve"][-1]["accuracy"] == pytest.approx(0.5)
    assert m["coverage_curve"][5]["accuracy"] == pytest.approx(3 / 4)  # 60 %: 4 cases
    json.dumps(m, allow_nan=False)


def test_multilabel_indicator_metrics(tags_task):
    golds = [("joy",), ("joy", "anger"), (), ("anger",)]
    preds = [
        pred(["joy"], {"joy": 0.9, "anger": 0.1, "surprise": 0.2}),
        pred(["joy"], {"joy": 0.8, "anger": 0.4, "surprise": 0.1}),
        pred(["surprise"], {"joy": 0.1, "anger": 0.1, "surprise": 0.6}),
        pred(["anger"], {"joy": 0.2, "anger": 0.7, "surprise": 0.1}),
    ]
    m = compute_metrics(tags_task, golds, preds)
    assert m["accuracy"] == m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["micro_f1"] == pytest.approx(0.75)  # TP 3, FP 1, FN 1
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["per_label"]["anger"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "predicted": 1}
    )
    assert m["confusion_matrix"]["columns"] == ["TP", "FP", "FN", "TN"]
    assert m["confusion_matrix"]["matrix"] == [[2, 0, 0, 2], [1, 0, 1, 2], [0, 1, 0, 3]]
    assert m["auc_roc_per_label"] == {"joy": 1.0, "anger": 1.0, "surprise": None}
    assert m["auc_roc"] == 1.0 and "surprise" in m["auc_roc_note"]
    assert m["multilabel"]["hamming_loss"] == m["hamming_loss"]
    assert m["calibration"]["n"] == 12 and m["calibration"]["unit"] == "label decision"
    json.dumps(m, allow_nan=False)


def test_multilabel_thresholds_tuned_on_one_half_and_measured_on_the_other(tags_task):
    # anger is gold exactly when its score is .40 or .45, but the model only says anger at >= .5
    golds, preds, ids = [], [], []
    for i in range(60):
        anger_score = [0.1, 0.2, 0.4, 0.45][i % 4]
        anger = anger_score >= 0.4
        joy = i % 3 == 0
        golds.append(tuple(x for x, on in (("joy", joy), ("anger", anger)) if on))
        scores = {"joy": 0.9 if joy else 0.1, "anger": anger_score, "surprise": 0.05}
        preds.append(pred([x for x in ("joy",) if joy], scores))
        ids.append(f"case-{i}")
    m = compute_metrics(tags_task, golds, preds, ids=ids)
    tuning = m["multilabel"]["threshold_tuning"]
    expected_tune = sum(1 for i in ids if hashlib.sha256(i.encode()).digest()[0] & 1 == 0)
    assert tuning["n_tune"] == expected_tune and tuning["n_held_out"] == 60 - expected_tune
    assert 0 < expected_tune < 60
    th = tuning["thresholds"]
    assert 0.2 < th["anger"] <= 0.4  # separates .2 from .4 (nearest the default .5: .4)
    assert th["anger"] == pytest.approx(0.4)
    assert 0.1 < th["joy"] <= 0.9
    assert th["surprise"] == tags_task.threshold  # no positive case: default kept
    assert tuning["held_out_tuned"]["micro_f1"] == pytest.approx(1.0)
    assert tuning["held_out_tuned"]["subset_accuracy"] == pytest.approx(1.0)
    assert tuning["held_out_model"]["micro_f1"] < 0.8  # the model misses every anger
    assert tuning["held_out_tuned"]["n"] == tuning["n_held_out"]


def test_too_few_cases_to_tune_thresholds_says_so(tags_task):
    m = compute_metrics(tags_task, [("joy",)], [pred(["joy"], {"joy": 0.9, "anger": 0.1,
                                                              "surprise": 0.1})])  # fmt: skip
    t = m["multilabel"]["threshold_tuning"]
    assert t["thresholds"] is None and "too few" in t["note"]


def test_binary_auc_needs_both_gold_labels(binary_task):
    m = compute_metrics(binary_task, [("pos",), ("pos",)],
                        [pred(["pos"], {"neg": 0.2, "pos": 0.8}),
                         pred(["neg"], {"neg": 0.7, "pos": 0.3})])  # fmt: skip
    assert m["auc_roc"] is None and "both labels" in m["auc_roc_note"]


def test_gold_label_outside_the_task_is_an_error(binary_task):
    with pytest.raises(ConfigError, match="not labels of task"):
        compute_metrics(binary_task, [("maybe",)], [pred(["pos"], {"neg": 0.1, "pos": 0.9})])
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        compute_metrics(binary_task, [("pos",), ("neg",)], [pred(["pos"], {"pos": 1.0})])


def test_empty_run_and_all_cached_latency(binary_task):
    m = compute_metrics(binary_task, [], [])
    assert m["n"] == 0 and m["accuracy"] is None
    m = compute_metrics(binary_task, [("pos",)], [pred(["pos"], {"pos": 0.9, "neg": 0.1},
                                                      cached=True, latency=0.2)])  # fmt: skip
    assert m["latency_ms"]["p50"] is None and m["latency_ms_all"]["p50"] == pytest.approx(0.2)
    assert m["usage"]["cost_usd"] is None


def test_coverage_curve_of_ten_cases_is_a_running_accuracy():
    conf = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.3]
    ok = [True, True, True, False, True, False, True, False, False, True]
    curve = coverage_curve(conf, ok)
    assert [r["n"] for r in curve] == list(range(1, 11))
    running = [sum(ok[:k]) / k for k in range(1, 11)]
    assert [r["accuracy"] for r in curve] == pytest.approx(running)


def test_regression_check_names_the_metric_and_the_drop():
    base = {"accuracy": 0.90, "macro_f1": 0.80, "calibration": {"ece": 0.05}}
    assert regression_check(base, {"accuracy": 0.895, "macro_f1": 0.80}, max_drop=0.01) == []
    fails = regression_check(base, {"accuracy": 0.85, "macro_f1": 0.85}, max_drop=0.01)
    assert [f.metric for f in fails] == ["accuracy"]
    assert fails[0].drop == pytest.approx(0.05)
    assert "accuracy dropped by 0.0500 (0.9000 -> 0.8500)" in fails[0].message
    # lower is better for ECE: a rise is the drop
    fails = regression_check(
        base, {"calibration": {"ece": 0.10}}, max_drop=0.01, metric_names=["ece"]
    )
    assert fails[0].drop == pytest.approx(0.05) and "rose" in fails[0].message
    assert regression_check(base, {"calibration": {"ece": 0.01}}, 0.01, ["ece"]) == []
    # a metric the gate cannot read fails it
    fails = regression_check(base, {"accuracy": 0.9}, 0.01, ["accuracy", "macro_f1"])
    assert [f.metric for f in fails] == ["macro_f1"] and "missing" in fails[0].message
    assert get_metric({"per_label": {"x": {"f1": 0.5}}}, "per_label.x.f1") == 0.5
