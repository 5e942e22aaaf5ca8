"""Benchmarks of the router and the HTTP service, with a real load generator on loopback.

Two modes:

``--mode load`` (default): starts ``llmclf serve --router R`` in a subprocess and drives it with
`wrk <https://github.com/wg/wrk>`_ (``apt-get install wrk``), POSTing single-text requests:

1. **student alone**: texts the router answers from the student, ``--connections`` at once,
   for ``--duration`` seconds: texts/s, p50/p99 latency, errors.
2. **student + escalations at once**: the same student stream while a second wrk sends
   ``--escalation-connections`` streams of requests that must escalate (unique texts, so the
   LLM cache cannot answer them, with ``"hints": {"min_confidence": 1.0}``). The student
   stream's p50/p99 are compared with phase 1: escalations must not slow the student.

Which backend answered is read from ``/metrics`` before and after each phase. Each setup's
throughput is judged as a share of the student alone, measured in this process with the service
idle, two ways: against the best of baseline runs just before and just after the phase
(bracketing), and as a **paired share**: ``--pairs`` slices of ``--pair-seconds`` of wrk, each
between two 2-second runs of the student alone, each slice divided by the mean of its two runs,
the median reported with its range. Some machines flip between two speeds within seconds; a
slice and its baseline, seconds apart, mostly see the same one.

``--workers 1 2`` runs the load phases once per worker count (``llmclf serve --workers N``) and
prints each setup's texts/s, p50 and p99 with its ratio to the first; ``--db URL`` serves on
that store, ``--temp-postgres`` on a throwaway PostgreSQL server (`TempPostgres`).
``--ray-replicas 2`` adds a setup after those: ``llmclf serve --ray --replicas 2`` (Ray Serve on
a local Ray instance, the student in 2 micro-batching replicas, the LLM in its own deployment).

``--setups sqlite:1 sqlite:2 postgres:2 ray:2`` runs those setups in turn in one run (store:workers,
or ray:replicas; ``postgres`` starts one throwaway server for all of them) and prints them side by
side. ``--profile`` adds a third student-only phase per setup that says where the CPU goes:
exact per-process and per-thread CPU from ``/proc`` (ms per request, the load generator's
included), and py-spy samples of the Python threads by category (`cpu_profile.py`), with the
ceiling in texts/s that the service's CPU per request implies on this machine's cores.

``--mode quality``: on the router task's eval set, the student and the escalation LLM each
label every case once (the LLM through its cache); prints the accuracy vs escalation-rate curve
over thresholds with the router's operating point marked, then routes the eval set through the
router itself: accuracy vs the LLM alone, share answered by the student, LLM calls saved.

Example:
    $ python benchmarks/bench_service.py --router router.yaml --duration 60
    $ python benchmarks/bench_service.py --router router.yaml --mode quality
    $ python benchmarks/bench_service.py --router router.yaml --workers 1 2 --duration 30
    $ python benchmarks/bench_service.py --router router.yaml --workers 1 2 --ray-replicas 2
    $ python benchmarks/bench_service.py --setups sqlite:1 sqlite:2 postgres:2 ray:2 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

TARGETS = {
    "texts_per_s": 500.0,
    "p99_ms": 50.0,
    "student_share": 0.80,
    "llm_calls_saved": 0.80,
}

_LUA = r"""
local bodies = {
%(bodies)s
}
local unique = %(unique)s
local hints = [==[%(hints)s]==]
local counter = 0
-- wrk's LuaJIT does not seed math.random: without the run's nonce, the "unique" texts of one
-- run would be those of the last one, and answered from the LLM cache of a reused store
local thread_tag = "%(nonce)s-" .. tostring(math.random(1, 1000000000))

