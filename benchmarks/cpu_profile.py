"""Where a service's CPU time goes: per-process and per-thread CPU from ``/proc``, and a
`py-spy <https://github.com/benfred/py-spy>`_ sample of the Python threads by category.

Used by ``bench_service.py --profile``; on its own it profiles any running process tree:

    $ python benchmarks/cpu_profile.py --pid 1234 --seconds 20

Two views, both over the same window:

- **CPU accounting** (exact, from ``/proc/<pid>/task/<tid>/stat``): every process under the
  service (uvicorn workers, the llama.cpp server, Ray's processes) and, per Python worker, its
  event-loop thread, its ``llmclf-*`` executor threads and the rest (ONNX Runtime's intra-op
  pool). Divided by the requests answered, it is CPU milliseconds per request.
- **Samples** (``py-spy record --format raw``): each on-CPU sample of a Python thread is put in
  the first category its stack matches from the leaf up (HTTP parsing, JSON, ONNX Runtime, ...).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

#: (category, regex over one py-spy frame "function (file:line)"), matched from the leaf up.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("ONNX Runtime (session.run)", re.compile(r"onnxruntime")),
    ("tokenizer", re.compile(r"tokenizers|encode_batch|_tokenize")),
    ("JSON and validation (pydantic, json)", re.compile(
        r"pydantic|/json/|jsonable_encoder|serialize_response|orjson|model_dump|model_validate")),
    ("HTTP parsing and I/O (uvicorn, httptools, h11)", re.compile(
        r"uvicorn/protocols|httptools|h11|sock_sendall|_SelectorSocketTransport|transports")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client|llmclf/service/metrics")),
    ("store (sqlite, psycopg)", re.compile(r"sqlite3|psycopg|llmclf/storage|llmclf/store")),
    ("micro-batching (llmclf.service.batching)", re.compile(r"llmclf/service/batching")),
    ("router (llmclf.router)", re.compile(r"llmclf/router")),
    ("student backend, numpy (llmclf.backends)", re.compile(r"llmclf/backends|numpy")),
    ("framework (starlette, fastapi routing, middleware)", re.compile(
        r"starlette|fastapi|anyio|llmclf/service")),
    ("event loop and threads (asyncio, concurrent.futures)", re.compile(
        r"asyncio|concurrent/futures|threading|selectors|uvloop")),
]
OTHER = "other Python"


def _stat(path: Path) -> tuple[str, float] | None:
    """(comm, CPU seconds) of one ``/proc/.../stat`` file, or None if it is gone."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def process_label(pid: int, root: int) -> str:
    """A readable name for one process of the tree."""
    cmd = _cmdline(pid)
    if "llama_server_main" in cmd or "llama_cpp.server" in cmd:
        return "llama.cpp server (escalation LLM)"
    if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "/ray/" in cmd:
        m = re.search(r"ray::(\S+)", cmd)
        return f"ray: {m.group(1)}" if m else f"ray: {Path(cmd.split()[0]).name}"
    if pid == root:
        return "service: supervisor / main process"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "llmclf" in cmd:
        return "service: worker process"
    return Path(cmd.split()[0]).name if cmd else "?"


def thread_kind(pid: int, tid: int, comm: str) -> str:
    """Which part of a Python worker a thread is."""
    if tid == pid:
        return "event loop (main thread)"
    return "other threads (executors, ONNX Runtime's pool)"  # Python 3.11 names no OS thread


@dataclass
class CpuSnapshot:
    """CPU seconds per (process label, thread kind) at one moment, keyed by pid/tid."""

    taken: float
    threads: dict[tuple[int, int], tuple[str, str, float]] = field(default_factory=dict)

    @classmethod
    def take(cls, root: int) -> CpuSnapshot:
        snap = cls(taken=time.monotonic())
        for pid in descendants(root):
            label = process_label(pid, root)
            task_dir = Path(f"/proc/{pid}/task")
            try:
                tids = [int(t.name) for t in task_dir.iterdir()]
            except OSError:
                continue
            for tid in tids:
                st = _stat(task_dir / str(tid) / "stat")
                if st is not None:
                    snap.threads[(pid, tid)] = (label, thread_kind(pid, tid, st[0]), st[1])
        return snap


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[tuple[str, str], float]:
    """CPU seconds spent between two snapshots, by (process label, thread kind)."""
    out: dict[tuple[str, str], float] = {}
    for key, (label, kind, cpu) in after.threads.items():
        prev = before.threads.get(key)
        out[(label, kind)] = out.get((label, kind), 0.0) + cpu - (prev[2] if prev else 0.0)
    return out


