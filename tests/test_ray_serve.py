"""``llmclf serve --ray``: the service as a Ray Serve application on a real local Ray cluster
(a head and a second node on loopback), with a real SetFit student in a 2-replica deployment
and the escalation LLM (`FakeProvider`) in its own.

- The HTTP API answers as ``llmclf serve`` does: the same requests to both get the same
  statuses and JSON bodies (401 without a key, 422 on a bad body, predictions, tasks).
- One student replica is killed under load: after the client's retry budget no request failed,
  no answer fell back from the student because of it, the review queue holds each request id
  exactly once, and Ray brings the replica back.
- ``--print-config`` writes a Serve config that Ray's own schema accepts, naming the
  deployments, and builds the application through its ``import_path``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("ray.serve")

from typer.testing import CliRunner

from llmclf.cli.main import app as cli
from llmclf.errors import ConfigError
from llmclf.testing.fake_provider import FakeProvider
from tests.helpers import REPO, free_port, metric

KEY_ENV = "LLMCLF_TEST_RAY_KEYS"
KEY = "s3cret-ray"
SST2 = Path("/work/shared/datasets/sst2")
TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the film is strictly routine and dull .",
    "an utterly charming and hilarious film",
    "it 's a mess , a boring , incoherent mess .",
    "meh , it has its moments",
    "the acting is fine but the plot drags",
]


def _rows(split: str, n: int) -> list[dict[str, str]]:
    path = SST2 / f"{split}.jsonl"
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


def _router_yaml(path: Path, student: str, llm: FakeProvider, threshold: float = 0.7) -> Path:
    path.write_text(
        "task: sst2\n"
        "backends:\n"
        f"  student: 'setfit:{student}'\n"
        f"  llm: {{spec: '{llm.spec()}', options: {{max_retries: 0}}}}\n"
        f"cascade: {{student: student, escalate_to: llm, threshold: {threshold}}}\n"
        "fallbacks: [llm]\n"
        "review: {threshold: 1.0}\n",  # every answer is queued: each request id once
        encoding="utf-8",
    )
    return path


# -- --print-config (no cluster) ------------------------------------------------------------------
def test_print_config_is_a_serve_config_naming_the_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve.schema import ServeDeploySchema

    from llmclf.service.ray_app import RayAppArgs

    with FakeProvider(default="positive") as llm:
        cfg = _router_yaml(tmp_path / "router.yaml", "models/sst2", llm)
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("LLMCLF_DATABASE_URL", "postgresql://app:pg-s3cret@db.internal/llmclf")
    result = CliRunner().invoke(
        cli,
        ["serve", "--router", str(cfg), "--ray", "--autoscale", "2,6", "--print-config",
         "--api-key-env", KEY_ENV, "--host", "0.0.0.0", "--port", "8100"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and "pg-s3cret" not in result.output  # no secret written
    config = ServeDeploySchema.model_validate(yaml.safe_load(result.stdout))
    assert config.http_options.port == 8100
    (app,) = config.applications
    assert app.import_path == "llmclf.service.ray_app:app_builder"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"ingress", "student", "llm"}
    auto = yaml.safe_load(result.stdout)["applications"][0]["deployments"][1]
    assert auto["name"] == "student"
    assert auto["autoscaling_config"]["min_replicas"] == 2
    assert auto["autoscaling_config"]["max_replicas"] == 6
    assert deployments["student"].max_ongoing_requests >= 64  # room for a batch to fill
    assert app.runtime_env["env_vars"]["LLMCLF_DATABASE_URL"] == (
        "postgresql://app:***@db.internal/llmclf"
    )
    # a replica reserves half a CPU: one ONNX Runtime thread, no spin-waiting
    assert app.runtime_env["env_vars"]["LLMCLF_ORT_THREADS"] == "1"
    assert app.runtime_env["env_vars"]["LLMCLF_ORT_SPIN"] == "0"
    assert app.runtime_env["env_vars"]["LLMCLF_LOCAL_THREADS"] == "1"  # the LLM, likewise
    args = RayAppArgs.model_validate(app.args)
    assert args.routers == [str(cfg.resolve())] and args.api_key_env == KEY_ENV
    # what `serve run` does with the file: import the builder and call it with the args
    module, name = app.import_path.split(":")
    built = getattr(importlib.import_module(module), name)(app.args)
    assert type(built).__name__ == "Application"


def test_the_shipped_example_config_is_valid() -> None:
    from ray.serve.schema import ServeDeploySchema

    from llmclf.service.ray_app import RayAppArgs

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((REPO / "examples" / "ray_serve.yaml").read_text(encoding="utf-8"))
    )
    (app,) = config.applications
    assert app.import_path == "llmclf.service.ray_app:app_builder"
    assert {d.name for d in app.deployments} == {"ingress", "student", "llm"}
    RayAppArgs.model_validate(app.args)


def test_ray_flags_need_ray_and_replicas_or_autoscale(tmp_path: Path) -> None:
    with FakeProvider(default="positive") as llm:
        cfg = _router_yaml(tmp_path / "router.yaml", "models/sst2", llm)
    runner = CliRunner()
    alone = runner.invoke(cli, ["serve", "--router", str(cfg), "--replicas", "2"])
    both = runner.invoke(cli, ["serve", "--router", str(cfg), "--ray", "--replicas", "2",
                               "--autoscale", "1,3", "--print-config"])  # fmt: skip
    bad = runner.invoke(cli, ["serve", "--router", str(cfg), "--ray", "--autoscale", "3",
                              "--print-config"])  # fmt: skip
    assert isinstance(alone.exception, ConfigError)
    assert "--replicas need --ray" in str(alone.exception)
    assert isinstance(both.exception, ConfigError) and "not both" in str(both.exception)
    assert isinstance(bad.exception, ConfigError) and "MIN,MAX" in str(bad.exception)


# -- on a real Ray cluster ------------------------------------------------------------------------
@dataclass
class RayService:
    url: str
    router: Path
    store_db: Path
    proc: subprocess.Popen[bytes]
    log: Path


def _train_student(d: Path) -> Path:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("onnxruntime")
    from llmclf.distill import save_student, train_student
    from llmclf.export import export_student
    from llmclf.types import Task

    task = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    rows = _rows("train", 48)
    student = train_student(
        [r["text"] for r in rows], [[r["label"]] for r in rows], task,
        mode="head-only", head_c=0.3,
    )  # fmt: skip
    save_student(student, task, d)
    export_student(d, [r["text"] for r in _rows("test", 16)], int8=False)  # replicas skip torch
    return d


def _wait(check: Any, svc_proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc_proc.poll() is not None:
            raise AssertionError(f"llmclf serve --ray exited:\n{log.read_text()[-6000:]}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out; llmclf serve --ray log:\n{log.read_text()[-6000:]}")


@pytest.fixture(scope="module")
def ray_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayService]:
    """``llmclf serve --ray --replicas 2`` joined to a real 2-node Ray cluster on loopback."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("PYTHONPATH", str(REPO))
    import ray
    from ray.cluster_utils import Cluster

    work = tmp_path_factory.mktemp("ray-serve")
    student = _train_student(work / "student")
    from llmclf.backends.setfit import SetFitBackend

    # a threshold between the student's confidences on TEXTS: it answers some, escalates others
    confidences = sorted(p.confidence for p in SetFitBackend.load(student).predict_batch(TEXTS))
    threshold = round((confidences[2] + confidences[3]) / 2, 4)
    with FakeProvider(rules={"meh": "negative", "awful": "negative"}, default="positive") as llm:
        cfg = _router_yaml(work / "router.yaml", str(student), llm, threshold)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "include_dashboard": False,
                "object_store_memory": 80 * 1024 * 1024,
                "_system_config": {
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 300,
                    "health_check_failure_threshold": 3,
                },
            },
        )
        proc: subprocess.Popen[bytes] | None = None
        try:
            cluster.add_node(num_cpus=2, object_store_memory=80 * 1024 * 1024)
            cluster.wait_for_nodes()
            port = free_port()
            db = work / "store.db"
            env = {
                **os.environ,
                "LLMCLF_DATABASE_URL": f"sqlite:///{db}",
                "LLMCLF_HOME": str(work / "home"),
                KEY_ENV: KEY,
            }
            log = work / "serve.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
                     "--ray", "--ray-address", cluster.address, "--replicas", "2",
                     "--port", str(port), "--api-key-env", KEY_ENV,
                     # texts wait up to 200 ms in a replica's batch: a killed replica always
                     # takes requests in flight with it
                     "--batch-wait-ms", "200"],
                    env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            _wait(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200,
                  proc, log, 240)  # fmt: skip
            ray.init(address=cluster.address, log_to_driver=False)
            yield RayService(url=url, router=cfg, store_db=db, proc=proc, log=log)
        finally:
            rc = None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            ray.shutdown()
            cluster.shutdown()
    # SIGTERM stops `llmclf serve --ray` cleanly (its application deleted from the cluster)
    assert rc == 0, log.read_text()[-3000:]


