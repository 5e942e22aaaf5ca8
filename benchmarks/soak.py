"""Soak test of ``llmclf serve``: hours of traffic squeezed into ``--duration`` seconds at about 80%
of the measured maximum throughput, with provider faults injected, while the server's memory is
sampled. Not run in CI.

What it does:

1. Starts the teacher LLM as a `FakeProvider` on 127.0.0.1 (and, unless ``--student`` names a
   real student such as ``setfit:models/sst2``, a second `FakeProvider` playing the student)
   in a process of their own,
   writes a router config (cascade student → llm, review queue for unsure answers) and starts
   ``llmclf serve`` on it in a subprocess, with its own SQLite store (``--db URL``: that store;
   ``--temp-postgres``: a throwaway PostgreSQL server, `TempPostgres`, for the review queue and
   the cache).
2. Measures the maximum throughput: ``--concurrency`` closed-loop clients for ``--measure`` s
   give a saturation rate; then open-loop steps of ``--ramp-s`` s at 40%, 55%, ... 115% of it
   find the highest rate the server keeps up with (all answered, p99 under 2 s). That is the
   maximum the soak runs at ``--load`` of (a closed loop overstates what a server sustains
   when its latency grows with the load).
3. Soaks: an open-loop client sends ``--load`` × that rate for ``--duration`` s. The traffic is
   mixed: 70% texts from a pool of 500 (cache hits after the first pass), 30% unique texts
   (cache misses, new rows), 10% of requests forced to escalate (``min_confidence`` hint), and
   ``--faults-per-min`` random provider faults (429 with Retry-After, 500, 503, timeout, dropped
   connection, invalid JSON, label outside the set, empty choices) pushed into the teacher LLM
   (``--student-faults``: into the fake student too; a real SetFit student makes no calls).
4. Samples the server's RSS every ``--sample-s`` s and reports its growth (first to last minute,
   and the slope of a least-squares fit), the requests, every non-200 answer and client error,
   latency percentiles per minute, and the fault counters of ``/metrics``.

Example:
    $ python benchmarks/soak.py                       # the full 10-minute soak
    $ python benchmarks/soak.py --duration 120 --out soak.json
    $ python benchmarks/soak.py --student setfit:models/sst2 --duration 600
    $ python benchmarks/soak.py --temp-postgres          # the review queue on PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmclf.testing.fake_provider import FakeProvider, Fault  # noqa: E402

POS = ["a gorgeous, witty film", "loved every minute", "a moving and funny story",
       "superb acting", "a delight from start to finish"]  # fmt: skip
NEG = ["a tedious mess", "dull and far too long", "the plot makes no sense",
       "awful dialogue", "I wanted my money back"]  # fmt: skip

FAULTS: dict[str, Any] = {
    "429 Retry-After": lambda: Fault.status(429, retry_after=0.2),
    "500": lambda: Fault.status(500),
    "503": lambda: Fault.status(503),
    "timeout": lambda: Fault.delay(3.0),  # the backends time out after 1.5 s
    "dropped connection": Fault.drop,
    "invalid JSON": lambda: Fault.raw("Sure! The answer is positive."),
    "label outside the set": lambda: Fault.raw('{"label": "mixed"}'),
    "empty choices": Fault.empty_choices,
}


#: Clients drop idle connections before uvicorn does (it closes them after 5 s): reusing one
#: the server is closing at that moment would be a client-side ReadError, not a server fault.
KEEPALIVE_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def labeler(text: str) -> str:
    """The right label of a soak text (both the teacher and the fake student know it)."""
    return "negative" if text.startswith(tuple(NEG)) else "positive"


def serve_fakes() -> None:
    """``soak.py --serve-fakes``: the providers, in their own process (so the load generator
    does not slow them down). Prints their URLs, then obeys ``push NAME FAULT`` and ``queued``
    lines on stdin until it closes."""
    fakes = {
        "teacher": FakeProvider(labeler=labeler, confidence=0.9).start(),
        "student": FakeProvider(labeler=labeler, confidence=0.95).start(),
    }
    print(json.dumps({k: f.base_url for k, f in fakes.items()}), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.rstrip("\n").split(" ", 2)
        if cmd == "push":
            fakes[rest[0]].push(FAULTS[rest[1]]())
        elif cmd == "queued":
            print(sum(len(f._faults) for f in fakes.values()), flush=True)
        for f in fakes.values():  # keep the request logs small
            del f.requests[:-100]


class Fakes:
    """The `serve_fakes` process, seen from the driver."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-fakes"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.urls: dict[str, str] = json.loads(self.proc.stdout.readline())
        self._lock = threading.Lock()

    def spec(self, name: str, options: str) -> str:
        return f"llm:openai/fake?api_base={self.urls[name]}&{options}"

    def push(self, name: str, fault: str) -> None:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"push {name} {fault}\n")
            self.proc.stdin.flush()

    def queued(self) -> int:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("queued\n")
            self.proc.stdin.flush()
            return int(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    wrong_labels: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds)

    def record(self, t: float, seconds: float, status: int | None, body: Any, text: str) -> None:
        if status is None:
            return
        self.statuses[status] += 1
        if status == 200:
            self.ok += 1
            self.latencies.append((t, seconds))
            if body["prediction"]["label"] != labeler(text):
                self.wrong_labels += 1