request = function()
  counter = counter + 1
  local text = bodies[(counter %% #bodies) + 1]
  if unique then
    text = text .. " #" .. thread_tag .. "-" .. counter
  end
  local body = '{"text": "' .. text .. '"' .. hints .. '}'
  return wrk.format("POST", "/v1/classify", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%f, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


# -- helpers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lua_string(s: str) -> str:
    """A Lua long-bracket literal that holds ``s`` verbatim."""
    level = 0
    while f"]{'=' * level}]" in s:
        level += 1
    eq = "=" * level
    return f"[{eq}[{s}]{eq}]"


def write_lua(
    path: Path, texts: Sequence[str], *, unique: bool, hints: dict[str, Any] | None
) -> None:
    # each text is JSON-escaped (without its quotes) so the Lua side only concatenates
    escaped = [json.dumps(t, ensure_ascii=True)[1:-1] for t in texts]
    bodies = ",\n".join("  " + lua_string(e) for e in escaped)
    hint_part = f', "hints": {json.dumps(hints)}' if hints else ""
    path.write_text(
        _LUA % {"bodies": bodies, "unique": "true" if unique else "false", "hints": hint_part,
                "nonce": f"{time.time_ns():x}{os.getpid():x}"},
        encoding="utf-8",
    )


def texts_by_backend(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("llmclf_texts_total{"):
            m = re.search(r'backend="([^"]*)"', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0.0)) for k, v in after.items() if v - before.get(k, 0.0)}


def load_texts(path: str | None, task_name: str, limit: int) -> list[str]:
    """Texts from --texts (JSONL with "text", or one per line), else the task's eval set."""
    if path is None:
        from llmclf.datasets import load_eval_set

        return [c.text for c in load_eval_set(task_name).cases][:limit]
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            out.append(str(json.loads(line)["text"]))
        else:
            out.append(line)
    return out[:limit]


class ServiceProcess:
    """``llmclf serve`` in a subprocess on a free port."""

    def __init__(self, router: str, extra: Sequence[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", router,
             "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the service exited with {self.proc.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the service did not answer /healthz in {timeout:.0f} s")

    def metrics(self) -> dict[str, float]:
        return texts_by_backend(httpx.get(self.url + "/metrics", timeout=30).text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_wrk(
    url: str, script: Path, connections: int, threads: int, seconds: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s",
         "--timeout", "30s", "-s", str(script), url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            r = json.loads(line[len("WRK_JSON "):])
            seconds = r["duration_us"] / 1e6
            errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            return {
                "requests": r["requests"],
                "texts_per_s": r["requests"] / seconds if seconds else 0.0,
                "p50_ms": r["p50_us"] / 1000,
                "p90_ms": r["p90_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000,
                "max_ms": r["max_us"] / 1000,
                "errors": errors,
                "non_2xx": r["status"],
                "socket_errors": errors - r["status"],
            }
    raise SystemExit(f"wrk printed no result:\n{out}")


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['texts_per_s']:8.1f} texts/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
        f"max {r['max_ms']:8.1f} ms  requests {r['requests']:7d}  errors {r['errors']}"
    )


# -- load mode ------------------------------------------------------------------------------------
def children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once it has exited)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured_phase(
    args: argparse.Namespace, svc: ServiceProcess, lua: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One student-only wrk phase; with ``--profile``, also the CPU every process and thread of
    the service spent in it (``/proc``, no sampling: the phase is not slowed) and wrk's."""
    from cpu_profile import CpuSnapshot, cpu_delta, report

    before, cpu0 = (CpuSnapshot.take(svc.proc.pid), children_cpu()) if args.profile else (None, 0)
    res = wrk_result(run_wrk(svc.url, lua, args.connections, args.threads, args.duration))
    if before is None:
        return res, None
    after, cpu1 = CpuSnapshot.take(svc.proc.pid), children_cpu()  # wrk is reaped: its CPU
    delta = cpu_delta(before, after)
    lines = report(delta, res["requests"], after.taken - before.taken, loadgen_cpu_s=cpu1 - cpu0)
    service_cpu = sum(delta.values())
    return res, {
        "cpu_s": {f"{k[0]} / {k[1]}": v for k, v in delta.items()},
        "service_cpu_ms_per_request": 1000 * service_cpu / max(res["requests"], 1),
        "wrk_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / max(res["requests"], 1),
        "report": lines,
    }


def paired_share(
    args: argparse.Namespace, svc: ServiceProcess, lua: Path, baseline: StudentBaseline
) -> dict[str, Any] | None:
    """The setup's throughput as a share of the student alone, from interleaved pairs:
    ``--pairs`` wrk slices of ``--pair-seconds`` each, with a short run of the student alone
    (the service idle) before the first slice and after every slice. Each slice is divided by
    the mean of the two runs around it and the median of those shares is reported. This
    machine's speed swings by half within a minute (the student alone read 384 then 619
    texts/s a few seconds apart), so a share taken from one long phase and runs before or
    after it moved between 0.47 and 0.75 for the same setup; paired slices see the same
    machine as their reference."""
    if args.pairs <= 0:
        return None
    refs = baseline.measure(seconds=2.0, repeats=1, quiet=True)
    shares, rates = [], []
    for _ in range(args.pairs):
        res = wrk_result(run_wrk(svc.url, lua, args.connections, args.threads, args.pair_seconds))
        refs += baseline.measure(seconds=2.0, repeats=1, quiet=True)
        rates.append(res["texts_per_s"])
        shares.append(res["texts_per_s"] / ((refs[-2] + refs[-1]) / 2))
    out = {
        "median": statistics.median(shares), "min": min(shares), "max": max(shares),
        "shares": shares, "service_texts_per_s": rates, "student_alone_texts_per_s": refs,
        "pair_seconds": args.pair_seconds,
    }
    print(f"paired share           {out['median']:.2f} of the student alone (median of "
          f"{len(shares)} slices of {args.pair_seconds:.0f} s; range {out['min']:.2f}-"
          f"{out['max']:.2f}; service {min(rates):.0f}-{max(rates):.0f} texts/s, student alone "
          f"{min(refs):.0f}-{max(refs):.0f} texts/s between them)")
    return out


def sampled_phase(args: argparse.Namespace, svc: ServiceProcess, lua: Path, work: Path) -> Any:
    """A student-only phase under py-spy (50 samples/s per worker): on-CPU samples of the
    Python threads by category. Sampling costs CPU, so this phase's throughput is not reported
    as the setup's."""
    from cpu_profile import finish_pyspy, python_workers, start_pyspy

    spy = start_pyspy(python_workers(svc.proc.pid), args.duration + 2, work, rate=50)
    if not spy:
        print("  (py-spy is not installed: no samples)")
        return {}
    time.sleep(1.0)  # py-spy attaches
    res = wrk_result(run_wrk(svc.url, lua, args.connections, args.threads, args.duration))
    cpu0 = children_cpu()
    samples, err = finish_pyspy(spy)
    n = sum(samples.values())
    print(f"py-spy phase            {fmt(res)}  (py-spy itself: {children_cpu() - cpu0:.1f} CPU s)")
    print(f"  Python threads' on-CPU samples by category ({n} samples)"
          + (f"; py-spy: {err}" if err else ""))
    for name, c in samples.most_common():
        print(f"    {name:<60} {100 * c / max(n, 1):5.1f}%")
    return {"throughput_under_pyspy": res, "samples": dict(samples)}


def warm_llm_cache(client: httpx.Client, texts: Sequence[str]) -> None:
    """Ask the LLM once for every text of the student stream, so that shadow calls (a share of
    the student's answers goes to the LLM too) answer from its cache in every setup alike: a
    fresh store (PostgreSQL) would otherwise spend the cores on the LLM that a warm one
    (SQLite in the same $LLMCLF_HOME) answers from its cache."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(text: str) -> None:
        body = {"text": text, "hints": {"min_confidence": 1.0}}
        client.post("/v1/classify", json=body).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ask, texts))
    print(f"LLM cache warmed for the {len(texts)} student texts in "
          f"{time.perf_counter() - t0:.1f} s")


def bench_load(
    args: argparse.Namespace, workers: int = 1, ray_replicas: int = 0, label: str | None = None,
    baseline: StudentBaseline | None = None,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    from llmclf.router import Router

    router = Router.from_yaml(args.router)  # for the task name and the student's name
    task_name = router.task.name
    cascade = router.config.cascade
    student_name = cascade.student if cascade else None
    router.close()
    pool = load_texts(args.texts, task_name, args.max_texts)
    work = Path(tempfile.mkdtemp(prefix="llmclf-bench-"))
    serve_args = ["--log-level", "warning", "--max-in-flight", str(args.max_in_flight)]
    if args.no_microbatch:
        serve_args.append("--no-microbatch")
    if ray_replicas:
        serve_args += ["--ray", "--replicas", str(ray_replicas)]
        setup = f"Ray Serve, {ray_replicas} replicas"
    else:
        serve_args += ["--workers", str(workers)]
        setup = f"{workers} worker(s)"
    if label:
        setup = label
    if args.db:
        serve_args += ["--db", args.db]
    svc = ServiceProcess(args.router, serve_args, work / "service.log")
    try:
        svc.wait(args.startup_timeout)
        # which texts does the router answer from the student? Asked twice, in batches of 64
        # and of 5: int8 activations are quantized per batch, so a text whose confidence sits
        # on the threshold can go either way; the student stream keeps the texts answered by
        # the student both times (the others are escalations, measured in phase 2).
        student_texts: list[str] = []
        with httpx.Client(base_url=svc.url, timeout=600) as c:
            answered: dict[str, int] = {}
            for size in (64, 5):
                for i in range(0, len(pool), size):
                    resp = c.post("/v1/classify", json={"texts": pool[i : i + size]})
                    resp.raise_for_status()
                    for text, p in zip(pool[i : i + size], resp.json()["predictions"], strict=True):
                        if student_name is None or p["backend"] == student_name:
                            answered[text] = answered.get(text, 0) + 1
            student_texts = [t for t in pool if answered.get(t) == 2]
            if not student_texts:
                raise SystemExit("the router answered none of the texts from the student")
            # warm the escalation path (e.g. start the embedded LLM server) before measuring
            if student_name is not None:
                c.post("/v1/classify", json={"text": pool[0] + " (warm-up)",
                                             "hints": {"min_confidence": 1.0}})
                warm_llm_cache(c, student_texts)
        print(f"service on {svc.url} ({setup}); {len(student_texts)}/{len(pool)} "
              f"texts answered by the student; {args.connections} connections, "
              f"{args.duration:.0f} s per phase")
        student_lua = work / "student.lua"
        write_lua(student_lua, student_texts, unique=False, hints=None)
        esc_lua = work / "escalate.lua"
        write_lua(esc_lua, pool, unique=True, hints={"min_confidence": 1.0})

        # warm-up
        conns, threads = args.connections, args.threads
        wrk_result(run_wrk(svc.url, student_lua, conns, threads, min(5, args.duration)))

        offline_runs = baseline.measure() if baseline is not None else []
        before = svc.metrics()
        alone, cpu = measured_phase(args, svc, student_lua)
        after_alone = svc.metrics()
        if baseline is not None:
            offline_runs += baseline.measure()
        offline = max(offline_runs) if offline_runs else None
        share = (f"  ({alone['texts_per_s'] / offline:.2f} of the student alone: best of "
                 f"{min(offline_runs):.0f}-{offline:.0f} texts/s around this phase)"
                 if offline else "")
        print(f"student alone          {fmt(alone)}{share}")
        for line in (cpu or {}).get("report", []):
            print("  " + line)
        print(f"  answered by: {diff(after_alone, before)}")
        paired = paired_share(args, svc, student_lua, baseline) if baseline is not None else None

        result: dict[str, Any] = {
            "router": args.router,
            "store": "postgresql" if (args.db or "").startswith("postgres") else "sqlite",
            "workers": workers,
            "ray_replicas": ray_replicas,
            "setup": setup,
            "connections": args.connections,
            "duration_s": args.duration,
            "student_alone": alone,
            "student_offline_texts_per_s": offline,
            "student_offline_runs": offline_runs,
            "paired_share": paired,
            "answered_by_alone": diff(after_alone, before),
        }
        if student_name is not None and args.escalation_connections > 0:
            esc_proc = run_wrk(svc.url, esc_lua, args.escalation_connections, 1, args.duration)
            both = wrk_result(run_wrk(svc.url, student_lua, conns, threads, args.duration))
            esc = wrk_result(esc_proc)
            after_both = svc.metrics()
            print(f"student, escalations   {fmt(both)}")
            print(f"escalating requests    {fmt(esc)}")
            print(f"  answered by: {diff(after_both, after_alone)}")
            result.update(
                student_with_escalations=both,
                escalations=esc,
                answered_by_both=diff(after_both, after_alone),
                p99_ratio=both["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else math.nan,
                p50_ratio=both["p50_ms"] / alone["p50_ms"] if alone["p50_ms"] else math.nan,
            )
            print(f"student p50 with/without escalations: {result['p50_ratio']:.2f}x, "
                  f"p99: {result['p99_ratio']:.2f}x")
        if cpu is not None:
            result["profile"] = cpu
            result["profile"]["sampled"] = sampled_phase(args, svc, student_lua, work)
        both_errors = result.get("student_with_escalations", {"errors": 0})["errors"]
        checks = {
            f">= {TARGETS['texts_per_s']:.0f} texts/s": alone["texts_per_s"]
            >= TARGETS["texts_per_s"],
            f"p99 < {TARGETS['p99_ms']:.0f} ms": alone["p99_ms"] < TARGETS["p99_ms"],
            "0 errors": alone["errors"] == 0 and both_errors == 0,
        }
        result["targets"] = checks
        for name, ok in checks.items():
            print(f"  target {name}: {'met' if ok else 'NOT met'}")
        return result
    finally:
        svc.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


class StudentBaseline:
    """The router's student on its own, in this process: ``predict_batch`` in batches of 64
    over the texts (ONNX Runtime's defaults). Measured right before and right after each
    setup's measured phase, with the service up and idle, a few short runs each time: this
    machine's speed drifts by a quarter within minutes (other tenants, the last setup's
    processes winding down), so one 8 s run before a setup made its ratio noisy (0.67-0.85 for
    the same setup in two runs). A setup's ratio is taken against the best of the runs that
    bracket its phase: what the student alone could do at that time, so the ratio is never
    flattered by a slow baseline. The service's target is 70% of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        from llmclf.router import Router

        self.router = Router.from_yaml(args.router)
        cascade = self.router.config.cascade
        if cascade is None:
            raise SystemExit("the student baseline needs a router with a cascade")
        self.name = cascade.student
        self.student = self.router.backends[cascade.student]
        self.texts = load_texts(args.texts, self.router.task.name, args.max_texts)
        self.batches = [self.texts[i : i + 64] for i in range(0, len(self.texts), 64)]
        self.student.predict_batch(self.batches[0])  # warm-up

    def measure(self, seconds: float = 3.0, repeats: int = 3, quiet: bool = False) -> list[float]:
        """``repeats`` runs of about ``seconds`` each, cycling over the batches; their texts/s."""
        rates = []
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            for batch in itertools.cycle(self.batches):
                n += len(self.student.predict_batch(batch))
                if time.perf_counter() - t0 >= seconds:
                    break
            rates.append(n / (time.perf_counter() - t0))
        if not quiet:
            print(f"student {self.name!r} alone in this process, batches of 64: "
                + ", ".join(f"{r:.0f}" for r in rates) + " texts/s")
        return rates

    def close(self) -> None:
        self.router.close()


def parse_setups(specs: Sequence[str]) -> list[tuple[str, int]]:
    """``["sqlite:1", "ray:2"]`` -> ``[("sqlite", 1), ("ray", 2)]``; a bad spec exits with why."""
    out = []
    for spec in specs:
        kind, _, n = spec.partition(":")
        if kind not in ("sqlite", "postgres", "ray") or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--setups {spec!r}: expected sqlite:N, postgres:N or ray:N (N >= 1)")
        out.append((kind, int(n)))
    return out


def run_setups(
    args: argparse.Namespace, setups: Sequence[tuple[str, int]], stack: contextlib.ExitStack,
    baseline: StudentBaseline | None = None,
) -> list[dict[str, Any]]:
    """Each setup of ``--setups`` in turn, on one throwaway PostgreSQL server if any needs one."""
    pg_url = None
    runs = []
    for kind, n in setups:
        if kind == "postgres" and pg_url is None:
            from llmclf.testing.postgres import TempPostgres

            pg_url = stack.enter_context(TempPostgres()).create_database("bench")
        args.db = pg_url if kind == "postgres" else None
        if kind == "ray":
            runs.append(bench_load(args, ray_replicas=n, label=f"Ray Serve, {n} replicas",
                                   baseline=baseline))
        else:
            runs.append(bench_load(args, workers=n, label=f"{n} worker(s), {kind}",
                                   baseline=baseline))
    return runs


# -- quality mode ---------------------------------------------------------------------------------
def bench_quality(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from llmclf.datasets import load_eval_set
    from llmclf.router import Router

    router = Router.from_yaml(args.router)
    try:
        cascade = router.config.cascade
        if cascade is None:
            raise SystemExit("--mode quality needs a router with a cascade")
        es = load_eval_set(args.eval_set or router.task.name)
        cases = list(es.cases)[: args.max_texts]
        texts = [c.text for c in cases]
        gold = [tuple(sorted(c.labels)) for c in cases]
        student = router.backends[cascade.student]
        teacher = router.backends[cascade.escalate_to]
        t0 = time.perf_counter()
        s_preds = [
            p for i in range(0, len(texts), 64) for p in student.predict_batch(texts[i : i + 64])
        ]
        t_student = time.perf_counter() - t0
        t0 = time.perf_counter()
        l_preds = [
            p for i in range(0, len(texts), 16) for p in teacher.predict_batch(texts[i : i + 16])
        ]
        t_teacher = time.perf_counter() - t0
        s_ok = np.array([tuple(sorted(p.labels)) == g for p, g in zip(s_preds, gold, strict=True)])
        l_ok = np.array([tuple(sorted(p.labels)) == g for p, g in zip(l_preds, gold, strict=True)])
        conf = np.array([p.confidence for p in s_preds])
        thr = router.thresholds
        op = np.array([
            max((thr[lab] for lab in p.labels), default=max(thr.values())) for p in s_preds
        ])
        print(f"{es.name}: {len(texts)} cases; student {s_ok.mean():.3f} accuracy "
              f"({t_student:.1f} s), {cascade.escalate_to} {l_ok.mean():.3f} ({t_teacher:.1f} s)")
        print(f"{'threshold':>10} {'escalation':>11} {'accuracy':>9}")
        grid = sorted({round(x, 2) for x in np.linspace(0.5, 1.0, 26)} | set(thr.values()))
        curve = []
        for t in grid:
            esc = conf < t
            acc = float(np.where(esc, l_ok, s_ok).mean())
            curve.append({"threshold": t, "escalation_rate": float(esc.mean()), "accuracy": acc})
        esc_op = conf < op
        acc_op = float(np.where(esc_op, l_ok, s_ok).mean())
        for row in curve:
            mark = "  <- operating point" if row["threshold"] in thr.values() else ""
            print(
                f"{row['threshold']:>10.3f} {row['escalation_rate']:>11.3f} "
                f"{row['accuracy']:>9.3f}{mark}"
            )
        print(f"operating point (router thresholds {thr}): escalation {esc_op.mean():.3f}, "
              f"accuracy {acc_op:.3f}")

        # the router itself, end to end
        routed = router.predict_batch(texts)
        r_ok = np.array([tuple(sorted(p.labels)) == g for p, g in zip(routed, gold, strict=True)])
        by_student = float(np.mean([p.backend == cascade.student for p in routed]))
        llm_calls = sum(1 for p in routed if cascade.escalate_to in p.route)
        saved = 1.0 - llm_calls / len(texts)
        print(f"router: accuracy {r_ok.mean():.3f} (LLM alone {l_ok.mean():.3f}), "
              f"{by_student:.1%} answered by the student, {llm_calls} LLM calls vs "
              f"{len(texts)} LLM-only ({saved:.1%} fewer)")
        checks = {
            "accuracy >= the LLM alone": bool(r_ok.mean() >= l_ok.mean()),
            f">= {TARGETS['student_share']:.0%} answered by the student": by_student
            >= TARGETS["student_share"],
            f">= {TARGETS['llm_calls_saved']:.0%} fewer LLM calls": saved
            >= TARGETS["llm_calls_saved"],
        }
        for name, ok in checks.items():
            print(f"  target {name}: {'met' if ok else 'NOT met'}")
        return {
            "eval_set": es.name,
            "n": len(texts),
            "student_accuracy": float(s_ok.mean()),
            "llm_accuracy": float(l_ok.mean()),
            "curve": curve,
            "operating_point": {"thresholds": thr, "escalation_rate": float(esc_op.mean()),
                                "accuracy": acc_op},
            "router_accuracy": float(r_ok.mean()),
            "student_share": by_student,
            "llm_calls": llm_calls,
            "llm_calls_saved": saved,
            "targets": checks,
        }
    finally:
        router.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--router", default=str(REPO / "router.yaml"), help="router config YAML")
    ap.add_argument("--mode", choices=("load", "quality", "all"), default="load")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per load phase")
    ap.add_argument(
        "--connections", type=int, default=10,
        help="student-stream connections (closed loop: mean latency = connections / throughput, "
        "so 500 texts/s with p99 < 50 ms needs well under 25)",
    )
    ap.add_argument("--pairs", type=int, default=6,
                    help="setups compared with the student alone: slices of the student stream "
                    "interleaved with short runs of the student alone (0: skip)")
    ap.add_argument("--pair-seconds", type=float, default=10.0, help="seconds per paired slice")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads per stream")
    ap.add_argument("--escalation-connections", type=int, default=4,
                    help="connections sending escalating requests in phase 2 (0: skip it)")
    ap.add_argument("--texts", help="texts to send (JSONL or one per line); default: the eval set")
    ap.add_argument("--eval-set", help="eval set for --mode quality (default: the router's task)")
    ap.add_argument("--max-texts", type=int, default=2000)
    ap.add_argument("--max-in-flight", type=int, default=512)
    ap.add_argument("--no-microbatch", action="store_true", help="serve without micro-batching")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--json-out", help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (Lua scripts, log)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="serve with each of these worker counts in turn (e.g. 1 2)")
    ap.add_argument("--ray-replicas", type=int, default=0,
                    help="also run llmclf serve --ray with this many student replicas (0: skip)")
    ap.add_argument("--db", help="store URL the service uses (default: its $LLMCLF_HOME)")
    ap.add_argument("--temp-postgres", action="store_true",
                    help="serve on a throwaway PostgreSQL server (Debian postgresql)")
    ap.add_argument("--setups", nargs="+", metavar="STORE:N",
                    help="setups run in turn: sqlite:N or postgres:N (N workers), ray:N "
                    "(N replicas); overrides --workers/--ray-replicas/--temp-postgres")
    ap.add_argument("--profile", action="store_true",
                    help="add a student-only phase per setup under a CPU profile (/proc, py-spy)")
    args = ap.parse_args(argv)
    setups = parse_setups(args.setups) if args.setups else None
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    results: dict[str, Any] = {}
    if args.mode in ("quality", "all"):
        results["quality"] = bench_quality(args)
    if args.mode in ("load", "all"):
        with contextlib.ExitStack() as stack:
            several = len(args.workers) > 1 or bool(setups) or bool(args.ray_replicas)
            baseline = StudentBaseline(args) if several else None
            if baseline is not None:
                stack.callback(baseline.close)
            if args.temp_postgres and setups is None:
                from llmclf.testing.postgres import TempPostgres

                pg = stack.enter_context(TempPostgres())
                args.db = pg.create_database("bench")
            if setups is not None:
                runs = run_setups(args, setups, stack, baseline)
            else:
                runs = [bench_load(args, workers=w, baseline=baseline) for w in args.workers]
                if args.ray_replicas:
                    runs.append(bench_load(args, ray_replicas=args.ray_replicas,
                                           baseline=baseline))
        results["load"] = runs[0] if len(runs) == 1 else runs
        if len(runs) > 1:
            base = runs[0]["student_alone"]["texts_per_s"]
            print("\nstudent alone by setup")
            for r in runs:
                a = r["student_alone"]
                ratio = a["texts_per_s"] / base if base else math.nan
                offline = r.get("student_offline_texts_per_s")
                vs = (f"; {a['texts_per_s'] / offline:.2f} of the student alone "
                      f"(best of {offline:.0f} texts/s around it)" if offline else "")
                if r.get("paired_share"):
                    vs += f"; paired share {r['paired_share']['median']:.2f}"
                print(f"  {r['setup']:<24} {fmt(a)}  {ratio:.2f}x texts/s of {runs[0]['setup']}"
                      + vs)
            if any("escalations" in r for r in runs):
                print("escalations while the student stream is saturated, by setup")
                for r in runs:
                    if "escalations" in r:
                        print(f"  {r['setup']:<24} {fmt(r['escalations'])}")
                        print(f"  {'':<24} student at the same time: "
                              f"{fmt(r['student_with_escalations'])}")
            if any("profile" in r for r in runs):
                print("CPU per request by setup (service; wrk), and the service-only ceiling")
                for r in runs:
                    if "profile" in r:
                        pr = r["profile"]
                        ms, wrk_ms = pr["service_cpu_ms_per_request"], pr["wrk_cpu_ms_per_request"]
                        print(f"  {r['setup']:<24} {ms:6.3f} ms; {wrk_ms:6.3f} ms  -> "
                              f"{(os.cpu_count() or 1) * 1000 / ms:7.1f} texts/s on "
                              f"{os.cpu_count()} cores")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
