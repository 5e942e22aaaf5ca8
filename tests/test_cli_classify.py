"""`llmclf classify`: arguments, files and stdin, JSON lines out in input order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmclf.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
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


def test_classify_tsv_and_parquet_files_keep_ids(fake, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\nt1\tloved it, truly\nt2\tdull\n")
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), "--input", str(tsv))
    assert [(r["id"], r["label"]) for r in map(json.loads, res.stdout.splitlines())] == [
        ("t1", "positive"), ("t2", "negative")
    ]  # fmt: skip
    pqf = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["good", "bad"]}), pqf)
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), "--input", str(pqf))
    assert [(r["id"], r["label"]) for r in map(json.loads, res.stdout.splitlines())] == [
        ("1", "positive"), ("2", "negative")
    ]  # fmt: skip


def test_a_bad_input_row_is_one_line_naming_file_line_and_field(fake, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "good"}\n{"text": 7}\n')
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(), "--input", str(f))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: {f}:2: text: must be a string, got int"


def test_llm_options_are_typed_and_a_bad_value_is_one_line(fake):
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(max_tokens=64), "I loved it")
    assert res.returncode == 0, res.stderr
    assert fake.chat_requests[-1]["max_tokens"] == 64
    res = run_cli("classify", "-t", "sst2", "-b", fake.spec(max_tokens="lots"), "I loved it")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: LLM option max_tokens='lots': expected int | None (")
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_missing_api_key_fails_fast_naming_the_variable(fake):
    # a request, had one been made, would land on the fake provider
    env = {"OPENAI_API_BASE": fake.base_url}
    res = run_cli("classify", "--task", "sst2", "--backend", "llm:openai/gpt-4o-mini", "x", env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        "error: [llm:openai/gpt-4o-mini] no API key for openai/gpt-4o-mini: set OPENAI_API_KEY "
        "(or LLMCLF_API_KEY, or api_key= in the backend spec)"
    )
    assert fake.requests == []
