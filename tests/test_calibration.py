"""Calibration: methods recover known miscalibration, labels follow scores, calibrators are keyed
by backend/prompt/task, loaded as JSON only, and applied by backends automatically."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclf.backends.registry import make_backend
from llmclf.calibration import (
    Calibration,
    CalibrationWarning,
    calibration_path,
    fit,
    fit_contextual,
    load_calibration,
    save_calibration,
)
from llmclf.decision import decide
from llmclf.errors import ConfigError
from llmclf.prompts import PromptTemplate
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Label, Task

# -- methods on synthetic data with known miscalibration ------------------------------------------


def _overconfident_binary(n: int = 3000, sharpen: float = 3.0, seed: int = 0):
    """True P(positive) q; the raw scores are q's logit times ``sharpen`` (overconfident)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < q).astype(int)
    z = np.log(q / (1 - q)) * sharpen
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1), y, q


def _ece(conf: np.ndarray, ok: np.ndarray) -> float:
    from llmclf.metrics import calibration

    return float(calibration(conf.tolist(), ok.tolist())["ece"])


def test_temperature_recovers_a_known_sharpening() -> None:
    raw, y, q = _overconfident_binary(sharpen=3.0)
    cal = fit("temperature", raw, y, kind="binary")
    assert cal.params["temperature"] == pytest.approx(3.0, rel=0.15)
    out = cal.apply(raw)
    assert np.abs(out[:, 1] - q).mean() < 0.02
    assert np.abs(raw[:, 1] - q).mean() > 0.1


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_platt_and_isotonic_bring_ece_down(method: str) -> None:
    raw, y, _ = _overconfident_binary(seed=1)
    cal = fit(method, raw[:1500], y[:1500], kind="binary")  # type: ignore[arg-type]
    test_raw, test_y = raw[1500:], y[1500:]
    out = cal.apply(test_raw)
    assert np.allclose(out.sum(axis=1), 1.0)

    def ece(p: np.ndarray) -> float:
        pred = p.argmax(axis=1)
        return _ece(p.max(axis=1), pred == test_y)

    assert ece(test_raw) > 0.1
    assert ece(out) < 0.05


def test_platt_learns_a_shift_the_argmax_gets_wrong() -> None:
    """Scores biased toward negative: Platt moves the decision boundary back."""
    rng = np.random.default_rng(2)
    q = rng.uniform(0.05, 0.95, 2000)
    y = (rng.uniform(size=2000) < q).astype(int)
    p = 1 / (1 + np.exp(-(np.log(q / (1 - q)) - 1.5)))  # shifted toward negative
    raw = np.stack([1 - p, p], axis=1)
    cal = fit("platt", raw, y, kind="binary")
    acc_raw = ((raw[:, 1] >= 0.5) == y).mean()
    acc_cal = ((cal.apply(raw)[:, 1] >= 0.5) == y).mean()
    assert acc_cal > acc_raw + 0.05


def test_per_label_platt_for_multilabel() -> None:
    rng = np.random.default_rng(3)
    q = rng.uniform(0.05, 0.95, (2000, 3))
    y = (rng.uniform(size=q.shape) < q).astype(int)
    raw = 1 / (1 + np.exp(-(np.log(q / (1 - q)) * np.array([3.0, 1.0, 0.5]))))
    cal = fit("platt", raw, y, kind="multilabel")
    assert cal.params["a"][0] == pytest.approx(1 / 3, rel=0.2)
    assert cal.params["a"][2] == pytest.approx(2.0, rel=0.2)
    assert np.abs(cal.apply(raw) - q).mean() < 0.03


def test_multiclass_temperature_and_contextual() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(1500, 4)) * 2
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in q])
    raw = np.exp(logits * 2.5) / np.exp(logits * 2.5).sum(axis=1, keepdims=True)
    cal = fit("temperature", raw, y, kind="multiclass")
    assert cal.params["temperature"] == pytest.approx(2.5, rel=0.15)
    # contextual: a prompt that favours label 0 four to one
    bias = np.array([0.4, 0.2, 0.2, 0.2])
    biased = q * bias / (q * bias).sum(axis=1, keepdims=True)
    ctx = fit_contextual([bias, bias], kind="multiclass")
    assert np.allclose(ctx.apply(biased), q, atol=1e-6)