class Traffic:
    """The request mix: pooled and unique texts, some forced escalations."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = [f"{t} (review {i})" for i in range(100) for t in POS + NEG][:500]
        self.n = 0

    def next(self) -> dict[str, Any]:
        self.n += 1
        if self.rng.random() < 0.3:
            text = f"{self.rng.choice(POS + NEG)} [unique {self.n}]"
        else:
            text = self.rng.choice(self.pool)
        body: dict[str, Any] = {"text": text}
        if self.rng.random() < 0.1:
            body["hints"] = {"min_confidence": 0.99}  # the student is never that sure: escalate
        return body


async def one(c: httpx.AsyncClient, body: dict[str, Any], tally: Tally, t0: float) -> None:
    start = time.perf_counter()
    tally.sent += 1
    try:
        r = await c.post("/v1/classify", json=body)
    except httpx.HTTPError as exc:
        tally.client_errors[type(exc).__name__] += 1
        return
    tally.record(start - t0, time.perf_counter() - start, r.status_code,
                 r.json() if r.status_code == 200 else None, body["text"])  # fmt: skip


async def closed_loop(url: str, seconds: float, concurrency: int, traffic: Traffic) -> float:
    """Requests per second that ``concurrency`` clients get answered, back to back."""
    tally = Tally()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(c, traffic.next(), tally, t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.ok / (time.perf_counter() - t0)


async def open_loop(
    url: str, seconds: float, rate: float, traffic: Traffic, tally: Tally, max_outstanding: int
) -> int:
    """Send ``rate`` requests a second for ``seconds``; returns how many were shed because
    ``max_outstanding`` were still unanswered (the server fell behind)."""
    shed = 0
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_outstanding, keepalive_expiry=KEEPALIVE_S)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        i = 0
        while True:
            due = t0 + i / rate
            now = time.perf_counter()
            if due - t0 >= seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            i += 1
            if len(pending) >= max_outstanding:
                shed += 1
                continue
            task = asyncio.create_task(one(c, traffic.next(), tally, t0))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    return shed


def metric_sum(text: str, name: str, **labels: str) -> dict[str, float]:
    """Samples of one Prometheus metric, keyed by their label set."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            out[json.dumps(got, sort_keys=True)] = float(m.group(3))
    return out


