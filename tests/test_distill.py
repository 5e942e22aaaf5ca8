"""`llmclf distill`: teacher labels (resumable, cached), selection, a real student, atomic output.

The teacher is `FakeProvider` on 127.0.0.1 labelling a slice of SST-2 with its gold labels, so
every request is counted; the student is a real head-only SetFit model (MiniLM body).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

from llmclf.backends.setfit import SetFitBackend
from llmclf.datasets import load_eval_set
from llmclf.distill import (
    DistillError,
    TeacherError,
    TeacherRow,
    calibrate_escalation,
    choose_min_confidence,
    distill,
    export_teacher_labels,
    gold_rows,
    label_certainty,
    label_unlabeled,
    select_training_set,
)
from llmclf.distill.teacher import decided_at
from llmclf.errors import ConfigError, ParityError, TaskFileError
from llmclf.prompts import PromptTemplate
from llmclf.store import Store, open_store
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Prediction, Task
from tests.helpers import REPO

SST2_TRAIN = Path("/work/shared/datasets/sst2/train.jsonl")
SST2_VALID = Path("/work/shared/datasets/sst2/validation.jsonl")
N_TEXTS = 60


def _rows(path: Path, n: int, skip: int = 0) -> list[dict[str, Any]]:
    if not path.exists():  # fall back to the eval set shipped in the repo
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[skip : skip + n]


TRAIN = _rows(SST2_TRAIN, N_TEXTS)
GOLD = {r["text"]: r["label"] for r in TRAIN}
EVAL_ROWS = _rows(SST2_VALID, 40)
GOLD.update({r["text"]: r["label"] for r in EVAL_ROWS})


def _label(text: str) -> str:
    return GOLD.get(text, "positive")


@pytest.fixture
def teacher() -> Iterator[FakeProvider]:
    with FakeProvider(labeler=_label) as fp:
        yield fp


def _spec(fp: FakeProvider) -> str:
    return fp.spec(max_retries=0, backoff_base_s=0.01)


@pytest.fixture(scope="module")
def sst2_task() -> Task:
    return Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 unlabelled SST-2 texts and a 40-case eval set (with its task)."""
    d = tmp_path_factory.mktemp("data")
    with open(d / "unlabelled.jsonl", "w") as f:
        for i, r in enumerate(TRAIN):
            f.write(json.dumps({"id": f"u{i}", "text": r["text"]}) + "\n")
    es = d / "sst2mini"
    es.mkdir()
    (es / "task.yaml").write_text((REPO / "eval_sets" / "sst2" / "task.yaml").read_text())
    with open(es / "cases.jsonl", "w") as f:
        for i, r in enumerate(EVAL_ROWS):
            f.write(json.dumps({"id": f"c{i}", "text": r["text"], "label": r["label"]}) + "\n")
    return d


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def distilled(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, sst2_task: Task
) -> dict[str, Any]:
    """One real head-only distillation with an eval set and an int8 export."""
    home = tmp_path_factory.mktemp("home")
    store = Store(home / "llmclf.db")
    out = tmp_path_factory.mktemp("models") / "sst2-student"
    with FakeProvider(labeler=_label) as fp:
        result = distill(
            sst2_task,
            _spec(fp),
            data_dir / "unlabelled.jsonl",
            out,
            eval_set=data_dir / "sst2mini",
            mode="head-only",
            head_c=0.3,
            store=store,
            progress=False,
        )
        n_requests = len(fp.chat_requests)
    return {"result": result, "out": out, "store": store, "requests": n_requests}


