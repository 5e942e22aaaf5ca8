"""``llmclf review suggest``: a real (head-only) student picks unsure, unlike texts; they go to
the queue once, or to a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("sentence_transformers")

from llmclf.backends.setfit import SetFitBackend
from llmclf.cli.main import app
from llmclf.distill import save_student, train_student
from llmclf.review_strategies import margin
from llmclf.store import open_store
from llmclf.types import Task
from tests.helpers import REPO

SST2 = Path("/work/shared/datasets/sst2")
runner = CliRunner()


def rows(split: str, n: int, skip: int = 0) -> list[dict[str, str]]:
    path = SST2 / f"{split}.jsonl"
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out[skip : skip + n]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    train = rows("train", 48)
    d = tmp_path_factory.mktemp("student") / "sst2"
    student = train_student([r["text"] for r in train], [[r["label"]] for r in train], task,
                            mode="head-only", head_c=0.3)  # fmt: skip
    save_student(student, task, d)
    return d


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_suggest_picks_unsure_unlike_texts_into_the_queue_or_a_file(
    student_dir: Path, tmp_path: Path
) -> None:
    dup = "it 's a movie , i suppose , with some scenes ."
    pool = [r["text"] for r in rows("test", 40)] + [dup] * 10
    unlabeled = tmp_path / "pool.jsonl"
    unlabeled.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n"
                                 for i, t in enumerate(pool)))  # fmt: skip
    out = tmp_path / "picks.jsonl"
    said = invoke("review", "suggest", "--task", "sst2", "--unlabeled", str(unlabeled),
                  "--student", str(student_dir), "--k", "6", "--out", str(out))  # fmt: skip
    assert "wrote 6 suggestions of 50 texts" in said
    picks = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["rank"] for p in picks] == [1, 2, 3, 4, 5, 6]
    assert all("label" not in p for p in picks)  # not gold
    assert len({p["id"] for p in picks}) == 6
    assert sum(p["text"] == dup for p in picks) <= 1  # diversity: one copy at most
    # uncertainty: every pick is among the less sure half of the pool
    model = SetFitBackend.load(student_dir)
    margins = sorted(margin(p.scores) for p in model.predict_batch(pool))
    assert max(p["margin"] for p in picks) <= margins[len(margins) // 2]
    assert picks[0]["margin"] == pytest.approx(margins[0], abs=1e-6)

    said = invoke("review", "suggest", "--task", "sst2", "--unlabeled", str(unlabeled),
                  "--student", str(student_dir), "--k", "6")  # fmt: skip
    assert "queued 6 of 6 suggestions" in said
    queued = open_store().review_list(task="sst2")
    assert [r["text"] for r in queued] == [p["text"] for p in picks]
    assert queued[0]["prediction"]["review_reason"].startswith("suggest: margin ")
    assert queued[0]["prediction"]["task"]["labels"] == ["negative", "positive"]
    again = invoke("review", "suggest", "--task", "sst2", "--unlabeled", str(unlabeled),
                   "--student", str(student_dir), "--k", "6")  # fmt: skip
    assert "queued 0 of 6 suggestions" in again and "6 were queued already" in again
    assert open_store().count("review") == 6
