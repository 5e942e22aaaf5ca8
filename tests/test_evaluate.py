"""`llmclf eval` end to end through litellm -> instructor -> HTTP against `FakeProvider`:
stored runs, resume after ``kill -9``, backend errors, ``runs diff``, the regression gate."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmclf.cli.main import app
from llmclf.datasets import load_eval_set
from llmclf.errors import ConfigError, StoreError
from llmclf.evaluate import compare_runs, evaluate, latest_run_id, load_run
from llmclf.redaction import redact_spec
from llmclf.store import Store, open_store
from llmclf.testing.fake_provider import FakeProvider, Fault
from tests.helpers import CASES, REPO, make_eval_set, texts_asked

RULES = {"loved": "positive", "good": "positive"}  # c04 and c08 wrong, c05 wrong


runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


# ---------------------------------------------------------------------------- the API


def test_eval_writes_a_run_with_every_case_and_metrics(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    store = open_store()
    with FakeProvider(rules=RULES, default="negative") as fake:
        spec = fake.spec(api_key="sk-secret-do-not-store")
        run = evaluate(es, spec, progress=False, concurrency=3)
    assert len(fake.chat_requests) == len(CASES)
    assert [p.label for p in run.predictions if p] == [
        "positive", "positive", "negative", "positive", "negative", "negative", "positive",
        "positive",
    ]  # fmt: skip
    assert run.metrics["n"] == 8 and run.metrics["accuracy"] == pytest.approx(5 / 8)
    assert run.metrics["usage"]["llm_calls"] == 8 and run.metrics["usage"]["total_tokens"] > 0
    assert run.prompt_id is not None and run.prompt_id.startswith("zero_shot.v1@")
    assert {p.prompt_hash for p in run.predictions if p} == {run.prompt_id}

    row = store.get_run(run.run_id[:12])  # a unique prefix finds it
    assert row is not None and row["status"] == "done" and row["kind"] == "eval"
    assert row["prompt_hash"] == run.prompt_id and row["eval_set"] == "mini"
    assert row["metrics"]["accuracy"] == pytest.approx(5 / 8)
    cfg = row["config"]
    assert cfg["backend"] == redact_spec(spec) and "api_key" not in cfg["backend"]
    assert cfg["n_cases"] == 8 and cfg["limit"] is None and cfg["prompt_id"] == run.prompt_id
    stored = store.run_cases(run.run_id)
    assert [c["id"] for c in stored] == [c[0] for c in CASES]
    assert stored[0]["gold"] == ["positive"] and stored[0]["prediction"]["text"] == "I loved it"
    # the API key is nowhere in the store file
    con = sqlite3.connect(store.path)
    dump = "\n".join(con.iterdump())
    con.close()
    assert "sk-secret-do-not-store" not in dump

    again = load_run(run.run_id)
    assert [p.label for p in again.predictions if p] == [p.label for p in run.predictions if p]
    assert again.task == es.task and again.cases[2].text == "awful and dull"


def test_limit_runs_the_first_cases_only(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    with FakeProvider(rules=RULES, default="negative") as fake:
        run = evaluate(es, fake.spec(), limit=3, progress=False)
    assert [c.id for c in run.cases] == ["c01", "c02", "c03"] and run.metrics["n"] == 3
    assert len(fake.chat_requests) == 3
    with pytest.raises(ConfigError, match="limit"):
        evaluate(es, "llm:openai/x", limit=0, progress=False)


def test_backend_errors_are_recorded_per_case_and_the_run_finishes(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    with FakeProvider(rules=RULES, default="negative") as fake:
        fake.push(Fault.status(401))  # the first request: auth error, not retried
        run = evaluate(es, fake.spec(cache="false"), progress=False, concurrency=1)
    assert run.predictions[0] is None
    assert run.errors[0] is not None and run.errors[0]["kind"] == "auth"
    assert all(p is not None for p in run.predictions[1:])
    m = run.metrics
    assert m["errors"] == 1 and m["error_kinds"] == {"auth": 1}
    assert m["accuracy"] == pytest.approx(4 / 8)  # the failed case counts as wrong
    assert "(error)" in m["confusion_matrix"]["columns"]
    row = open_store().get_run(run.run_id)
    assert row is not None and row["status"] == "done"
    first = open_store().run_cases(run.run_id)[0]["prediction"]
    assert first["prediction"] is None and first["error"]["kind"] == "auth"


def test_an_unfinished_run_is_resumed_without_asking_again(tmp_path):
    """In-process resume: a run left 'running' with some cases stored continues where it was."""
    es = load_eval_set(make_eval_set(tmp_path))
    store = open_store()
    with FakeProvider(rules=RULES, default="negative") as fake:
        spec = fake.spec(cache="false")
        first = evaluate(es, spec, progress=False, concurrency=2)
        assert len(fake.chat_requests) == 8
        # make it look interrupted after 5 cases: drop 3 stored cases, mark it running again
        con = sqlite3.connect(store.path)
        con.execute("DELETE FROM run_cases WHERE run_id = ? AND position >= 5", (first.run_id,))
        con.execute("UPDATE runs SET status = 'running' WHERE id = ?", (first.run_id,))
        con.commit()
        con.close()
        resumed = evaluate(es, spec, progress=False, concurrency=2)
        assert resumed.run_id == first.run_id and resumed.resumed_cases == 5
        assert sorted(texts_asked(fake, 8)) == sorted(c[1] for c in CASES[5:])
        # a different prompt is a different run
        other = evaluate(es, spec, prompt="minimal", progress=False)
    assert other.run_id != first.run_id and other.prompt_id.startswith("minimal.v1@")
    assert store.count("run_cases", "run_id = ?", (first.run_id,)) == 8
    assert store.get_run(first.run_id)["status"] == "done"  # type: ignore[index]


def test_resume_after_kill_9_never_asks_again_for_finished_cases(tmp_path):
    cases = [(f"k{i:02d}", f"text number {i} {'good' if i % 2 else 'bad'}", "positive")
             for i in range(14)]  # fmt: skip
    d = make_eval_set(tmp_path, "killme", cases)

    def slow(text: str) -> str:
        time.sleep(0.25)
        return "positive" if "good" in text else "negative"

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    db = Path(os.environ["LLMCLF_HOME"]) / "llmclf.db"
    with FakeProvider(labeler=slow) as fake:
        args = [sys.executable, "-m", "llmclf.cli.main", "eval", "-e", str(d),
                "-b", fake.spec(cache="false"), "--concurrency", "2", "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        watcher: Store | None = None
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                if watcher is None and db.exists():
                    watcher = Store(db)
                runs = watcher.list_runs(eval_set="killme") if watcher else []
                if runs and len(watcher.run_cases(runs[0]["id"])) >= 4:  # type: ignore[union-attr]
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        store = Store(db)
        (row,) = store.list_runs(eval_set="killme")
        assert row["status"] == "running"
        finished = {c["prediction"]["text"] for c in store.run_cases(row["id"])}
        assert 4 <= len(finished) < len(cases)
        asked_before = len(fake.chat_requests)

        res = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"resumed run {row['id']}" in res.stdout
        asked_after = texts_asked(fake, asked_before)
    assert not finished & set(asked_after), "a finished case was sent to the model again"
    assert sorted(asked_after) == sorted(t for _, t, _ in cases if t not in finished)
    (final,) = store.list_runs(eval_set="killme")
    assert final["id"] == row["id"] and final["status"] == "done"
    ids = [c["id"] for c in store.run_cases(row["id"])]
    assert sorted(ids) == sorted(c[0] for c in cases)  # each case exactly once
    assert final["metrics"]["n"] == len(cases) and final["metrics"]["resumed_cases"] == len(
        finished
    )


def test_compare_runs_lists_flipped_cases(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    with FakeProvider(rules=RULES, default="negative") as fake:
        a = evaluate(es, fake.spec(cache="false"), progress=False)
        fake.rules = {"loved": "positive", "delight": "positive", "good fun": "positive"}
        b = evaluate(es, fake.spec(cache="false"), progress=False)
    d = compare_runs(a.run_id, b.run_id)
    flips = {f["id"]: f for f in d["flipped"]}
    # c04 and c08 ("good" but negative) fixed, c05 ("delight") fixed; nothing broken
    assert set(flips) == {"c04", "c05", "c08"}
    assert all(f["change"] == "fixed" for f in flips.values())
    assert flips["c05"]["before"] == ["negative"] and flips["c05"]["after"] == ["positive"]
    assert flips["c05"]["text"] == "a quiet delight" and flips["c05"]["gold"] == ["positive"]
    assert d["n_fixed"] == 3 and d["n_broken"] == 0 and d["n_common"] == 8
    assert d["metrics"]["accuracy"]["a"] == pytest.approx(5 / 8)
    assert d["metrics"]["accuracy"]["delta"] == pytest.approx(3 / 8)
    assert d["per_label"]["positive"]["delta"] > 0 and d["same_cases"]
    back = compare_runs(b, a)
    assert back["n_broken"] == 3 and back["metrics"]["accuracy"]["delta"] == pytest.approx(-3 / 8)


# ---------------------------------------------------------------------------- the CLI


def test_cli_eval_prints_metrics_and_runs_list_show_diff(tmp_path):
    d = make_eval_set(tmp_path)
    with FakeProvider(rules=RULES, default="negative") as fake:
        res = cli("eval", "-e", str(d), "-b", fake.spec(cache="false"), "--no-progress")
        assert res.exit_code == 0, res.output
        first = latest_run_id("mini")
        assert first is not None and f"run id: {first}" in res.stdout
        assert "accuracy" in res.stdout and "0.6250" in res.stdout and "per label" in res.stdout
        fake.rules = {"loved": "positive"}
        res = cli("eval", "-e", str(d), "-b", fake.spec(cache="false"), "--json")
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
    second = out["run_id"]
    assert out["metrics"]["accuracy"] == pytest.approx(6 / 8) and out["gate"] is None

    res = cli("runs", "list", "--eval-set", "mini", "--json")
    rows = json.loads(res.stdout)
    assert [r["id"] for r in rows] == [second, first]
    assert cli("runs", "list", "--eval-set", "other").stdout.startswith("no eval runs")
    res = cli("runs", "list")
    assert first in res.stdout and second in res.stdout

    res = cli("runs", "show", second[:-2], "--json")
    shown = json.loads(res.stdout)
    assert shown["id"] == second and shown["metrics"]["accuracy"] == pytest.approx(6 / 8)
    res = cli("runs", "show", second)
    assert "macro F1" in res.stdout and second in res.stdout

    res = cli("runs", "diff", first, second, "--json")
    diff = json.loads(res.stdout)
    # "good fun all round" (c02) broke; "good grief..." (c04) and "not good at all" (c08) fixed
    assert {f["id"]: f["change"] for f in diff["flipped"]} == {
        "c02": "broken", "c04": "fixed", "c08": "fixed"
    }  # fmt: skip
    res = cli("runs", "diff", first, second)
    assert res.exit_code == 0
    assert "broken" in res.stdout and "good fun all round" in res.stdout
    assert "2 fixed, 1 broken" in res.stdout

    with pytest.raises(StoreError, match="no run"):
        cli("runs", "show", "nope")


def test_gate_fails_with_exit_1_naming_the_metric_and_drop(tmp_path):
    d = make_eval_set(tmp_path)
    with FakeProvider(rules=RULES, default="negative") as fake:
        spec = fake.spec(cache="false")
        res = cli("eval", "-e", str(d), "-b", spec, "--baseline", "last")
        assert res.exit_code == 0 and "nothing to gate against" in res.stderr
        baseline = latest_run_id("mini")
        # same answers: the gate passes
        res = cli("eval", "-e", str(d), "-b", spec, "--baseline", "last", "--max-drop", "0.01")
        assert res.exit_code == 0, res.output
        assert f"regression gate passed against baseline {baseline}" in res.stdout
        # worse answers: accuracy 5/8 -> 4/8
        fake.rules = {"loved": "positive", "boring": "positive", "awful": "positive"}
        res = cli("eval", "-e", str(d), "-b", spec, "--baseline", baseline, "--max-drop", "0.01")
        assert res.exit_code == 1
        assert f"regression gate FAILED against baseline {baseline}" in res.stderr
        assert "accuracy dropped by 0.1250 (0.6250 -> 0.5000)" in res.stderr
        assert "macro_f1 dropped by" in res.stderr
        # a looser gate on one metric passes
        res = cli("eval", "-e", str(d), "-b", spec, "--baseline", baseline, "--max-drop", "0.3",
                  "--gate-metric", "accuracy", "--json")  # fmt: skip
        assert res.exit_code == 0, res.output
        gate = json.loads(res.stdout)["gate"]
        assert gate == {"passed": True, "max_drop": 0.3, "metrics": ["accuracy"], "failures": []}


def test_gate_in_a_subprocess_exits_non_zero(tmp_path):
    d = make_eval_set(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FakeProvider(rules=RULES, default="negative") as fake:
        base = evaluate(load_eval_set(d), fake.spec(), progress=False)
        fake.rules = {}
        res = subprocess.run(
            [sys.executable, "-m", "llmclf.cli.main", "eval", "-e", str(d), "-b",
             fake.spec(cache="false"), "--baseline", base.run_id[:-2]],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "accuracy dropped by 0.1250 (0.6250 -> 0.5000)" in res.stderr


def test_baseline_on_another_eval_set_is_refused(tmp_path):
    d1, d2 = make_eval_set(tmp_path, "one"), make_eval_set(tmp_path, "two")
    with FakeProvider(rules=RULES, default="negative") as fake:
        base = evaluate(load_eval_set(d1), fake.spec(), progress=False, limit=2)
        asked = len(fake.chat_requests)
        with pytest.raises(ConfigError, match="is on eval set 'one', not 'two'"):
            cli("eval", "-e", str(d2), "-b", fake.spec(), "--baseline", base.run_id)
        assert len(fake.chat_requests) == asked  # refused before asking the model


def test_few_shot_prompt_defaults_to_the_eval_sets_pool(tmp_path):
    pool = [("an utter joy to watch", "positive"), ("a tedious slog", "negative"),
            ("warm and funny", "positive"), ("dreadful acting", "negative")]  # fmt: skip
    d = make_eval_set(tmp_path, "withpool", CASES[:2], pool=pool)
    pool_texts = {t for t, _ in pool}
    with FakeProvider(rules=RULES, default="negative") as fake:
        res = cli("eval", "-e", str(d), "-b", fake.spec(), "--prompt", "few_shot", "--json")
        assert res.exit_code == 0, res.output
        run = load_run(json.loads(res.stdout)["run_id"])
        assert run.config["few_shot_pool"] == str(d / "pool.jsonl")
        shots = [m["content"] for m in fake.chat_requests[0]["messages"] if m["role"] == "user"]
        assert any(t in s for s in shots for t in pool_texts)  # pool examples in the prompt
        n = len(fake.chat_requests)
        res = cli("eval", "-e", str(d), "-b", fake.spec(), "--prompt", "few_shot", "--no-pool",
                  "--json")  # fmt: skip
        assert res.exit_code == 0, res.output
        assert load_run(json.loads(res.stdout)["run_id"]).config["few_shot_pool"] is None
        shots = [m["content"] for m in fake.chat_requests[n]["messages"] if m["role"] == "user"]
        assert not any(t in s for s in shots for t in pool_texts)


def test_prompt_option_is_refused_for_non_llm_backends(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    with pytest.raises(ConfigError, match="llm: backends only"):
        evaluate(es, "setfit:/nonexistent", prompt="minimal", progress=False)


def test_redact_spec_drops_secrets_only():
    base = "llm:openai/m?api_base=http://127.0.0.1:9/v1"
    spec = f"{base}&api_key=sk-1&max_tokens=9&temperature=0&secret=x"
    assert redact_spec(spec) == f"{base}&max_tokens=9&temperature=0"
    assert redact_spec("setfit:models/x") == "setfit:models/x"


def test_multilabel_eval_end_to_end(tmp_path, tags_task):
    d = tmp_path / "tags"
    d.mkdir()
    (d / "task.yaml").write_text(
        "name: tags\nkind: multilabel\nlabels:\n  joy: happy\n  anger: angry\n"
        "  surprise: surprised\n"
    )
    rows = [("so happy and wow", ["joy", "surprise"]), ("furious", ["anger"]),
            ("happy", ["joy"]), ("meh", [])]  # fmt: skip
    with open(d / "cases.jsonl", "w") as f:
        for i, (t, labs) in enumerate(rows):
            f.write(json.dumps({"id": f"t{i}", "text": t, "labels": labs}) + "\n")
    rules = {"wow": ["joy", "surprise"], "furious": ["anger"], "happy": ["joy"]}
    with FakeProvider(rules=rules, default=[]) as fake:
        run = evaluate(load_eval_set(d), fake.spec(), progress=False)
    m = run.metrics
    assert m["kind"] == "multilabel" and m["accuracy"] == 1.0 and m["hamming_loss"] == 0.0
    assert m["multilabel"]["threshold_tuning"]["n_tune"] + m["multilabel"]["threshold_tuning"][
        "n_held_out"
    ] == 4


def test_secret_values_are_scrubbed_from_stored_error_messages(monkeypatch):
    from llmclf.redaction import redact, secrets_of_spec

    monkeypatch.setenv("LLMCLF_API_KEY", "sk-from-env-1234")
    secrets = secrets_of_spec("llm:openai/m?api_key=sk-in-spec-9876&temperature=0")
    assert sorted(secrets) == ["sk-from-env-1234", "sk-in-spec-9876"]
    msg = "401: bad key sk-in-spec-9876 (env sk-from-env-1234)"
    assert redact(msg, secrets) == "401: bad key *** (env ***)"


# ---------------------------------------------------------------------------- latency


def test_a_batching_backend_has_its_latency_measured_one_text_per_call(tmp_path):
    from llmclf.report import render_html
    from llmclf.testing import FunctionBackend

    es = load_eval_set(make_eval_set(tmp_path))
    student = FunctionBackend(es.task, lambda t: {"negative": 0.3, "positive": 0.7}, name="s")
    run = evaluate(es, student, progress=False)
    texts = [c.text for c in es.cases]
    # the eval asks a batch in one pass, then times each text alone: a batch's wall time is
    # never reported as every text's latency
    assert student.batches == [texts] + [[t] for t in texts]
    m = run.metrics
    assert m["latency_ms"]["n"] == len(texts) and m["latency_ms_batched"]["n"] == len(texts)
    assert m["latency_method"].startswith("one text per call: 8 eval texts timed")
    # stored with the run and shown where latency is shown
    assert load_run(run.run_id).metrics["latency_method"] == m["latency_method"]
    res = cli("runs", "show", run.run_id)
    assert "latency measured" in res.stdout and "one text per call" in res.stdout
    assert m["latency_method"] in render_html(run)


def test_an_llm_run_says_its_latency_is_each_cases_own_request(tmp_path):
    es = load_eval_set(make_eval_set(tmp_path))
    with FakeProvider(rules=RULES, default="negative") as fake:
        run = evaluate(es, fake.spec(), progress=False)
    assert len(fake.chat_requests) == len(CASES)  # no extra calls to time the LLM
    assert run.metrics["latency_method"].startswith("one text per request")
    assert "latency_ms_batched" not in run.metrics