def test_distill_writes_a_complete_model_dir(distilled: dict[str, Any], sst2_task: Task) -> None:
    out: Path = distilled["out"]
    result = distilled["result"]
    # 60 texts labelled + 40 eval cases asked once each
    assert distilled["requests"] == N_TEXTS + len(EVAL_ROWS)
    for f in (
        "labels.json", "head.json", "task.json", "router.json", "card.json", "README.md",
        "model.onnx", "model.int8.onnx", "body/model.safetensors", "body/tokenizer.json",
        "body/config.json", "body/modules.json",
    ):  # fmt: skip
        assert (out / f).is_file(), f
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]
    assert not _leftovers(out.parent, out.name)
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))

    card = json.loads((out / "card.json").read_text())
    counts = {"negative": 0, "positive": 0}
    for r in TRAIN:
        counts[r["label"]] += 1
    assert card["data"]["teacher_counts"] == counts
    assert card["data"]["n_texts"] == N_TEXTS and card["data"]["n_labelled"] == N_TEXTS
    assert card["prompt_id"] == PromptTemplate.load(sst2_task.prompt).id
    assert card["teacher"].startswith("llm:openai/fake")
    assert len(card["data"]["source_hash"]) == 16
    assert card["student"]["mode"] == "head-only"
    readme = (out / "README.md").read_text()
    for needle in ("teacher", card["prompt_id"], card["data"]["train_hash"], "negative"):
        assert needle in readme
    # head-only trains no body: the card claims no training steps of any kind
    assert card["student"]["step_kind"] is None
    assert "body frozen (no training steps)" in readme and "contrastive" not in readme
    # the card records the job's settings (the DistillConfig), secrets left out
    assert card["config"]["mode"] == "head-only" and card["config"]["eval_set"]
    assert card["config"]["teacher"] == card["teacher"]

    # the parity check ran for both exports and is within its bounds
    parity = {p["runtime"]: p for p in card["export"]["parity"]}
    assert parity["onnx"]["max_diff"] < 1e-3 and parity["onnx"]["passed"]
    assert parity["int8"]["max_diff"] <= 0.05 and parity["int8"]["passed"]
    assert result.parity == card["export"]["parity"]

    # the router threshold was calibrated on the eval set
    router = json.loads((out / "router.json").read_text())
    assert 0.5 <= router["escalation_threshold"] <= 1.0
    assert router["calibrated_on"] == "sst2mini" and router["n"] == len(EVAL_ROWS)
    assert SetFitBackend(out).escalation_threshold == router["escalation_threshold"]


def test_distill_evaluates_student_against_gold_and_teacher(distilled: dict[str, Any]) -> None:
    result, store, out = distilled["result"], distilled["store"], distilled["out"]
    # the teacher answers with gold labels: agreement with the teacher equals accuracy
    assert result.teacher_metrics["accuracy"] == 1.0
    assert result.agreement == pytest.approx(result.student_metrics["accuracy"])
    assert result.student_metrics["n"] == len(EVAL_ROWS)
    run = store.get_run(result.student_run_id)
    assert run is not None and run["status"] == "done"
    assert run["backend"] == f"setfit:{out}"
    assert store.get_run(result.teacher_run_id)["backend"].startswith("llm:openai/fake")
    rows = {name: (t, s) for name, t, s in result.comparison()}
    assert rows["accuracy"] == (1.0, result.student_metrics["accuracy"])
    assert rows["latency p50 (ms, one text)"][1] > 0
    # the student was scored once: its one stored run gives the metrics, the agreement and
    # the latency, measured one text per call (not a batch's wall time)
    student_runs = [r for r in store.list_runs(limit=1000) if r["backend"] == f"setfit:{out}"]
    assert [r["id"] for r in student_runs] == [result.student_run_id]
    assert rows["latency p50 (ms, one text)"][1] == result.student_metrics["latency_ms"]["p50"]
    assert "one text per call" in result.student_metrics["latency_method"]
    # the backend serves the model: a score for every label, summing to 1
    pred = SetFitBackend(out).predict_batch(["a gorgeous , witty film"])[0]
    assert set(pred.scores) == {"negative", "positive"}
    assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_rerun_makes_no_llm_calls_and_force_replaces(
    distilled: dict[str, Any], data_dir: Path, sst2_task: Task
) -> None:
    out: Path = distilled["out"]
    store: Store = distilled["store"]
    before = (out / "card.json").read_text()
    with FakeProvider(labeler=_label) as fp:
        with pytest.raises(ConfigError, match="already exists"):
            distill(sst2_task, _spec(fp), data_dir / "unlabelled.jsonl", out, store=store,
                    mode="head-only", progress=False)  # fmt: skip
        assert fp.chat_requests == []  # refused before any work
        # the first run's spec, whose provider is gone: the store answers, no call is made
        spec = distilled["result"].card["teacher"]
        result = distill(
            sst2_task, spec, data_dir / "unlabelled.jsonl", out, store=store,
            mode="head-only", int8=False, force=True, progress=False,
        )  # fmt: skip
    assert result.n_new_labels == 0
    assert (out / "card.json").read_text() != before
    assert not (out / "model.int8.onnx").exists()  # the new model replaced the old one
    assert not _leftovers(out.parent, out.name)
    assert SetFitBackend(out).runtime == "onnx"