def test_isotonic_refuses_too_few_cases_and_contextual_refuses_multilabel() -> None:
    raw, y, _ = _overconfident_binary(n=20)
    with pytest.raises(ConfigError, match="at least"):
        fit("isotonic", raw, y, kind="binary")
    with pytest.raises(ConfigError, match="single-label"):
        fit_contextual([[0.5, 0.5]], kind="multilabel")


# -- labels follow scores: a property over random scores, tasks and thresholds --------------------


@st.composite
def _task_and_scores(draw: st.DrawFn) -> tuple[Task, dict[str, float], float | None]:
    kind = draw(st.sampled_from(["binary", "multiclass", "multilabel"]))
    n = 2 if kind == "binary" else draw(st.integers(2, 6))
    names = [f"l{i}" for i in range(n)]
    threshold = draw(st.floats(0.0, 1.0))
    task = Task(
        name="t",
        kind=kind,
        labels=[Label(name=x) for x in names],
        positive_label=names[draw(st.integers(0, 1))] if kind == "binary" else None,
        threshold=threshold,
    )
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    if kind != "multilabel":
        total = sum(raw) or 1.0
        raw = [x / total for x in raw] if sum(raw) else [1.0 / n] * n
    override = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    return task, dict(zip(names, raw, strict=True)), override


@settings(max_examples=300, deadline=None)
@given(_task_and_scores())
def test_no_label_scores_below_an_unchosen_label_unless_the_threshold_says_why(
    case: tuple[Task, dict[str, float], float | None],
) -> None:
    task, scores, override = case
    d = decide(task, scores, threshold=override)
    chosen = set(d.labels)
    unchosen = [s for n, s in scores.items() if n not in chosen]
    used = task.threshold if override is None else override
    if task.kind == "multiclass":
        assert len(d.labels) == 1 and d.threshold is None
        assert all(scores[d.labels[0]] >= s for s in scores.values())
        return
    if task.kind == "multilabel":
        assert all(scores[c] >= used for c in chosen)
        assert all(s < used for s in unchosen)
    else:
        assert len(d.labels) == 1
        pos = task.positive_label
        assert (d.labels[0] == pos) == (scores[pos] >= used)
    inverted = any(scores[c] < s for c in chosen for s in unchosen)
    if inverted:  # only a threshold other than 0.5 explains it, and the answer carries it
        assert d.threshold == used and used != 0.5
    assert d.threshold == (None if used == 0.5 else used)


# -- the LLM backend on the fake provider ---------------------------------------------------------


def _sentiment(threshold: float = 0.5) -> Task:
    return Task(
        name="sentiment",
        kind="binary",
        positive_label="positive",
        threshold=threshold,
        labels=[Label(name="negative"), Label(name="positive")],
    )


def test_a_task_threshold_is_carried_by_the_answer_it_explains() -> None:
    with FakeProvider(rules={"meh": "negative"}, default="positive", confidence=0.6) as fake:
        backend = make_backend(fake.spec(), _sentiment(threshold=0.7))
        (p,) = backend.predict_batch(["meh, a film"])
        assert p.scores["negative"] == pytest.approx(0.6, abs=1e-3)
        (q,) = backend.predict_batch(["a film"])
    # P(positive) = 0.6 < 0.7: negative although positive scores higher, and the answer says why
    assert q.scores["positive"] == pytest.approx(0.6, abs=1e-3)
    assert q.labels == ("negative",) and q.threshold == 0.7
    assert p.labels == ("negative",) and not p.calibrated
    assert p.score_source == "logprobs"


def test_votes_label_follows_the_vote_not_the_first_answer() -> None:
    with FakeProvider(default="negative", logprobs=False) as fake:
        # the first (greedy) answer says positive; the four other votes say negative
        fake.push(Fault.raw('{"label": "positive"}'))
        backend = make_backend(fake.spec(cache="false", votes="5"), _sentiment())
        (p,) = backend.predict_batch(["a film"])
    assert p.score_source == "votes"
    assert p.scores == {"negative": 0.8, "positive": 0.2}
    assert p.labels == ("negative",)


def test_multilabel_labels_follow_scores(tags_task: Task) -> None:
    with FakeProvider(default=["joy", "anger"], confidence=0.9) as fake:
        (p,) = make_backend(fake.spec(), tags_task).predict_batch(["oh my"])
    assert set(p.labels) == {n for n, s in p.scores.items() if s >= 0.5}
    assert "joy" in p.labels