def slope_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in MiB per minute."""
    if len(samples) < 3:
        return 0.0
    xs = [t / 60 for t, _ in samples]
    ys = [r / 2**20 for _, r in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:]) == ["--serve-fakes"]:
        serve_fakes()
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    ap.add_argument("--measure", type=float, default=30.0, help="max-throughput seconds")
    ap.add_argument("--ramp-s", type=float, default=30.0,
                    help="seconds per open-loop ramp step (0: max = the closed-loop rate)")
    ap.add_argument("--warmup", type=float, default=10.0, help="warm-up seconds (not counted)")
    ap.add_argument("--load", type=float, default=0.8, help="share of the max throughput")
    ap.add_argument("--concurrency", type=int, default=32, help="clients when measuring")
    ap.add_argument("--faults-per-min", type=float, default=30.0, help="provider faults/minute")
    ap.add_argument("--fault-kinds", default=",".join(FAULTS),
                    help=f"comma-separated subset of: {', '.join(FAULTS)}")
    ap.add_argument("--student-faults", action="store_true",
                    help="inject faults into the (fake LLM) student too, not only the teacher")
    ap.add_argument("--max-outstanding", type=int, default=1000,
                    help="unanswered requests before the client sheds load")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--student", default=None, help="student spec (default: a FakeProvider)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--db", help="store URL the service uses (default: a SQLite file of its own)")
    ap.add_argument("--temp-postgres", action="store_true",
                    help="serve on a throwaway PostgreSQL server (Debian postgresql)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="llmclf-soak-"))
    pg = None
    if args.temp_postgres:
        from llmclf.testing.postgres import TempPostgres

        pg = TempPostgres().start()
        args.db = pg.create_database("soak")
    db = args.db or str(work / "soak.db")
    fakes = Fakes()
    fast = "backoff_base_s=0.05&backoff_max_s=0.5&max_retries=6&max_reasks=3&timeout_s=1.5"
    student_spec = args.student or fakes.spec("student", fast)
    cfg = work / "router.yaml"
    cfg.write_text(
        f"task: {REPO / 'eval_sets/sst2/task.yaml'}\n"
        "backends:\n"
        f"  student: '{student_spec}'\n"
        f"  llm: '{fakes.spec('teacher', fast)}'\n"
        "cascade: {student: student, escalate_to: llm, threshold: 0.9}\n"
        "review: {threshold: 0.92}\n",
        encoding="utf-8",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMCLF_HOME": str(work / "home")}
    log = open(work / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmclf.cli.main", "serve", "--router", str(cfg),
         "--port", str(port), "--db", db, "--max-in-flight", "4096"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    result: dict[str, Any] = {"work_dir": str(work), "student": args.student or "FakeProvider",
                              "store": "postgresql" if db.startswith("postgres") else "sqlite"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llmclf serve did not start: {(work / 'serve.log').read_text()}")
            time.sleep(0.2)
        traffic = Traffic(args.seed)
        print(f"warming up {args.warmup:.0f}s ...", flush=True)
        asyncio.run(closed_loop(url, args.warmup, args.concurrency, traffic))

        tally = Tally()
        rss: list[tuple[float, int]] = []
        injected: Counter[str] = Counter()
        stop = threading.Event()
        soaking = threading.Event()
        t_start = time.perf_counter()
        frng = random.Random(args.seed + 1)
        faulty = ["teacher", "student"] if args.student_faults and not args.student else [
            "teacher"
        ]
        kinds = sorted(k.strip() for k in args.fault_kinds.split(",") if k.strip())
        unknown = set(kinds) - set(FAULTS)
        if unknown:
            raise SystemExit(f"unknown fault kinds {sorted(unknown)}; known: {list(FAULTS)}")

        def background() -> None:
            """Faults from the max-throughput measurement on (same conditions as the soak);
            RSS samples during the soak."""
            next_sample = next_fault = time.perf_counter()
            gap = 60.0 / args.faults_per_min if args.faults_per_min > 0 else None
            while not stop.is_set():
                now = time.perf_counter()
                if soaking.is_set() and now >= next_sample:
                    rss.append((now - t_start, rss_bytes(proc.pid)))
                    next_sample = now + args.sample_s
                if gap is not None and now >= next_fault:
                    name = frng.choice(kinds)
                    fakes.push(frng.choice(faulty), name)
                    injected[name] += 1
                    next_fault += gap * frng.uniform(0.5, 1.5)
                time.sleep(0.05)

        metrics_before = httpx.get(url + "/metrics").text
        bg = threading.Thread(target=background, daemon=True)
        bg.start()
        print(f"measuring the max throughput for {args.measure:.0f}s "
              f"({args.faults_per_min:g} faults/min) ...", flush=True)  # fmt: skip
        closed_rps = asyncio.run(closed_loop(url, args.measure, args.concurrency, traffic))
        print(f"closed loop ({args.concurrency} clients): {closed_rps:.1f} req/s", flush=True)
        max_rps = closed_rps
        ramp: list[dict[str, Any]] = []
        if args.ramp_s > 0:
            # the highest open-loop rate the server keeps up with: it answers (nearly) all it is
            # sent within the step, with a bounded tail
            max_rps = 0.0
            for share in (0.4, 0.55, 0.7, 0.85, 1.0, 1.15):
                step_rate = share * closed_rps
                step = Tally()
                shed_step = asyncio.run(
                    open_loop(url, args.ramp_s, step_rate, traffic, step, args.max_outstanding)
                )
                lat = [x for _, x in step.latencies]
                ok = (step.ok >= 0.97 * step_rate * args.ramp_s and not shed_step
                      and pct(lat, 0.99) < 2.0)  # fmt: skip
                ramp.append({"rate": round(step_rate, 1), "ok": step.ok, "shed": shed_step,
                             "p99_ms": round(1000 * pct(lat, 0.99), 1), "kept_up": ok})  # fmt: skip
                print(f"  ramp {step_rate:.1f} req/s: {'kept up' if ok else 'fell behind'} "
                      f"(p99 {1000 * pct(lat, 0.99):.0f} ms)", flush=True)  # fmt: skip
                if not ok:
                    break
                max_rps = step_rate
            if max_rps == 0.0:
                raise SystemExit("the server kept up with none of the ramp's rates")
            time.sleep(5)  # let a backlog from the failed step drain
        rate = max(1.0, args.load * max_rps)
        print(f"max {max_rps:.1f} req/s; soaking at {rate:.1f} req/s for {args.duration:.0f}s",
              flush=True)  # fmt: skip
        metrics_soak_start = httpx.get(url + "/metrics").text
        t_start = time.perf_counter()
        soaking.set()
        shed = asyncio.run(
            open_loop(url, args.duration, rate, traffic, tally, args.max_outstanding)
        )
        stop.set()
        bg.join()
        rss.append((time.perf_counter() - t_start, rss_bytes(proc.pid)))
        metrics_after = httpx.get(url + "/metrics").text
        still_queued = fakes.queued()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        fakes.stop()
        try:
            from llmclf.store import Store

            st = Store(db)
            result["review_rows"] = st.count("review")
            result["store_integrity"] = st.integrity_check()
            st.close()
        finally:
            if pg is not None:
                pg.stop()

    def faults(text: str) -> dict[str, float]:
        out: Counter[str] = Counter()
        for key, v in metric_sum(text, "llmclf_provider_faults_total").items():
            out[json.loads(key)["kind"]] += v
        return dict(out)

    def server_latency(text: str) -> tuple[float, float, dict[float, float]]:
        """(count, sum, cumulative buckets) of the server's own /v1/classify latency."""
        name = "llmclf_http_request_duration_seconds"
        count = sum(metric_sum(text, name + "_count", endpoint="/v1/classify").values())
        total = sum(metric_sum(text, name + "_sum", endpoint="/v1/classify").values())
        buckets = {
            float(json.loads(k)["le"]): v
            for k, v in metric_sum(text, name + "_bucket", endpoint="/v1/classify").items()
        }
        return count, total, buckets

    c0, s0, b0 = server_latency(metrics_soak_start)
    c1, s1, b1 = server_latency(metrics_after)
    n_srv = c1 - c0

    def server_quantile(q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile of the soak's server latency."""
        for le in sorted(b1):
            if n_srv and (b1[le] - b0.get(le, 0.0)) >= q * n_srv:
                return le * 1000
        return None

    before, after = faults(metrics_before), faults(metrics_after)
    seen = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    first_min = [r for t, r in rss if t <= 60] or [rss[0][1]]
    last_min = [r for t, r in rss if t >= rss[-1][0] - 60] or [rss[-1][1]]
    per_min: dict[int, list[float]] = {}
    for t, s in tally.latencies:
        per_min.setdefault(int(t // 60), []).append(s * 1000)
    result.update(
        {
            "duration_s": args.duration,
            "closed_loop_rps": round(closed_rps, 1),
            "ramp": ramp,
            "max_rps": round(max_rps, 1),
            "target_rps": round(rate, 1),
            "achieved_rps": round(tally.ok / args.duration, 1),
            "requests": tally.sent,
            "ok": tally.ok,
            "non_200": {str(k): v for k, v in sorted(tally.statuses.items()) if k != 200},
            "client_errors": dict(tally.client_errors),
            "shed_by_client": shed,
            "wrong_labels": tally.wrong_labels,
            "faults_injected": dict(injected),  # during the measurement and the soak
            "faults_still_queued_at_end": still_queued,
            "faults_counted_by_metrics": seen,
            "store_errors": sum(metric_sum(metrics_after, "llmclf_store_errors_total").values()),
            "review_spooled_at_end": sum(metric_sum(metrics_after,
                                                    "llmclf_review_spooled").values()),
            "rss_mib_start": round(rss[0][1] / 2**20, 1),
            "rss_mib_end": round(rss[-1][1] / 2**20, 1),
            "rss_mib_first_minute_median": round(statistics.median(first_min) / 2**20, 1),
            "rss_mib_last_minute_median": round(statistics.median(last_min) / 2**20, 1),
            "rss_growth_mib": round(
                (statistics.median(last_min) - statistics.median(first_min)) / 2**20, 1
            ),
            "rss_slope_mib_per_min": round(slope_per_min(rss), 3),
            "server_latency_ms_mean": round(1000 * (s1 - s0) / n_srv, 1) if n_srv else None,
            "server_latency_ms_p50_le": server_quantile(0.5),
            "server_latency_ms_p99_le": server_quantile(0.99),
            "latency_ms_per_minute": {
                m: {"n": len(v), "p50": round(pct(v, 0.5), 1), "p99": round(pct(v, 0.99), 1)}
                for m, v in sorted(per_min.items())
            },
        }
    )
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    errors = sum(result["non_200"].values()) + sum(tally.client_errors.values())
    print(
        f"\nsoak {args.duration:.0f}s at {rate:.1f} req/s ({args.load:.0%} of {max_rps:.1f}): "
        f"{tally.sent} requests, {errors} errors, {tally.wrong_labels} wrong labels, "
        f"{sum(injected.values())} faults injected; RSS {result['rss_mib_start']} -> "
        f"{result['rss_mib_end']} MiB (growth {result['rss_growth_mib']} MiB, "
        f"{result['rss_slope_mib_per_min']} MiB/min); store {result['store']}: "
        f"{result['review_rows']} review rows, {result['store_errors']:g} store errors, "
        f"integrity {result['store_integrity']}"
    )
    return 1 if errors or tally.wrong_labels else 0


if __name__ == "__main__":
    sys.exit(main())
