"""`llmclf classify`: arguments, files and stdin, JSON lines out in input order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
        timeout=120,
    )


def test_classify_texts_given_as_arguments(fake):
    res = run_cli("classify", "--task", "sst2", "--backend", fake.spec(), "I loved it", "meh")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(set(r["scores"]) == {"negative", "positive"} for r in rows)
    assert rows[0]["labels"] == ["positive"]


def test_classify_from_stdin_lines_and_jsonl(fake):
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), stdin="good one\nbad one\n")
    assert [json.loads(x)["label"] for x in res.stdout.splitlines()] == ["positive", "negative"]
    jsonl = '{"id": "a", "text": "so good"}\n{"id": "b", "text": "awful"}\n'
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), stdin=jsonl)
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [("a", "positive"), ("b", "negative")]


def test_classify_from_csv_file(fake, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text("id,text\n1,loved every minute\n2,boring\n3,good fun\n")
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), "--input", str(f))
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["label"] for x in res.stdout.splitlines()] == [
        "positive", "negative", "positive"
    ]  # fmt: skip


def test_errors_are_one_clear_line(fake, tmp_path):
    res = run_cli("classify", "-t", "sst2", "-b", "nope", "x")
    assert res.returncode == 2
    assert "invalid backend spec 'nope'" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "task.yaml"
    bad.write_text("name: t\nkind: binary\nlabels: {a: x, b: y}\npositive_label: c\n")
    res = run_cli("classify", "-t", str(bad), "-b", fake.spec(), "x")
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), "")
    assert res.returncode == 2 and "input #0: text is empty" in res.stderr


def test_help_on_every_command():
    res = run_cli("--help")
    assert res.returncode == 0 and "classify" in res.stdout
    res = run_cli("classify", "--help")
    assert res.returncode == 0 and "--task" in res.stdout