def _store_calibration(backend: str, prompt_id: str, task: Task, **kw: object) -> Path:
    cal = Calibration(
        method="temperature",
        kind=task.kind,
        labels=task.label_names,
        params={"temperature": 2.0},
        backend=backend,
        prompt_id=prompt_id,
        task=task.name,
        task_fingerprint=task.fingerprint(),
        score_source="logprobs",
        **kw,  # type: ignore[arg-type]
    )
    return save_calibration(cal, calibration_path(backend, prompt_id, task))


def test_a_stored_calibrator_is_applied_and_the_answer_says_so() -> None:
    task = _sentiment()
    prompt_id = PromptTemplate.load(task.prompt).id
    _store_calibration("llm:openai/fake", prompt_id, task)
    with FakeProvider(default="positive", confidence=0.9) as fake:
        (p,) = make_backend(fake.spec(), task).predict_batch(["a film"])
        (raw,) = make_backend(fake.spec(calibration="off"), task).predict_batch(["a film"])
    assert p.calibrated and p.score_source == "logprobs+temperature"
    assert p.raw_scores == raw.scores
    # T=2 pulls 0.9 toward 0.5: sqrt(0.9) / (sqrt(0.9) + sqrt(0.1)) = 0.75
    assert p.scores["positive"] == pytest.approx(0.75, abs=1e-3)
    assert not raw.calibrated and raw.score_source == "logprobs" and raw.raw_scores is None


def test_a_calibrator_for_another_prompt_version_warns_and_is_not_applied() -> None:
    task = _sentiment()
    _store_calibration("llm:openai/fake", "zero_shot.v0@000000000000", task)
    with FakeProvider(default="positive") as fake:
        with pytest.warns(CalibrationWarning, match="fitted on prompt zero_shot.v0"):
            backend = make_backend(fake.spec(), task)
        (p,) = backend.predict_batch(["a film"])
    assert not p.calibrated and p.score_source == "logprobs"


def test_a_calibrator_for_a_changed_task_is_not_applied(tmp_path: Path) -> None:
    task = _sentiment()
    prompt_id = PromptTemplate.load(task.prompt).id
    path = _store_calibration("llm:openai/fake", prompt_id, task)
    changed = _sentiment(threshold=0.6)
    with (
        FakeProvider(default="positive") as fake,
        pytest.warns(CalibrationWarning, match="the task changed"),
    ):
        b = make_backend(fake.spec(calibration=str(path)), changed)
    assert b.calibration is None  # type: ignore[attr-defined]


def test_loading_a_calibrator_never_unpickles(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("unpickled!",))

    bad = tmp_path / "calibration.json"
    bad.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ConfigError, match="not a JSON calibration file"):
        load_calibration(bad)
    # JSON of the wrong shape names the file and the field
    bad.write_text(json.dumps({"method": "voodoo"}))
    with pytest.raises(ConfigError, match=r"calibration\.json: method"):
        load_calibration(bad)


def test_saved_calibration_round_trips_and_calibrated_threshold_is_half() -> None:
    task = _sentiment(threshold=0.34)
    prompt_id = PromptTemplate.load(task.prompt).id
    path = _store_calibration("llm:openai/fake", prompt_id, task)
    cal = load_calibration(path)
    assert cal.threshold == 0.5 and cal.prompt_id == prompt_id
    with FakeProvider(default="negative", confidence=0.6) as fake:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (p,) = make_backend(fake.spec(), task).predict_batch(["a film"])
        (raw,) = make_backend(fake.spec(calibration="off"), task).predict_batch(["a film"])
    # uncalibrated: P(positive) 0.4 >= the task's 0.34, and the answer carries the threshold
    assert raw.labels == ("positive",) and raw.threshold == 0.34
    # the calibrator's threshold (0.5, on probabilities) replaces the task's raw-score 0.34
    assert p.calibrated and p.threshold is None
    assert p.scores["positive"] == pytest.approx(0.449, abs=1e-3)
    assert p.labels == ("negative",)


# -- llmclf calibrate ------------------------------------------------------------------------------


