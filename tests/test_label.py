"""``llmclf label``: the async, batch and ray engines, their outputs, and resuming across them.

The teacher is `FakeProvider` on 127.0.0.1 (chat completions, and its Files/Batches API reached
through litellm for real); the store is a real SQLite file; Ray tests start a real two-node Ray
cluster on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmclf.cli.main import app
from llmclf.labelling import label
from llmclf.labelling.batch import BatchOptions
from llmclf.store import Store
from llmclf.testing import BatchScript, FakeProvider
from llmclf.types import Task
from tests.helpers import REPO, SENTIMENT_TASK

runner = CliRunner()

TASK_YAML = SENTIMENT_TASK


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "task.yaml"
    p.write_text(TASK_YAML)
    return p


def texts(n: int) -> list[str]:
    return [f"a {'good' if i % 3 == 0 else 'dull'} film, take {i}" for i in range(n)]


def write_input(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts(n)))
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def labels_in_store(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT job, item_key FROM teacher_labels").fetchall()


def fast_batch(**kw: Any) -> BatchOptions:
    return BatchOptions(poll_s=0.0, progress=False, **kw)


# -- async (today's path) -------------------------------------------------------------------------
def test_cli_async_labels_every_text_into_jsonl_and_a_rerun_asks_nothing(
    fake: FakeProvider, task_file: Path, tmp_path: Path, llmclf_home: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 12)
    out = tmp_path / "labels.jsonl"
    args = [
        "label",
        "--task",
        str(task_file),
        "--teacher",
        fake.spec(),
        "--input",
        str(src),
        "--out",
        str(out),
        "--no-progress",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["labelled"] == 12 and summary["new"] == 12 and summary["complete"]
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == texts(12)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(12)]
    assert [r["label"] for r in rows] == [
        "positive" if "good" in t else "negative" for t in texts(12)
    ]
    first = rows[0]
    assert set(first["scores"]) == {"negative", "positive"}
    assert first["score_source"] == "logprobs"
    assert first["prompt_id"].startswith(Task.from_yaml_text(TASK_YAML).prompt)
    assert first["teacher"] == fake.spec()
    assert len(fake.chat_requests) == 12
    # a re-run labels nothing (not even from the cache: the store has every label)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["new"] == 0
    assert len(fake.chat_requests) == 12
    assert len(labels_in_store(llmclf_home / "llmclf.db")) == 12


def test_parquet_and_dataset_directory_outputs(
    fake: FakeProvider, task_file: Path, tmp_path: Path
) -> None:
    import datasets

    src = write_input(tmp_path / "in.jsonl", 6)
    pq = label(task_file, fake.spec(), src, tmp_path / "labels.parquet", progress=False).out
    assert pq is not None and pq.is_file()
    ds = datasets.load_dataset("parquet", data_files=str(pq))["train"]
    assert ds["text"] == texts(6)
    assert set(ds.column_names) >= {
        "text",
        "label",
        "scores",
        "score_source",
        "prompt_id",
        "teacher",
    }
    assert ds[0]["scores"].keys() == {"negative", "positive"}
    d = label(task_file, fake.spec(), src, tmp_path / "labels_ds", progress=False).out
    assert d is not None
    loaded = datasets.load_from_disk(str(d))
    assert loaded["label"] == ds["label"]
    assert len(fake.chat_requests) == 6  # the second run took the stored labels


def test_multilabel_rows_carry_labels(tags_task: Task, tmp_path: Path) -> None:
    with FakeProvider(rules={"wow": ["joy", "surprise"]}, default=["anger"]) as fp:
        src = tmp_path / "in.txt"
        src.write_text("wow what a day\nthis is infuriating\n")
        r = label(tags_task, fp.spec(), src, tmp_path / "out.jsonl", progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert r.complete
    assert [sorted(x["labels"]) for x in rows] == [["joy", "surprise"], ["anger"]]
    assert "label" not in rows[0]


def test_bad_input_names_the_file_and_line(fake: FakeProvider, task_file: Path, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    res = runner.invoke(
        app,
        [
            "label",
            "-t",
            str(task_file),
            "-b",
            fake.spec(),
            "-i",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--no-progress",
        ],
    )
    assert res.exit_code != 0
    assert f"{src}:2" in str(res.exception) or f"{src}:2" in res.output
    assert fake.chat_requests == []
    res = runner.invoke(
        app, ["label", "-t", str(task_file), "-b", fake.spec(), "-i", str(src), "--engine", "spark"]
    )
    assert res.exit_code != 0 and "spark" in str(res.exception)


# -- batch: request bodies, chunking, polling -----------------------------------------------------
def test_batch_submits_once_then_status_downloads_and_labels_match_online(
    task_file: Path, tmp_path: Path, llmclf_home: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 7)
    out = tmp_path / "labels.jsonl"
    with FakeProvider(rules={"good": "positive"}, default="negative") as fp:
        fp.batches.script(BatchScript(polls=2))
        spec = fp.spec()
        args = [
            "label",
            "-t",
            str(task_file),
            "-b",
            spec,
            "-i",
            str(src),
            "-o",
            str(out),
            "--engine",
            "batch",
            "--max-requests",
            "3",
            "--no-progress",
        ]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        s = json.loads(res.stdout.strip().splitlines()[-1])
        assert s["submitted"] == 3 and s["labelled"] == 0 and not s["complete"]
        assert [b["requests"] for b in s["batches"]] == [3, 3, 1]
        assert fp.chat_requests == []
        # each batch file: the online request body per line, custom_id = the item key
        files = [fp.batches.files[b["input_file_id"]]["content"] for b in fp.batches.created]
        lines = [json.loads(x) for f in files for x in f.decode().splitlines()]
        assert len(lines) == 7 and all(ln["url"] == "/v1/chat/completions" for ln in lines)
        store = Store(llmclf_home / "llmclf.db")
        chunk_keys = [k for c in store.batches(s["job"]) for k in c["keys"]]
        assert [ln["custom_id"] for ln in lines] == chunk_keys
        # --status polls (validating -> in_progress), then downloads: nothing is resubmitted
        for _ in range(3):
            res = runner.invoke(app, [*args, "--status"])
            assert res.exit_code == 0, res.output
        s = json.loads(res.stdout.strip().splitlines()[-1])
        assert s["complete"] and s["labelled"] == 7
        assert len(fp.batches.created) == 3
        assert {b["status"] for b in s["batches"]} == {"done"}
        batch_rows = read_jsonl(out)
        # the same texts online (a fresh cache) give the same labels and scores
        online = label(
            Task.from_yaml(task_file),
            spec,
            src,
            tmp_path / "online.jsonl",
            store=Store(tmp_path / "other.db"),
            progress=False,
        )
        assert online.n_new == 7
        online_rows = read_jsonl(tmp_path / "online.jsonl")
        strip = [{k: v for k, v in r.items()} for r in online_rows]
        assert batch_rows == strip
        # and the body an online call sent for a text is that text's batch line body
        # (online requests run concurrently: match them by text, not by order)
        for ln in lines:
            text = FakeProvider.text_of(ln["body"])
            (sent,) = [b for b in fp.chat_requests if FakeProvider.text_of(b) == text]
            assert sent == ln["body"]
        # classify on the batch's store is a cache hit: same cache key as an online call
        before = len(fp.chat_requests)
        res = runner.invoke(app, ["classify", "-t", str(task_file), "-b", spec, texts(7)[0]])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.splitlines()[-1])["cached"] is True
        assert len(fp.chat_requests) == before


def test_batch_cost_is_at_the_batch_price(task_file: Path, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 4)
    with FakeProvider(default="negative") as fp:
        spec = f"llm:openai/gpt-4o-mini?api_base={fp.base_url}&api_key=sk-test"
        r = label(task_file, spec, src, None, engine="batch", batch_options=fast_batch(wait=True))
        assert r.complete
        u = r.usage
        assert u.llm_calls == 4 and u.prompt_tokens > 0
        expected = u.prompt_tokens * 0.075e-6 + u.completion_tokens * 0.3e-6  # half of online
        assert u.cost_usd == pytest.approx(expected)
        online = label(task_file, spec, src, None, store=Store(tmp_path / "o.db"), progress=False)
        assert online.usage.cost_usd == pytest.approx(2 * expected)


def test_failed_malformed_garbled_and_lost_lines(task_file: Path, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 8)
    store = Store(tmp_path / "s.db")
    with FakeProvider(rules={"good": "positive"}, default="negative") as fp:
        from llmclf.labelling.job import LabelJob

        job = LabelJob.open(Task.from_yaml(task_file), fp.spec(), src, store=store)
        k = [it.key for it in job.items]
        job.close()
        fp.batches.script(
            BatchScript(polls=1, fail={k[0]}, malformed={k[1]}, garble={k[2]}, drop={k[3]})
        )
        r = label(
            task_file,
            fp.spec(),
            src,
            tmp_path / "o.jsonl",
            engine="batch",
            store=store,
            batch_options=fast_batch(wait=True),
        )
        assert r.complete and r.n_labelled == 8 and not r.failures
        # the failed and the invalid line were retried online; the garbled and the lost one
        # went into a second batch of just those two
        assert sorted(FakeProvider.text_of(b) for b in fp.chat_requests) == sorted(
            [job.items[0].text, job.items[1].text]
        )
        assert len(fp.batches.created) == 2
        assert r.batches[0]["info"]["invalid_or_failed"] == 2
        assert r.batches[0]["info"]["malformed_lines"] == 1
        assert r.batches[0]["info"]["unfinished"] == 2
        assert sorted(r.batches[1]["keys"]) == sorted([k[2], k[3]])
        assert r.batches[1]["generation"] == 1
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    assert len(labels_in_store(tmp_path / "s.db")) == 8


def test_online_retries_are_bounded_and_the_rest_reported(task_file: Path, tmp_path: Path):
    src = write_input(tmp_path / "in.jsonl", 5)
    store = Store(tmp_path / "s.db")
    with FakeProvider(default="negative") as fp:
        from llmclf.labelling.job import LabelJob

        job = LabelJob.open(Task.from_yaml(task_file), fp.spec(), src, store=store)
        k = [it.key for it in job.items]
        job.close()
        fp.batches.script(BatchScript(fail={k[1], k[3]}))
        r = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=store,
            batch_options=fast_batch(wait=True, max_online_retries=1),
        )
        assert len(fp.chat_requests) == 1
        assert r.n_labelled == 4 and r.n_missing == 1
        assert len(r.failures) == 1 and r.failures[0]["line"] == 4
        assert "HTTP 500" in r.failures[0]["error"]
        # a re-run submits only the missing item, in a new batch
        r2 = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=store,
            batch_options=fast_batch(wait=True),
        )
        assert r2.complete and len(fp.batches.created) == 2
        assert r2.batches[-1]["keys"] == [k[3]]


@pytest.mark.parametrize("final", ["expired", "failed", "cancelled"])
def test_an_expired_or_failed_batch_resubmits_only_unfinished_items(
    task_file: Path, tmp_path: Path, final: str
) -> None:
    src = write_input(tmp_path / "in.jsonl", 6)
    store = Store(tmp_path / "s.db")
    with FakeProvider(default="negative") as fp:
        fp.batches.script(BatchScript(polls=1, final=final, finished=2))
        r = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=store,
            batch_options=fast_batch(wait=True),
        )
        assert r.complete and r.n_labelled == 6
        assert fp.chat_requests == []
        first, second = r.batches
        assert first["status"] == "retired" and first["info"]["provider_status"] == final
        ran = 0 if final == "failed" else 2
        assert first["info"]["labelled"] == ran
        assert len(second["keys"]) == 6 - ran
        assert set(second["keys"]).isdisjoint(first["keys"][:ran])
    assert len(labels_in_store(tmp_path / "s.db")) == 6


def test_a_submission_interrupted_before_its_id_was_recorded_is_found_not_resubmitted(
    task_file: Path, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 4)
    db = tmp_path / "s.db"
    with FakeProvider(default="negative") as fp:
        fp.batches.script(BatchScript(polls=50))
        r = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=Store(db),
            batch_options=fast_batch(),
        )
        assert r.extra["submitted"] == 1
        # as if killed between the provider's answer and recording the batch id
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE label_batches SET batch_id = NULL, status = 'submitting'")
        (bid,) = fp.batches.batches
        fp.batches._internal[bid] = (BatchScript(polls=0), 0)  # let it finish now
        r = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=Store(db),
            batch_options=fast_batch(wait=True),
        )
        assert r.complete and r.extra["submitted"] == 0
        assert len(fp.batches.created) == 1
        assert r.batches[0]["batch_id"] == bid


def test_kill_9_between_submit_and_download_then_rerun_downloads_without_resubmitting(
    task_file: Path, tmp_path: Path, llmclf_home: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 10)
    db = llmclf_home / "llmclf.db"
    with FakeProvider(rules={"good": "positive"}, default="negative") as fp:
        fp.batches.script(BatchScript(polls=10_000), BatchScript(polls=10_000))
        env = {**os.environ, "PYTHONPATH": str(REPO), "LLMCLF_HOME": str(llmclf_home)}
        args = [
            sys.executable,
            "-m",
            "llmclf.cli.main",
            "label",
            "-t",
            str(task_file),
            "-b",
            fp.spec(),
            "-i",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--engine",
            "batch",
            "--max-requests",
            "5",
            "--wait",
            "--poll-s",
            "0.05",
            "--no-progress",
        ]
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if db.exists():
                    with sqlite3.connect(db) as conn:
                        try:
                            n = conn.execute(
                                "SELECT COUNT(*) FROM label_batches WHERE batch_id IS NOT NULL"
                            ).fetchone()[0]
                        except sqlite3.OperationalError:
                            n = 0
                    if n == 2:
                        break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            else:
                pytest.fail("the batches were never submitted")
            time.sleep(0.3)  # it is polling now
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert len(fp.batches.created) == 2
        assert labels_in_store(db) == []
        for bid in fp.batches.batches:  # the provider finishes them while nobody watches
            fp.batches._internal[bid] = (BatchScript(polls=0), 0)
        r = label(
            task_file,
            fp.spec(),
            src,
            tmp_path / "o.jsonl",
            engine="batch",
            store=Store(db),
            batch_options=fast_batch(wait=True, max_requests=5),
        )
        assert r.complete and r.extra["submitted"] == 0 and r.n_new == 10
        assert len(fp.batches.created) == 2  # never resubmitted
        assert fp.chat_requests == []
    keys = labels_in_store(db)
    assert len(keys) == 10 == len(set(keys))
    assert Store(db).integrity_check() == "ok"


def test_engines_share_labels_a_batch_then_async_run_asks_only_for_the_rest(
    task_file: Path, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 9)
    store = Store(tmp_path / "s.db")
    with FakeProvider(default="negative") as fp:
        r = label(
            task_file,
            fp.spec(),
            src,
            None,
            engine="batch",
            store=store,
            limit=4,
            batch_options=fast_batch(wait=True),
        )
        assert r.n_labelled == 4
        r = label(task_file, fp.spec(), src, tmp_path / "o.jsonl", store=store, progress=False)
        assert r.complete and r.n_new == 5
        assert len(fp.chat_requests) == 5
        # and a batch run now has nothing to submit
        r = label(
            task_file, fp.spec(), src, None, engine="batch", store=store, batch_options=fast_batch()
        )
        assert r.extra["submitted"] == 0 and r.complete
    assert len(labels_in_store(tmp_path / "s.db")) == 9


def test_batch_lines_for_a_vllm_teacher_carry_structured_outputs(
    task_file: Path, tmp_path: Path
) -> None:
    """``--engine batch`` with ``hosted_vllm``: each batch line's body is what a vLLM server
    receives online (the labels in ``structured_outputs.choice``, no ``response_format``, no
    ``guided_*``), and the bare-label answers in the result file parse into labels."""
    src = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "labels.jsonl"
    with FakeProvider(rules={"good": "positive"}, default="negative") as fp:
        spec = f"llm:hosted_vllm/Qwen/Qwen2.5-7B-Instruct?api_base={fp.base_url}"
        r = label(task_file, spec, src, out, engine="batch", batch_options=fast_batch(wait=True))
        assert r.complete and r.n_labelled == 5 and fp.chat_requests == []
        (created,) = fp.batches.created
        content = fp.batches.files[created["input_file_id"]]["content"]
        lines = [json.loads(x) for x in content.decode().splitlines()]
        assert len(lines) == 5
        for ln in lines:
            body = ln["body"]
            assert body["model"] == "Qwen/Qwen2.5-7B-Instruct"
            assert body["structured_outputs"] == {"choice": ["negative", "positive"]}
            assert "response_format" not in body
            assert not any(k.startswith("guided_") for k in body)
            assert body["logprobs"] is True and body["temperature"] == 0.0
            # the provider's result line is the bare label, as vLLM answers a choice
            answer = fp.answer_body(body)["choices"][0]["message"]["content"]
            assert answer in ("negative", "positive")
        rows = read_jsonl(out)
        assert [row["label"] for row in rows] == [
            "positive" if "good" in t else "negative" for t in texts(5)
        ]
        assert {row["score_source"] for row in rows} == {"logprobs"}
        # online, into a fresh store: the same bodies on the wire and the same rows
        online = label(
            task_file, spec, src, tmp_path / "online.jsonl", store=Store(tmp_path / "o.db"),
            progress=False,
        )  # fmt: skip
        assert online.n_new == 5
        for ln in lines:
            text = FakeProvider.text_of(ln["body"])
            (sent,) = [b for b in fp.chat_requests if FakeProvider.text_of(b) == text]
            assert sent == ln["body"]
        assert read_jsonl(tmp_path / "online.jsonl") == rows


def test_batch_needs_an_llm_teacher(task_file: Path, tmp_path: Path) -> None:
    from llmclf.errors import ConfigError

    src = write_input(tmp_path / "in.jsonl", 2)
    with pytest.raises(ConfigError, match="llm: teacher"):
        label(task_file, "setfit:nowhere", src, None, engine="batch")


# -- ray ------------------------------------------------------------------------------------------
def _ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _ray_available(), reason="ray[data] is not installed")


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A real Ray cluster on loopback: a head and one worker node (both on this machine)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("PYTHONPATH", str(REPO))
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "object_store_memory": 80 * 1024 * 1024,
            # notice a dead node in about a second, not the default fifteen
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 300,
                "health_check_failure_threshold": 3,
            },
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@needs_ray
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_survives_a_worker_node_dying_and_matches_the_async_engine(
    ray_cluster: Any, task_file: Path, tmp_path: Path
) -> None:
    """A real two-node Ray cluster labels what an async run left; the worker node is killed
    mid-run: the run completes, nothing is lost or stored twice, and the labels are the async
    engine's. (One test, so the cluster and the actors start once: about a minute on 2 cores.)"""
    n, first = 120, 30
    src = write_input(tmp_path / "in.jsonl", n)
    db = tmp_path / "s.db"
    worker = ray_cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
    ray_cluster.wait_for_nodes()
    killed = threading.Event()
    answered = [0]
    lock = threading.Lock()
    hold_after = first + (n - first) // 4

    def labeler(text: str) -> str:
        with lock:
            answered[0] += 1
            held = answered[0] > hold_after
        if held:  # a quarter of Ray's share is answered: the rest waits for the node's death
            killed.wait(120)
        return "positive" if "good" in text else "negative"

    with FakeProvider(labeler=labeler) as fp:
        part = label(task_file, fp.spec(), src, None, store=Store(db), limit=first, progress=False)
        assert part.n_new == first

        def killer() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    done = len(labels_in_store(db))
                except sqlite3.Error:
                    done = 0
                if done >= first + (n - first) // 8:
                    ray_cluster.remove_node(worker, allow_graceful=False)
                    killed.set()
                    return
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        r = label(
            task_file,
            fp.spec(),
            src,
            tmp_path / "ray.jsonl",
            engine="ray",
            store=Store(db),
            actors=2,
            concurrency=2,
            progress=False,
        )
        t.join(30)
        assert killed.is_set(), "the run finished before the worker node could be killed"
        assert r.complete and r.n_labelled == n and not r.failures
        keys = labels_in_store(db)
        assert len(keys) == n == len(set(keys))
        # a re-run asks nothing
        asked = len(fp.chat_requests)
        again = label(task_file, fp.spec(), src, None, engine="ray", store=Store(db))
        assert again.n_new == 0 and len(fp.chat_requests) == asked
        # the async engine on a fresh store gives the same rows
        label(
            task_file,
            fp.spec(),
            src,
            tmp_path / "async.jsonl",
            store=Store(tmp_path / "a.db"),
            progress=False,
        )
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "async.jsonl")


