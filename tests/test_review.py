"""``llmclf review list | label | export``: the queue the router fills, checked in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmclf.backends.base import Hints
from llmclf.cli.main import app
from llmclf.datasets import load_cases
from llmclf.errors import ConfigError
from llmclf.router import Router
from llmclf.store import open_store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider
from llmclf.types import Task
from tests.helpers import REPO, RULES

runner = CliRunner()


@pytest.fixture
def task() -> Task:
    # the shipped task's threshold is tuned for Gemma; these tests script scores around 0.5
    shipped = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    return shipped.model_copy(update={"threshold": 0.5})


@pytest.fixture
def queued(task: Task, llmclf_home: Path) -> list[str]:
    """Route texts through a router whose unsure answers go to the default store's queue."""
    with FakeProvider(rules={"meh": "negative"}, default="positive", confidence=0.6) as llm:
        router = Router.from_config(
            {
                "backends": {"llm": {"spec": llm.spec(), "options": {"max_retries": 0}}},
                "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
                "review": {"threshold": 0.75},
            },
            task=task,
            backends={"student": KeywordStudent(task, RULES)},
        )
        with router:
            router.predict_batch(["a great film", "meh film", "fine, I guess", "awful"],
                                 Hints(request_id="r1"))
    return ["meh film", "fine, I guess"]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_list_shows_the_queued_rows(queued: list[str]) -> None:
    rows = [json.loads(line) for line in invoke("review", "list", "--json").splitlines()]
    assert [r["text"] for r in rows] == queued
    meh, fine = rows
    assert meh["prediction"]["route"] == ["student", "llm"]
    assert meh["prediction"]["label"] == "negative"
    assert fine["prediction"]["scores"] == {"negative": 0.4, "positive": 0.6}
    assert {r["status"] for r in rows} == {"pending"}
    table = invoke("review", "list")
    assert "meh film" in table and "student>llm" in table


def test_label_then_export_gives_gold_that_distill_can_load(
    queued: list[str], task: Task, tmp_path: Path
) -> None:
    ids = [json.loads(line)["id"] for line in invoke("review", "list", "--json").splitlines()]
    assert "labelled positive" in invoke("review", "label", str(ids[0]), "positive")

    store = open_store()
    assert [r["id"] for r in store.review_list(status="pending")] == [ids[1]]
    (done,) = store.review_list(status="labelled")
    assert done["gold"] == ["positive"] and done["text"] == "meh film"

    out = tmp_path / "gold" / "reviewed.jsonl"
    written = invoke("review", "export", "--task", "sst2", "--out", str(out))
    assert "wrote 1 labelled rows" in written
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"id": f"review-{ids[0]}", "text": "meh film", "label": "positive"}]
    (case,) = load_cases(out, task)
    assert (case.text, case.label) == ("meh film", "positive")

    labelled = [json.loads(x) for x in invoke("review", "list", "--status", "labelled",
                                              "--json").splitlines()]
    assert [r["id"] for r in labelled] == [ids[0]]


def test_label_refuses_unknown_labels_and_ids(queued: list[str]) -> None:
    row_id = json.loads(invoke("review", "list", "--json").splitlines()[0])["id"]
    unknown = r"unknown label\(s\) \['great'\].*valid: negative, positive"
    with pytest.raises(ConfigError, match=unknown):
        runner.invoke(app, ["review", "label", str(row_id), "great"], catch_exceptions=False)
    with pytest.raises(ConfigError, match="takes exactly one label"):
        runner.invoke(app, ["review", "label", str(row_id), "positive", "negative"],
                      catch_exceptions=False)
    with pytest.raises(ConfigError, match="no review row with id 999"):
        runner.invoke(app, ["review", "label", "999", "positive"], catch_exceptions=False)
    assert open_store().review_list(status="labelled") == []


def test_multilabel_rows_export_a_labels_list(tmp_path: Path, llmclf_home: Path) -> None:
    store = open_store()
    rid = store.review_add(
        "tags",
        "what a day",
        {"labels": ["joy"], "scores": {"joy": 0.6, "anger": 0.1, "surprise": 0.5},
         "task": {"name": "tags", "kind": "multilabel", "labels": ["joy", "anger", "surprise"]}},
    )
    invoke("review", "label", str(rid), "joy", "surprise")
    out = tmp_path / "tags.jsonl"
    invoke("review", "export", "--out", str(out))
    assert json.loads(out.read_text()) == {
        "id": f"review-{rid}", "text": "what a day", "labels": ["joy", "surprise"]
    }


def test_cli_errors_are_one_line_without_a_traceback(queued: list[str], llmclf_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", "review", "label", "12345", "positive"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: no review row with id 12345"