def _overconfident_eval_set(root: Path, n: int = 120) -> Path:
    """Half the texts are liked; the fake model is right on 70% of them at confidence 0.95."""
    from tests.helpers import make_eval_set

    cases = [
        (f"c{i:03d}", f"{'liked' if i % 2 else 'hated'} film number {i}",
         "positive" if i % 2 else "negative")
        for i in range(n)
    ]  # fmt: skip
    return make_eval_set(root, "overconf", cases=cases)


def _seventy_percent(text: str) -> str:
    i = int(text.rsplit(" ", 1)[-1])
    right = "positive" if "liked" in text else "negative"
    wrong = "negative" if right == "positive" else "positive"
    return right if (i * 7) % 10 < 7 else wrong


def test_calibrate_cli_fits_on_one_half_reports_on_the_other_and_is_applied(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from llmclf.cli.main import app
    from llmclf.datasets import load_eval_set
    from llmclf.metrics import split_half

    es_dir = _overconfident_eval_set(tmp_path)
    with FakeProvider(labeler=_seventy_percent, confidence=0.95) as fake:
        res = CliRunner().invoke(
            app,
            ["calibrate", "-e", str(es_dir), "-b", fake.spec(), "--method", "temperature",
             "--json", "--no-progress"],
            catch_exceptions=False,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        es = load_eval_set(es_dir)
        held_out = {c.text for c in es.cases if split_half(c.id) == 1}
        fitted = {c.text for c in es.cases if split_half(c.id) == 0}
        asked = [FakeProvider.text_of(r) for r in fake.chat_requests]
        assert held_out and fitted and set(asked) == held_out | fitted
        assert out["report_cases"] == len(held_out)
        assert out["fitted_on"]["cases"] == len(fitted)
        assert out["before"]["ece"] > 0.15
        assert out["after"]["ece"] < out["before"]["ece"] - 0.1
        assert out["after"]["brier"] < out["before"]["brier"]
        assert out["before"]["accuracy"] == out["after"]["accuracy"]  # temperature keeps ranks
        saved = load_calibration(out["path"])
        assert saved.method == "temperature" and saved.backend == "llm:openai/fake"
        # from now on the backend applies it
        (p,) = make_backend(fake.spec(), es.task).predict_batch(["liked film number 1"])
    assert p.calibrated and p.score_source == "logprobs+temperature"
    assert 0.6 < p.confidence < 0.8


def test_calibrate_contextual_asks_content_free_inputs_only_for_the_fit(tmp_path: Path) -> None:
    from llmclf.calibrate import calibrate
    from llmclf.datasets import load_eval_set

    es = load_eval_set(_overconfident_eval_set(tmp_path, n=10))
    rules = {"liked": "positive", "hated": "negative"}
    with FakeProvider(rules=rules, default="positive", confidence=0.8) as fake:
        rep = calibrate(es, fake.spec(), method="contextual", progress=False)
        asked = [FakeProvider.text_of(r) for r in fake.chat_requests]
    assert sorted(asked[:3]) == sorted(["N/A", "", "[MASK]"])
    assert sorted(asked[3:]) == sorted(c.text for c in es.cases)
    # every content-free input was answered positive at 0.8: that is the bias divided out
    assert rep.calibration.params["bias"] == pytest.approx([0.2, 0.8], abs=1e-3)
    assert rep.report_cases == 10
    assert rep.after["accuracy"] == 1.0


def test_calibrate_refuses_a_router_and_an_unknown_method(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmclf.calibrate import calibrate
    from llmclf.cli.main import app
    from llmclf.datasets import load_eval_set

    es = load_eval_set(_overconfident_eval_set(tmp_path, n=4))
    with pytest.raises(ConfigError, match="calibrate its student and its LLM"):
        calibrate(es, "router:router.yaml")
    with pytest.raises(ConfigError, match="--method must be one of"):
        CliRunner().invoke(
            app, ["calibrate", "-e", str(es.dir), "--method", "magic"], catch_exceptions=False
        )


def test_eval_reports_ece_before_and_after_calibration(tmp_path: Path) -> None:
    from llmclf.datasets import load_eval_set
    from llmclf.evaluate import compare_runs, evaluate
    from llmclf.report import render_html

    es = load_eval_set(_overconfident_eval_set(tmp_path, n=60))
    with FakeProvider(labeler=_seventy_percent, confidence=0.95) as fake:
        raw_run = evaluate(es, fake.spec(), progress=False)
        _store_calibration(
            "llm:openai/fake", PromptTemplate.load(es.task.prompt).id, es.task
        )  # T = 2
        cal_run = evaluate(es, fake.spec(), progress=False)
    m = cal_run.metrics
    assert "calibration_raw" not in raw_run.metrics
    # the raw view of the calibrated run is the uncalibrated run
    assert m["calibration_raw"]["ece"] == pytest.approx(raw_run.metrics["calibration"]["ece"])
    assert m["calibration"]["ece"] < m["calibration_raw"]["ece"] - 0.1
    assert m["score_sources"] == {"logprobs+temperature": 60}
    html = render_html(cal_run)
    assert 'id="reliability-raw"' in html and "after calibration" in html
    assert 'id="reliability-raw"' not in render_html(raw_run)
    diff = compare_runs(raw_run, cal_run)
    assert diff["metrics"]["ece"]["delta"] < -0.1


# -- the router's cascade at a target accuracy ----------------------------------------------------


def _target_router(student: FakeProvider, llm: FakeProvider, task: Task, target: float):  # type: ignore[no-untyped-def]
    from llmclf.router import Router

    cfg = {
        "backends": {
            "student": {"spec": student.spec(), "options": {"max_retries": 0}},
            "llm": {"spec": llm.spec(), "options": {"max_retries": 0}},
        },
        "cascade": {"student": "student", "escalate_to": "llm", "target_accuracy": target},
    }
    return Router.from_config(cfg, task=task)


def test_cascade_target_accuracy_is_a_threshold_on_the_calibrated_score() -> None:
    from llmclf.errors import TaskFileError

    task = _sentiment()
    with (
        FakeProvider(default="positive", confidence=0.9) as student,
        FakeProvider(default="negative") as llm,
    ):
        with pytest.raises(TaskFileError) as err:
            _target_router(student, llm, task, 0.8)
        assert err.value.field == "cascade.target_accuracy"
        assert "llmclf calibrate" in str(err.value)

        # calibrated with T=2, the student's 0.9 is 0.75
        _store_calibration("llm:openai/fake", PromptTemplate.load(task.prompt).id, task)
        with _target_router(student, llm, task, 0.7) as router:
            assert router.thresholds == {"negative": 0.7, "positive": 0.7}
            assert router.threshold_note is not None and "temperature" in router.threshold_note
            (p,) = router.predict_batch(["a film"])
        assert p.route == ("student",) and p.label == "positive"
        with _target_router(student, llm, task, 0.8) as router:
            (q,) = router.predict_batch(["a film"])
        # uncalibrated, 0.9 >= 0.8 would have kept the student's answer
        assert q.route == ("student", "llm") and q.label == "negative"
        assert q.route_reason == "escalated: 0.75<0.80"


def test_cascade_takes_a_threshold_or_a_target_not_both() -> None:
    from llmclf.errors import TaskFileError
    from llmclf.router import Router

    cfg = {
        "backends": {"a": "llm:local", "b": "llm:local"},
        "cascade": {"student": "a", "escalate_to": "b", "threshold": 0.8, "target_accuracy": 0.9},
    }
    with pytest.raises(TaskFileError, match="not both"):
        Router.from_config(cfg, task=_sentiment())


def test_temperature_on_a_biased_binary_task_carries_its_threshold(tmp_path: Path) -> None:
    """Temperature scaling keeps the label bias a task threshold corrects: the calibrator's
    threshold is the task's, carried through it, and no decision changes."""
    from llmclf.calibrate import calibrate
    from llmclf.datasets import load_eval_set

    es_dir = _overconfident_eval_set(tmp_path, n=80)
    task_file = es_dir / "task.yaml"
    task_file.write_text(task_file.read_text() + "threshold: 0.97\n")
    es = load_eval_set(es_dir)
    with FakeProvider(labeler=_seventy_percent, confidence=0.95) as fake:
        rep = calibrate(es, fake.spec(), method="temperature", progress=False)
    t = rep.calibration.params["temperature"]
    z = np.log(0.97 / 0.03) / t
    assert rep.calibration.threshold == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-5)
    assert rep.after["accuracy"] == rep.before["accuracy"]
