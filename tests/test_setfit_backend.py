"""The ``setfit:DIR`` backend: loading a distilled student, scores, runtimes, refusals."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

from llmclf.backends.registry import make_backend
from llmclf.backends.setfit import PAD_SLACK, SetFitBackend, padding_chunks
from llmclf.classifier import Classifier
from llmclf.distill import fit_head, save_student, train_student
from llmclf.errors import ModelLoadError, ParityError
from llmclf.export import export_student, weight_matmuls
from llmclf.types import Task
from tests.helpers import REPO

SST2 = Path("/work/shared/datasets/sst2")


def _sst2_rows(split: str, n: int) -> list[dict[str, str]]:
    path = SST2 / f"{split}.jsonl"
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


@pytest.fixture(scope="module")
def sst2_task() -> Task:
    return Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, sst2_task: Task) -> Path:
    """A real head-only student (MiniLM body + LR head) with ONNX fp32 and int8 exports."""
    rows = _sst2_rows("train", 48)
    d = tmp_path_factory.mktemp("student") / "sst2"
    student = train_student(
        [r["text"] for r in rows], [[r["label"]] for r in rows], sst2_task,
        mode="head-only", head_c=0.3,
    )  # fmt: skip
    save_student(student, sst2_task, d)
    texts = [r["text"] for r in _sst2_rows("test", 24)]
    results = export_student(d, texts, int8=True)
    assert [r.runtime for r in results] == ["onnx", "int8"]
    (d / "router.json").write_text(json.dumps({"escalation_threshold": 0.7}))
    return d


TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the film is strictly routine and dull .",
    "an utterly charming and hilarious film",
    "it 's a mess , a boring , incoherent mess .",
]


def test_scores_cover_every_label_and_sum_to_one(student_dir: Path, sst2_task: Task) -> None:
    backend = SetFitBackend.load(student_dir, task=sst2_task)
    assert backend.runtime == "int8"  # the int8 export is preferred when present
    preds = backend.predict_batch(TEXTS)
    assert len(preds) == len(TEXTS)
    for p in preds:
        assert set(p.scores) == {"negative", "positive"}
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.score_source == "model"
        assert p.backend == f"setfit:{student_dir}"
        assert p.latency_ms > 0
        # binary: the positive label is chosen when its score reaches the student's threshold
        # (0.5, its own: the task's threshold calibrates the LLM teacher's scores)
        expected = "positive" if p.scores["positive"] >= 0.5 else "negative"
        assert p.labels == (expected,)
    assert backend.escalation_threshold == 0.7
    assert backend.threshold == 0.5


def test_runtimes_agree_with_torch(student_dir: Path, sst2_task: Task) -> None:
    torch_b = SetFitBackend(student_dir, task=sst2_task, runtime="torch")
    onnx_b = SetFitBackend(student_dir, task=sst2_task, runtime="onnx")
    int8_b = SetFitBackend(student_dir, task=sst2_task, runtime="int8")
    ref = torch_b.score_matrix(TEXTS)
    assert np.abs(onnx_b.score_matrix(TEXTS) - ref).max() < 1e-3
    assert np.abs(int8_b.score_matrix(TEXTS) - ref).max() < 0.1
    # one text at a time (no padding) gives the batch's scores
    single = np.vstack([onnx_b.score_matrix([t]) for t in TEXTS])
    assert np.abs(single - onnx_b.score_matrix(TEXTS)).max() < 1e-4
    # a long batch is sorted by length and chunked; order is kept
    many = [*TEXTS * 20]
    assert np.abs(onnx_b.score_matrix(many)[: len(TEXTS)] - ref).max() < 1e-3


def test_registry_spec_and_classifier(student_dir: Path, sst2_task: Task) -> None:
    backend = make_backend(f"setfit:{student_dir}?runtime=torch", sst2_task)
    assert isinstance(backend, SetFitBackend) and backend.runtime == "torch"
    clf = Classifier(sst2_task, backend=f"setfit:{student_dir}")
    labels = [p.label for p in clf.predict_many(TEXTS)]
    assert len(labels) == 4 and set(labels) <= {"negative", "positive"}
    with pytest.raises(ModelLoadError, match="unknown setfit option"):
        make_backend(f"setfit:{student_dir}?temperature=0", sst2_task)


def test_a_calibrated_student_applies_its_calibration_json(
    student_dir: Path, sst2_task: Task, tmp_path: Path
) -> None:
    from llmclf.calibrate import calibrate
    from llmclf.calibration import load_calibration
    from llmclf.datasets import load_eval_set

    d = tmp_path / "student"
    shutil.copytree(student_dir, d)
    rep = calibrate(
        load_eval_set("sst2"), f"setfit:{d}", method="platt", limit=80, progress=False
    )
    assert rep.path == d / "calibration.json" and rep.report_cases > 20
    cal = load_calibration(d / "calibration.json")
    assert (cal.method, cal.score_source, cal.prompt_id) == ("platt", "model", None)
    calibrated = SetFitBackend.load(d, task=sst2_task)
    raw = SetFitBackend.load(d, task=sst2_task, calibration="off")
    for p, r in zip(calibrated.predict_batch(TEXTS), raw.predict_batch(TEXTS), strict=True):
        assert p.calibrated and p.score_source == "model+platt"
        assert p.raw_scores == r.scores and not r.calibrated
        assert p.scores != r.scores
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.labels == (max(p.scores, key=lambda k: p.scores[k]),)
    # router.json's 0.7 was a cut on raw scores: the same cut on the calibrated ones, per label
    assert raw.escalation_threshold == 0.7
    esc = calibrated.escalation_threshold
    assert isinstance(esc, dict)
    assert esc["positive"] == pytest.approx(
        cal.apply({"negative": 0.3, "positive": 0.7})["positive"], abs=1e-6
    )
    assert esc["negative"] == pytest.approx(
        cal.apply({"negative": 0.7, "positive": 0.3})["negative"], abs=1e-6
    )

    # distill's stage: fit on cases the student did not train on, write calibration.json
    from llmclf.calibrate import calibrate_student, card_entry

    cases = load_eval_set("sst2").cases
    d2 = tmp_path / "student2"
    shutil.copytree(student_dir, d2)
    rep2 = calibrate_student(d2, sst2_task, cases[:40], cases[40:80], method="temperature")
    assert rep2.path == d2 / "calibration.json" and rep2.fit_cases == 40
    entry = card_entry(rep2)
    assert entry["method"] == "temperature" and set(entry["after"]) == {"accuracy", "ece", "brier"}
    assert SetFitBackend.load(d2, task=sst2_task).predict_batch(TEXTS[:1])[0].calibrated


def test_thread_safe(student_dir: Path, sst2_task: Task) -> None:
    backend = SetFitBackend(student_dir, task=sst2_task)
    expected = [p.scores for p in backend.predict_batch(TEXTS)]
    results: list[list[dict[str, float]]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                results.append([p.scores for p in backend.predict_batch(TEXTS)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40
    assert all(r == expected for r in results)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=80), st.integers(1, 20))
def test_padding_chunks_cover_every_text_once_and_bound_the_padding(
    lengths: list[int], max_size: int
) -> None:
    chunks = padding_chunks(lengths, max_size)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert len(chunk) <= max_size and sizes == sorted(sizes)
        assert len(chunk) * max(sizes) <= PAD_SLACK * sum(sizes) or len(chunk) == 1


def test_a_mixed_length_batch_runs_in_chunks_and_matches_one_by_one(
    student_dir: Path, sst2_task: Task
) -> None:
    """Short and long texts in one batch are run apart (not padded to the longest), and each
    row is what the text alone gives."""
    backend = SetFitBackend(student_dir, task=sst2_task, runtime="onnx")
    mixed = [TEXTS[0], " ".join(TEXTS) * 3, TEXTS[1], " ".join(TEXTS[::-1]) * 3]
    encoder = backend._encoder
    lengths = [len(e.ids) for e in encoder.tokenizer.encode_batch(mixed)]  # type: ignore[union-attr]
    assert len(padding_chunks(lengths, 16)) == 2
    single = np.vstack([backend.score_matrix([t]) for t in mixed])
    assert np.abs(backend.score_matrix(mixed) - single).max() < 1e-4


def test_onnx_threads_and_spinning_from_the_environment(
    student_dir: Path, sst2_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$LLMCLF_ORT_THREADS / $LLMCLF_ORT_SPIN reach ONNX Runtime's session (what
    `llmclf serve` sets for its workers); a spec's threads= wins; a bad value is an error that
    names the variable."""
    monkeypatch.setenv("LLMCLF_ORT_THREADS", "1")
    monkeypatch.setenv("LLMCLF_ORT_SPIN", "0")
    backend = SetFitBackend(student_dir, task=sst2_task, runtime="int8")
    opts = backend._encoder.session.get_session_options()  # type: ignore[union-attr]
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert backend.predict_batch(TEXTS[:2])[0].labels  # and it answers
    spec = SetFitBackend.load(student_dir, task=sst2_task, runtime="int8", threads="2")
    assert spec._encoder.session.get_session_options().intra_op_num_threads == 2  # type: ignore[union-attr]
    for name, bad in (("LLMCLF_ORT_THREADS", "zero"), ("LLMCLF_ORT_SPIN", "2")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ModelLoadError, match=f"\\${name}='{bad}'"):
            SetFitBackend(student_dir, task=sst2_task, runtime="int8")
        monkeypatch.setenv(name, "1")