def test_calibrate_writes_a_calibrator_the_student_applies(
    distilled: dict[str, Any], data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    store: Store = distilled["store"]
    spec = distilled["result"].card["teacher"]  # the store answers: no provider is needed
    with pytest.raises(ConfigError, match="give --eval-set"):
        distill(sst2_task, spec, data_dir / "unlabelled.jsonl", tmp_path / "nope", store=store,
                mode="head-only", calibrate="platt", progress=False)  # fmt: skip
    assert not (tmp_path / "nope").exists()
    out = tmp_path / "calibrated"
    result = distill(
        sst2_task, spec, data_dir / "unlabelled.jsonl", out, store=store,
        eval_set=data_dir / "sst2mini", mode="head-only", head_c=0.3, int8=False,
        calibrate="platt", progress=False,
    )  # fmt: skip
    cal = result.card["calibration"]
    assert cal["method"] == "platt" and cal["file"] == "calibration.json"
    assert 0 < cal["report_cases"] < len(EVAL_ROWS)  # reported on the half it did not fit on
    assert "hash half 0" in cal["fitted_on"]["source"]
    assert cal["fitted_on"]["spec"] == f"setfit:{out}"
    assert (out / "calibration.json").is_file()
    assert "## Calibration" in (out / "README.md").read_text()
    student = SetFitBackend(out)
    pred = student.predict_batch(["a gorgeous, witty film"])[0]
    assert pred.calibrated and pred.score_source.endswith("+platt")
    assert abs(sum(pred.scores.values()) - 1) < 1e-6


# --------------------------------------------------------------------------- resumability


def test_teacher_failing_midway_then_resume(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    store = open_store()
    calls = {"n": 0}

    def flaky(text: str) -> str:
        calls["n"] += 1
        if calls["n"] == 20:
            teacher.push(Fault.status(500))  # the 21st request fails
        return _label(text)

    teacher.labeler = flaky
    out = tmp_path / "m"
    with pytest.raises(TeacherError, match=r"re-run|run the same command again") as err:
        distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", out,
                concurrency=1, mode="head-only", progress=False)  # fmt: skip
    saved = store.count("teacher_labels")
    # the 20 before the failure, and the one queued behind it
    assert 20 <= saved <= 21 and f"{saved} label(s) are saved" in str(err.value)
    assert "unlabelled.jsonl:21" in str(err.value)  # the failing text's line
    assert not out.exists() and not _leftovers(tmp_path, "m")
    n_before = len(teacher.chat_requests)
    labels = label_unlabeled(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl",
                             concurrency=3, progress=False)  # fmt: skip
    # only the missing texts were asked for; nothing is stored twice
    assert len(teacher.chat_requests) - n_before == N_TEXTS - saved
    assert labels.n_new == N_TEXTS - saved
    assert store.count("teacher_labels") == N_TEXTS
    assert [r.text for r in labels.rows] == [r["text"] for r in TRAIN]
    assert [r.labels[0] for r in labels.rows] == [r["label"] for r in TRAIN]
    assert [r.id for r in labels.rows] == [f"u{i}" for i in range(N_TEXTS)]


def test_resume_after_kill_9(data_dir: Path, tmp_path: Path, llmclf_home: Path) -> None:
    """A `llmclf distill` process killed with SIGKILL mid-labelling loses and duplicates nothing."""

    def slow(text: str) -> str:
        time.sleep(0.05)
        return _label(text)

    db = llmclf_home / "llmclf.db"
    out = tmp_path / "models" / "killed"
    env = {**os.environ, "LLMCLF_HOME": str(llmclf_home), "HF_HUB_OFFLINE": "1"}
    with FakeProvider(labeler=slow) as fp:
        cmd = [
            sys.executable, "-m", "llmclf.cli.main", "distill", "--task", "sst2",
            "--teacher", _spec(fp), "--unlabeled", str(data_dir / "unlabelled.jsonl"),
            "--out", str(out), "--mode", "head-only", "--no-int8", "--concurrency", "2",
            "--quiet", "--json",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        done = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        done = conn.execute("SELECT COUNT(*) FROM teacher_labels").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= 15:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)  # let the fake finish reading what was already sent
        assert not out.exists()
        store = Store(db)
        assert store.integrity_check() == "ok"
        kept = store.count("teacher_labels")
        assert 15 <= kept < N_TEXTS
        # a text answered and cached just before the kill is served by the cache on re-run
        cached = store.cache_count()
        assert kept <= cached <= kept + 2
        n_before = len(fp.chat_requests)
        rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
        summary = json.loads(rerun.stdout.decode().strip().splitlines()[-1])
        # the re-run asked only for the labels that were not stored
        assert len(fp.chat_requests) - n_before == N_TEXTS - cached
        assert summary["n_new_labels"] == N_TEXTS - kept
        # --quiet: no bars at all, Hugging Face's per-file ones included
        assert "Loading weights" not in rerun.stderr.decode()
    assert summary["n_labelled"] == N_TEXTS
    assert store.count("teacher_labels") == N_TEXTS  # no duplicates
    assert (out / "model.onnx").is_file() and not _leftovers(out.parent, out.name)


# --------------------------------------------------------------------------- bad input


def test_no_half_written_dir_when_the_teacher_always_fails(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    teacher.push(*[Fault.status(500)] * 10)
    out = tmp_path / "m"
    with pytest.raises(TeacherError, match="0 label"):
        distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", out,
                mode="head-only", progress=False)  # fmt: skip
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_no_half_written_dir_when_the_export_fails(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    with pytest.raises(ParityError, match="parity"):
        # an impossible bound: the export fails after the temp dir was written
        distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", out,
                mode="head-only", int8=False, fp32_bound=-1.0, progress=False)  # fmt: skip
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_int8_model_over_its_bound_is_left_out_not_the_student(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    # an impossible int8 bound: the trained student is kept, served by the fp32 ONNX model
    result = distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", out,
                     mode="head-only", int8_bound=-1.0, progress=False)  # fmt: skip
    assert (out / "model.onnx").exists() and not (out / "model.int8.onnx").exists()
    assert [(p["runtime"], p["passed"]) for p in result.parity] == [("onnx", True), ("int8", False)]
    assert any("int8 export left out" in w for w in result.warnings)
    assert "left out: over the bound" in (out / "README.md").read_text()
    assert SetFitBackend(out).runtime == "onnx"
    assert not _leftovers(out.parent, out.name)


def test_empty_unlabelled_file(
    teacher: FakeProvider, sst2_task: Task, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="no texts"):
        distill(sst2_task, _spec(teacher), empty, tmp_path / "m", progress=False)
    assert teacher.chat_requests == []


def test_every_text_abstained(tmp_path: Path) -> None:
    task = Task.from_yaml_text(
        "name: s\nkind: multiclass\nallow_abstain: true\nlabels: {a: A, b: B, c: C}\n"
    )
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\nthree\n")
    with (
        FakeProvider(default="abstain") as fp,
        pytest.raises(DistillError, match="abstained on every one of its 3 texts"),
    ):
        distill(task, _spec(fp), texts, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_unknown_label_in_a_gold_pool_names_file_and_line(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    pool = tmp_path / "gold.jsonl"
    pool.write_text(
        '{"text": "great", "label": "positive"}\n'
        '{"text": "bad", "label": "negative"}\n'
        '{"text": "meh", "label": "neutral"}\n'
    )
    with pytest.raises(TaskFileError) as err:
        distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", tmp_path / "m",
                include_labelled=[pool], progress=False)  # fmt: skip
    assert err.value.path == str(pool) and err.value.line == 3
    assert "neutral" in str(err.value)
    assert teacher.chat_requests == []


# --------------------------------------------------------------------------- parts


def test_export_labels_as_jsonl_and_dataset(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    import datasets

    labels = label_unlabeled(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl",
                             limit=10, progress=False)  # fmt: skip
    assert len(labels.rows) == 10 and labels.usage.llm_calls == 10
    path = export_teacher_labels(labels.rows, sst2_task, tmp_path / "labels.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in TRAIN[:10]]
    assert all(set(r["scores"]) == {"negative", "positive"} for r in rows)
    assert rows[0]["id"] == "u0"
    assert rows[0]["confidence"] == pytest.approx(
        label_certainty(sst2_task, [rows[0]["label"]], rows[0]["scores"]), abs=1e-6
    )
    ds_dir = export_teacher_labels(labels.rows, sst2_task, tmp_path / "labels_ds")
    ds = datasets.load_from_disk(str(ds_dir))
    assert ds["label"] == [r["label"] for r in TRAIN[:10]]
    assert len(ds["scores"][0]) == 2


def _row(i: int, label: str, conf: float) -> TeacherRow:
    other = 1.0 - conf
    return TeacherRow(
        key=str(i), position=i, text=f"text {i}", labels=(label,),
        scores={label: conf, "x" if label != "x" else "y": other}, confidence=conf,
    )  # fmt: skip


def test_selection_drops_low_confidence_balances_and_warns(topic_task: Task) -> None:
    rows = [_row(i, "world", 0.95) for i in range(40)]
    rows += [_row(100 + i, "sports", 0.9) for i in range(5)]
    rows += [_row(200 + i, "business", 0.55) for i in range(10)]  # all below the threshold
    rows += [_row(300 + i, "scitech", 0.8) for i in range(10)]
    sel = select_training_set(rows, topic_task, min_confidence=0.6, balance_ratio=3.0)
    assert sel.n_low_confidence == 10
    assert sel.counts == {"world": 15, "sports": 5, "business": 0, "scitech": 10}
    assert sel.n_capped == 25
    assert sel.teacher_counts["business"] == 10
    assert len(sel.warnings) == 1
    assert "sports (5)" in sel.warnings[0] and "business (0)" in sel.warnings[0]
    assert "world" not in sel.warnings[0]
    capped = select_training_set(rows, topic_task, min_confidence=0.6, max_per_label=4,
                                 balance_ratio=None)  # fmt: skip
    assert max(capped.counts.values()) == 4


def test_choose_min_confidence_halves_the_error_rate() -> None:
    conf = [0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95, 0.99]
    ok = [False, False, True, True, True, True, True, True]
    t, how = choose_min_confidence(conf, ok)
    assert t == 0.65 and "target" in how
    t, how = choose_min_confidence([0.9] * 4, [True, False, True, False])
    assert t == 0.0 and "does not separate" in how


def test_calibrate_escalation(sentiment_task: Task) -> None:
    def p(label: str, conf: float) -> Prediction:
        other = "negative" if label == "positive" else "positive"
        return Prediction(labels=(label,), scores={label: conf, other: 1 - conf},
                          score_source="model", backend="s")  # fmt: skip

    golds = [("positive",)] * 6 + [("negative",)] * 4
    student = [p("positive", c) for c in (0.99, 0.95, 0.9, 0.8, 0.6, 0.55)]
    student += [p("negative", 0.97), p("negative", 0.85), p("positive", 0.7), p("positive", 0.65)]
    teacher = [p(g[0], 0.9) for g in golds[:9]] + [p("positive", 0.9)]  # 90 % right
    esc = calibrate_escalation(student, golds, teacher)
    # from 0.8 up the student is right on all 6 cases (>= the teacher's 0.9); below it errs
    assert esc["escalation_threshold"] == 0.8
    assert esc["teacher_accuracy"] == 0.9 and esc["coverage"] == 0.6
    assert esc["cascade_accuracy"] == pytest.approx(0.9)


def test_reviewed_rows_become_gold(sentiment_task: Task) -> None:
    store = open_store()
    rid = store.review_add("sentiment", "meh but fine", {"labels": ["negative"]})
    store.review_label(rid, ["positive"])
    rows = gold_rows(sentiment_task, include_reviewed=True, store=store)
    assert [(r.text, r.labels, r.source) for r in rows] == [
        ("meh but fine", ("positive",), "review")
    ]
    bad = store.review_add("sentiment", "odd", {"labels": []})
    store.review_label(bad, ["neutral"])
    with pytest.raises(ConfigError, match=f"review item {bad}"):
        gold_rows(sentiment_task, include_reviewed=True, store=store)


def test_multilabel_student(tags_task: Task, tmp_path: Path) -> None:
    texts = ["so happy today", "angry and furious", "what a surprise", "happy surprise party",
             "I am furious", "joyful morning", "shocked, really surprised", "rage"] * 4
    texts = [f"{t} #{i}" for i, t in enumerate(texts)]
    src = tmp_path / "tags.txt"
    src.write_text("\n".join(texts) + "\n")
    rules = {"happy": ["joy"], "joyful": ["joy"], "angry": ["anger"], "furious": ["anger"],
             "rage": ["anger"], "surprise": ["surprise"]}  # fmt: skip
    with FakeProvider(rules=rules, default=[]) as fp:
        result = distill(tags_task, _spec(fp), src, tmp_path / "m", mode="head-only",
                         int8=False, min_per_label=1, progress=False)  # fmt: skip
    assert result.selection.counts["anger"] == 12
    backend = SetFitBackend(tmp_path / "m")
    preds = backend.predict_batch(["furious and angry #99", "so happy today #98"])
    assert all(set(p.scores) == {"joy", "anger", "surprise"} for p in preds)
    assert preds[0].scores["anger"] > preds[0].scores["joy"]
    assert preds[1].scores["joy"] > preds[1].scores["anger"]


@pytest.mark.slow
def test_full_mode_fine_tunes_the_body_within_its_budget(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    result = distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", tmp_path / "m",
                     mode="full", max_steps=6, int8=False, progress=False)  # fmt: skip
    assert result.mode == "full" and result.train_steps == 6
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["student"]["steps"] == 6 and card["student"]["step_kind"] == "contrastive"
    assert "6 contrastive steps" in (tmp_path / "m" / "README.md").read_text()
    assert SetFitBackend(tmp_path / "m").predict_batch(["fine"])[0].scores


@pytest.mark.slow
def test_end_to_end_mode_trains_body_and_head_together(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from llmclf.embeddings import default_body_path

    result = distill(sst2_task, _spec(teacher), data_dir / "unlabelled.jsonl", tmp_path / "m",
                     mode="end-to-end", epochs=2, int8=False, progress=False)  # fmt: skip
    n_train = len(result.selection.rows)
    assert result.mode == "end-to-end" and result.train_steps == 2 * -(-n_train // 32)
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["student"]["epochs"] == 2 and card["student"]["head_c"] is None
    # end to end, the steps are gradient steps of body and head, not contrastive pair steps
    assert card["student"]["step_kind"] == "gradient"
    readme = (tmp_path / "m" / "README.md").read_text()
    assert f"{result.train_steps} gradient steps" in readme and "contrastive" not in readme
    # the body itself was trained: its embeddings moved away from the pretrained body's
    texts = [r["text"] for r in TRAIN[:8]]
    before = SentenceTransformer(str(default_body_path()), device="cpu").encode(texts)
    after = SentenceTransformer(str(tmp_path / "m" / "body"), device="cpu").encode(texts)
    assert float(np.abs(before - after).max()) > 1e-3
    # the jointly trained head was exported like any other: ONNX matches torch
    assert all(p["passed"] for p in card["export"]["parity"])
    preds = SetFitBackend(tmp_path / "m").predict_batch(texts)
    assert all(abs(sum(p.scores.values()) - 1) < 1e-6 for p in preds)


def test_labelled_pool_and_eval_set_load(data_dir: Path) -> None:
    es = load_eval_set(data_dir / "sst2mini")
    assert es.name == "sst2mini" and len(es.cases) == len(EVAL_ROWS)


def test_leftovers_of_a_killed_run_are_tidied(
    teacher: FakeProvider, sst2_task: Task, tmp_path: Path
) -> None:
    """A run killed mid-write leaves a temp dir; one killed mid-swap leaves the old model aside."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = tmp_path / "models"
    (models / f".m.tmp-{dead.pid}-abcd").mkdir(parents=True)
    old = models / f".m.old-{dead.pid}-ef01"
    old.mkdir()
    (old / "labels.json").write_text('["negative", "positive"]')
    alive = models / f".m.tmp-{os.getpid()}-2345"  # a run still going: left alone
    alive.mkdir()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no texts"):
        distill(sst2_task, _spec(teacher), empty, models / "m", progress=False)
    assert sorted(p.name for p in models.iterdir()) == [alive.name, "m"]
    assert (models / "m" / "labels.json").is_file()  # the old model is back in place


def test_few_shot_pool_reaches_the_teacher_and_the_job_id(
    teacher: FakeProvider, data_dir: Path, sst2_task: Task
) -> None:
    pool = REPO / "eval_sets" / "sst2" / "pool.jsonl"
    src = data_dir / "unlabelled.jsonl"
    plain = label_unlabeled(sst2_task, _spec(teacher), src, prompt="few_shot", limit=3,
                            progress=False)  # fmt: skip
    n_plain = len(teacher.chat_requests[-1]["messages"])
    pooled = label_unlabeled(sst2_task, _spec(teacher), src, prompt="few_shot", limit=3,
                             few_shot_pool=pool, progress=False)  # fmt: skip
    # a different job (new labels asked for), with the pool's examples in the prompt
    assert pooled.job != plain.job and pooled.n_new == 3
    assert len(teacher.chat_requests[-1]["messages"]) > n_plain
    with pytest.raises(ConfigError, match="few-shot pool not found"):
        label_unlabeled(sst2_task, _spec(teacher), src, few_shot_pool=data_dir / "nope.jsonl")


def test_binary_certainty_is_measured_from_the_task_threshold(sst2_task: Task) -> None:
    tilted = sst2_task.model_copy(update={"threshold": 0.25})
    assert label_certainty(tilted, ["positive"], {"negative": 0.75, "positive": 0.25}) == 0.5
    assert label_certainty(tilted, ["negative"], {"negative": 1.0, "positive": 0.0}) == 1.0
    assert label_certainty(tilted, ["positive"], {"negative": 0.0, "positive": 1.0}) == 1.0
    # a "negative" at positive score 0.2 is close to the 0.25 threshold: not sure at all
    near = label_certainty(tilted, ["negative"], {"negative": 0.8, "positive": 0.2})
    assert near == pytest.approx(0.6)
    half = sst2_task.model_copy(update={"threshold": 0.5})
    assert label_certainty(half, ["negative"], {"negative": 0.8, "positive": 0.2}) == 0.8
    # the answer's own threshold wins: a calibrated answer was decided at 0.5, not the task's
    calibrated = label_certainty(tilted, ["negative"], {"negative": 0.8, "positive": 0.2}, 0.5)
    assert calibrated == 0.8
    raw = Prediction(labels=("positive",), scores={"negative": 0.6, "positive": 0.4},
                     score_source="logprobs", backend="x")
    assert decided_at(tilted, raw) == 0.25  # an uncalibrated answer: the task's threshold
    assert decided_at(tilted, raw.model_copy(update={"calibrated": True})) == 0.5
    assert decided_at(tilted, raw.model_copy(update={"threshold": 0.3})) == 0.3


def test_end_to_end_refuses_a_budget_of_no_steps(sst2_task: Task) -> None:
    from llmclf.distill.train.end_to_end import finetune_end_to_end

    with pytest.raises(DistillError, match="at least one step"):
        finetune_end_to_end(object(), ["good", "bad"], [["positive"], ["negative"]], sst2_task,
                            max_steps=0)  # fmt: skip