def categorize(stack: Sequence[str]) -> str:
    """The category of one sampled stack (root first), from the leaf up."""
    for frame in reversed(stack):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return OTHER


def read_raw(path: Path) -> Counter[str]:
    """Samples per category from a ``py-spy record --format raw`` file (collapsed stacks)."""
    counts: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[categorize(stack.split(";"))] += int(n)
    return counts


def start_pyspy(
    pids: Iterable[int], seconds: float, out_dir: Path, rate: int = 100
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """One ``py-spy record`` per Python worker; [] when py-spy is not installed."""
    exe = str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        exe = shutil.which("py-spy") or ""
    if not exe:
        return []
    runs = []
    for pid in pids:
        out = out_dir / f"pyspy-{pid}.txt"
        proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
             "--format", "raw", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        runs.append((proc, out))
    return runs


def finish_pyspy(runs: list[tuple[subprocess.Popen[bytes], Path]]) -> tuple[Counter[str], str]:
    """Samples per category over every worker, and any py-spy error."""
    total: Counter[str] = Counter()
    errors = []
    for proc, out in runs:
        _, err = proc.communicate(timeout=120)
        if out.exists():
            total.update(read_raw(out))
        elif err:
            errors.append(err.decode(errors="replace").strip().splitlines()[-1])
    return total, "; ".join(errors)


def python_workers(root: int) -> list[int]:
    """The processes of the tree that answer requests: uvicorn workers, Ray Serve's replicas and
    proxy, or the root alone."""
    procs = [
        p for p in descendants(root)
        if process_label(p, root) == "service: worker process"
        or process_label(p, root).startswith(("ray: ServeReplica", "ray: ProxyActor"))
    ]
    return procs or [root]


def report(
    delta: dict[tuple[str, str], float], requests: int, seconds: float,
    samples: Counter[str] | None = None, loadgen_cpu_s: float | None = None,
    cores: int | None = None,
) -> list[str]:
    """Lines that say where the CPU went, per request, and the ceiling it implies."""
    cores = cores or os.cpu_count() or 1
    lines = []
    service_cpu = sum(delta.values())
    per_req = 1000 * service_cpu / requests if requests else float("nan")
    lines.append(f"CPU over {seconds:.1f} s and {requests} requests ({cores} cores, "
                 f"{cores * seconds:.1f} core-seconds available):")
    for (label, kind), cpu in sorted(delta.items(), key=lambda kv: -kv[1]):
        if cpu < 0.005 * seconds:
            continue
        lines.append(f"  {label:<38} {kind:<48} {cpu:7.2f} s  "
                     f"{1000 * cpu / max(requests, 1):6.3f} ms/request")
    lines.append(f"  {'service total':<87} {service_cpu:7.2f} s  {per_req:6.3f} ms/request")
    total = service_cpu
    if loadgen_cpu_s is not None:
        total += loadgen_cpu_s
        lines.append(f"  {'load generator (wrk)':<87} {loadgen_cpu_s:7.2f} s  "
                     f"{1000 * loadgen_cpu_s / max(requests, 1):6.3f} ms/request")
    idle = cores * seconds - total
    lines.append(f"  {'idle or other processes':<87} {idle:7.2f} s")
    if requests and service_cpu > 0:
        lines.append(
            f"ceiling here (service + wrk on {cores} cores): "
            f"{cores * requests / total:7.1f} texts/s; service alone on {cores} cores: "
            f"{cores * requests / service_cpu:7.1f} texts/s; per core: "
            f"{requests / service_cpu:7.1f} texts/s")
    if samples:
        n = sum(samples.values())
        lines.append(f"Python threads' on-CPU samples by category ({n} samples, py-spy):")
        for name, c in samples.most_common():
            lines.append(f"  {name:<60} {100 * c / n:5.1f}%")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pid", type=int, required=True, help="root of the process tree")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=0, help="requests answered in the window")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmclf-profile-"))
    before = CpuSnapshot.take(args.pid)
    runs = start_pyspy(python_workers(args.pid), args.seconds, work)
    time.sleep(args.seconds)
    after = CpuSnapshot.take(args.pid)
    samples, err = finish_pyspy(runs)
    for line in report(cpu_delta(before, after), args.requests, after.taken - before.taken,
                       samples):
        print(line)
    if err:
        print(f"py-spy: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