@pytest.mark.parametrize("bad", ["model_head.pkl", "body/pytorch_model.bin", "head.joblib"])
def test_refuses_files_that_would_unpickle(
    student_dir: Path, sst2_task: Task, tmp_path: Path, bad: str
) -> None:
    d = tmp_path / "m"
    shutil.copytree(student_dir, d)
    (d / bad).write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ModelLoadError, match=bad.rsplit("/", 1)[-1]):
        SetFitBackend(d, task=sst2_task)


def test_missing_or_incomplete_dir(student_dir: Path, sst2_task: Task, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        SetFitBackend(tmp_path / "nope", task=sst2_task)
    d = tmp_path / "m"
    shutil.copytree(student_dir, d)
    (d / "head.json").unlink()
    with pytest.raises(ModelLoadError, match=r"head\.json"):
        SetFitBackend(d, task=sst2_task)
    shutil.rmtree(d)
    shutil.copytree(student_dir, d)
    for f in ("model.onnx", "model.int8.onnx", "body/model.safetensors"):
        (d / f).unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        SetFitBackend(d, task=sst2_task)


def test_label_mismatch_with_task(student_dir: Path, topic_task: Task) -> None:
    with pytest.raises(ModelLoadError, match="trained for labels"):
        SetFitBackend(student_dir, task=topic_task)


def test_task_read_from_dir(student_dir: Path) -> None:
    backend = SetFitBackend(student_dir)
    assert backend.task.name == "sst2"


def test_multilabel_head_scores_are_independent(
    student_dir: Path, tags_task: Task, tmp_path: Path
) -> None:
    d = tmp_path / "tags"
    shutil.copytree(student_dir, d)
    texts = ["so happy and surprised", "furious and angry", "what a surprise", "happy day"]
    gold = [["joy", "surprise"], ["anger"], ["surprise"], ["joy"]]
    emb = SetFitBackend(student_dir, runtime="onnx").embed(texts * 3).astype(np.float64)
    head, _ = fit_head(emb, gold * 3, tags_task, c=10.0)
    (d / "head.json").write_text(json.dumps(head.to_json()))
    (d / "labels.json").write_text(json.dumps(list(tags_task.label_names)))
    (d / "task.json").write_text(json.dumps(tags_task.model_dump(mode="json")))
    backend = SetFitBackend(d, task=tags_task, runtime="onnx")
    preds = backend.predict_batch(texts)
    for p, g in zip(preds, gold, strict=True):
        assert set(p.scores) == {"joy", "anger", "surprise"}
        assert set(p.labels) == {k for k, v in p.scores.items() if v >= backend.threshold}
        assert set(p.labels) == set(g)  # separable training data, fitted exactly
    assert sum(preds[0].scores.values()) > 1.2  # sigmoids, not a softmax


@pytest.mark.slow
def test_int8_keeps_sensitive_matmuls_in_fp32_to_meet_a_tight_bound(
    student_dir: Path, tmp_path: Path
) -> None:
    d = tmp_path / "m"
    shutil.copytree(student_dir, d)
    texts = [r["text"] for r in _sst2_rows("test", 32)]
    results = export_student(d, texts, int8=True, int8_bound=0.002)
    int8 = results[-1]
    assert int8.runtime == "int8" and int8.passed and int8.max_diff <= 0.002
    kept = json.loads((d / "int8_fp32_nodes.json").read_text())
    assert len(kept) == int8.kept_fp32 >= 1
    with pytest.raises(ParityError, match="int8 export fails the parity check"):
        export_student(d, texts, int8=True, int8_bound=-1.0)
    assert not (d / "model.int8.onnx").exists()  # a failed int8 export leaves no int8 file
    # before giving up, every weight MatMul was tried in fp32
    results = export_student(d, texts, int8=True, int8_bound=-1.0, skip_failed_int8=True)
    assert [r.runtime for r in results] == ["onnx", "int8"] and not results[-1].passed
    assert results[-1].kept_fp32 == len(weight_matmuls(d / "model.onnx"))
    assert not (d / "model.int8.onnx").exists()