def _normal(resp: httpx.Response) -> tuple[int, Any]:
    """Status and body, without what differs from call to call (latency, cache hits)."""
    body = resp.json()

    def clean(p: dict[str, Any]) -> dict[str, Any]:
        p = {k: v for k, v in p.items() if k not in ("latency_ms", "cached")}
        p["scores"] = {k: round(v, 3) for k, v in p["scores"].items()}
        p["confidence"] = round(p["confidence"], 3)
        return p

    if "prediction" in body:
        body["prediction"] = clean(body["prediction"])
    if "predictions" in body:
        body["predictions"] = [clean(p) for p in body["predictions"]]
    return resp.status_code, body


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_the_http_api_answers_as_llmclf_serve_does(
    ray_service: RayService, tmp_path: Path
) -> None:
    from llmclf.router import Router
    from llmclf.service import ServiceSettings, create_app
    from llmclf.store import Store
    from tests.helpers import Server

    auth = {"X-API-Key": KEY}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("post", "/v1/classify", {"json": {"text": TEXTS[0]}}),  # no key
        ("post", "/v1/classify", {"json": {"text": TEXTS[0]}, "headers": {"X-API-Key": "no"}}),
        ("post", "/v1/classify", {"json": {"text": 3}, "headers": auth}),
        ("post", "/v1/classify", {"json": {"text": "a", "texts": ["b"]}, "headers": auth}),
        ("post", "/v1/classify", {"content": b"{nope", "headers": {
            **auth, "content-type": "application/json"}}),
        ("post", "/v1/classify", {"json": {"text": "x", "task": "nope"}, "headers": auth}),
        ("post", "/v1/classify", {"json": {"text": TEXTS[0]}, "headers": auth}),
        ("post", "/v1/classify", {"json": {"texts": TEXTS}, "headers": auth}),
        ("post", "/v1/classify", {"json": {"text": TEXTS[1], "hints": {"backend": "llm"}},
                                  "headers": auth}),
        ("get", "/v1/tasks", {"headers": auth}),
    ]
    local = Router.from_yaml(ray_service.router, store=Store(tmp_path / "local.db"))
    app = create_app([local], ServiceSettings(api_keys=frozenset({KEY})))
    with Server(app) as srv, srv.client() as plain, httpx.Client(
        base_url=ray_service.url, timeout=60
    ) as ray_client:
        for method, path, kw in requests:
            want = _normal(getattr(plain, method)(path, **kw))
            got = _normal(getattr(ray_client, method)(path, **kw))
            assert got == want, (method, path, kw)
        health = ray_client.get("/healthz")
        metrics = ray_client.get("/metrics").text
        batch = ray_client.post("/v1/classify", json={"texts": TEXTS}, headers=auth).json()
    assert health.status_code == 200 and health.json()["tasks"] == ["sst2"]
    assert metric(metrics, "llmclf_http_requests_total", endpoint="/v1/classify",
                  status="401") == 2  # fmt: skip
    # routed through both deployments: the student answered some texts, the LLM the others
    assert {p["backend"] for p in batch["predictions"]} == {"student", "llm"}


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_killing_a_student_replica_under_load_loses_no_request(ray_service: RayService) -> None:
    import ray

    def replicas() -> list[str]:
        return sorted(
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::llmclf#student#")
        )  # fmt: skip

    before = replicas()
    assert len(before) == 2
    n = 160
    done = 0
    lock = threading.Lock()

    def ask(i: int) -> tuple[int, dict[str, Any], int]:
        nonlocal done
        body = {"text": f"{TEXTS[i % len(TEXTS)]} ({i})", "hints": {"request_id": f"kill-{i}"}}
        tries = 0
        status, answer = 0, {}
        for tries in range(1, 6):  # the client's retry budget: 5 tries, the same request id
            try:
                resp = httpx.post(ray_service.url + "/v1/classify", json=body,
                                  headers={"X-API-Key": KEY}, timeout=60)  # fmt: skip
            except httpx.TransportError:
                time.sleep(0.2 * tries)
                continue
            status, answer = resp.status_code, resp.json()
            if status < 500:
                break
            time.sleep(0.2 * tries)
        with lock:
            done += 1
        return status, answer, tries

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(n)]
        deadline = time.monotonic() + 120
        while done < n // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = before[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        results = [f.result() for f in futures]

    assert [s for s, _, _ in results] == [200] * n  # 0 failed requests after retries
    reasons = [a["prediction"]["route_reason"] for _, a, _ in results]
    # a call cut by the dead replica went to the live one, not to the fallback
    assert not [r for r in reasons if r.startswith("fallback after student failed")]
    assert {a["prediction"]["route"][0] for _, a, _ in results} == {"student"}

    # the survivor merged concurrent requests into batches (@serve.batch)
    from ray import serve

    student = serve.get_deployment_handle("student", app_name="llmclf")
    sizes: dict[int, int] = {}
    for _ in range(20):  # whichever replica answers: the survivor, or its new peer
        for size, count in student.batch_sizes.remote().result().items():
            sizes[size] = sizes.get(size, 0) + count
        if max(sizes, default=0) > 1:
            break
    assert max(sizes, default=0) > 1, sizes

    from llmclf.store import Store

    rows = Store(ray_service.store_db)._read(
        "SELECT request_id FROM review WHERE request_id LIKE 'kill-%'"
    )
    ids = sorted(r[0] for r in rows)
    assert ids == sorted(f"kill-{i}" for i in range(n))  # each request exactly once

    # Ray Serve replaces the dead replica
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = replicas()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.5)
    assert len(now) == 2 and victim not in now