# -- distill --labels: labels made already, no teacher call ---------------------------------------
@pytest.mark.slow
def test_distill_trains_on_a_labels_file_without_asking_the_teacher(
    fake: FakeProvider, task_file: Path, tmp_path: Path, llmclf_home: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 24)
    out = tmp_path / "labels.jsonl"
    res = runner.invoke(app, ["label", "--task", str(task_file), "--teacher", fake.spec(),
                              "--input", str(src), "--out", str(out), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    asked = len(fake.chat_requests)
    model = tmp_path / "student"
    res = runner.invoke(app, ["distill", "--task", str(task_file), "--teacher", fake.spec(),
                              "--labels", str(out), "--out", str(model), "--mode", "head-only",
                              "--no-int8", "--quiet", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(fake.chat_requests) == asked  # the file's labels, not the teacher's calls
    card = json.loads((model / "card.json").read_text())
    assert card["data"]["n_labelled"] == 24 and card["data"]["source"] == str(out)
    assert card["data"]["teacher_counts"] == {"negative": 16, "positive": 8}


def test_distill_labels_file_errors_name_the_file_line_and_field(
    task_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text(
        json.dumps({"text": "fine", "label": "positive"}) + "\n"
        + json.dumps({"text": "meh", "label": "neutral"}) + "\n"
    )  # fmt: skip
    args = ["distill", "--task", str(task_file), "--teacher", "llm:local", "--labels", str(bad),
            "--out", str(tmp_path / "m"), "--quiet"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert f"{bad}:2: label: unknown label 'neutral'" in str(res.exception)
    assert not (tmp_path / "m").exists()
