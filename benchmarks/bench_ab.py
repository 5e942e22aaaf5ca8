"""Paired A/B benchmark of two source trees on the same backend: is B slower than A?

A no-regression check on a shared or noisy machine cannot compare two runs made minutes apart:
other load moves every number by more than a small regression would. This benchmark keeps one
worker process per tree alive (each imports ``llmclf`` from its own tree and builds the backend
through ``make_backend``, the production path), then alternates between them in short rounds
in a random order, so any load hits both sides alike. Each round times ``--single`` one-text
calls and one ``--batch``-text call per side. It prints each side's median, and the paired
ratio B/A (the median of per-round ratios) with a bootstrap 95% interval: an interval that
holds 1.0 is "no measurable difference".

Example:
    $ git worktree add --detach /tmp/before 3169181
    $ python benchmarks/bench_ab.py --a /tmp/before --b . --spec setfit:models/sst2 --task sst2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _worker(spec: str, task_ref: str, texts_path: str) -> None:
    """Serve timing commands on stdin: ``single N`` / ``batch N`` -> one JSON line of seconds."""
    from llmclf.backends.registry import make_backend
    from llmclf.cli.common import resolve_task

    texts = [json.loads(line)["text"] for line in Path(texts_path).read_text().splitlines() if line]
    backend = make_backend(spec, resolve_task(task_ref))
    backend.predict_batch(texts[:8])  # warm-up: sessions, tokenizer, first allocations
    cursor = 0

    def take(n: int) -> list[str]:
        nonlocal cursor
        out = [texts[(cursor + i) % len(texts)] for i in range(n)]
        cursor += n
        return out

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what, n = line.split()
        if what == "single":
            times = []
            for text in take(int(n)):
                t0 = time.perf_counter()
                backend.predict_batch([text])
                times.append(time.perf_counter() - t0)
            print(json.dumps({"single": times}), flush=True)
        else:
            batch = take(int(n))
            t0 = time.perf_counter()
            backend.predict_batch(batch)
            print(json.dumps({"batch": time.perf_counter() - t0}), flush=True)


class _Side:
    def __init__(self, name: str, tree: Path, args: argparse.Namespace) -> None:
        self.name, self.tree = name, tree
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                "--spec",
                args.spec,
                "--task",
                args.task,
                "--texts",
                str(args.texts),
            ],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise SystemExit(f"{name}: worker did not start")
        self.single_p50: list[float] = []
        self.batch_tps: list[float] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} ({self.tree}): worker exited (rc {self.proc.wait()})")
        return dict(json.loads(line))

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def round(self, single: int, batch: int) -> None:
        self.single_p50.append(statistics.median(self.ask(f"single {single}")["single"]) * 1e3)
        self.batch_tps.append(batch / self.ask(f"batch {batch}")["batch"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _ratio_ci(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-round ratios b/a, with a bootstrap 95% interval."""
    ratios = np.asarray(b) / np.asarray(a)
    rng = np.random.default_rng(seed)
    boots = [np.median(rng.choice(ratios, size=len(ratios))) for _ in range(2000)]
    return (
        float(np.median(ratios)),
        float(np.quantile(boots, 0.025)),
        float(np.quantile(boots, 0.975)),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--a", type=Path, help="tree A (the baseline), e.g. a worktree of an old commit"
    )
    ap.add_argument("--b", type=Path, default=REPO, help="tree B (default: this tree)")
    ap.add_argument(
        "--spec",
        default="setfit:models/sst2",
        help="backend spec, paths absolute or relative to this cwd",
    )
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--texts", type=Path, default=REPO / "eval_sets/sst2/cases.jsonl")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--single", type=int, default=20, help="one-text calls per round and side")
    ap.add_argument("--batch", type=int, default=64, help="texts in the batched call of a round")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.spec, args.task, str(args.texts))
        return 0
    if args.a is None:
        ap.error("--a is required")
    kind, _, target = args.spec.partition(":")
    if kind == "setfit" and not Path(target).is_absolute():
        args.spec = f"setfit:{Path(target).resolve()}"
    args.texts = args.texts.resolve()
    sides = [_Side("A", args.a.resolve(), args), _Side("B", args.b.resolve(), args)]
    rng = random.Random(0)
    try:
        for _ in range(args.rounds):
            for side in rng.sample(sides, 2):
                side.round(args.single, args.batch)
    finally:
        for side in sides:
            side.close()
    a, b = sides
    single = _ratio_ci(a.single_p50, b.single_p50)
    batched = _ratio_ci(a.batch_tps, b.batch_tps)
    result = {
        "spec": args.spec,
        "rounds": args.rounds,
        "a": str(a.tree),
        "b": str(b.tree),
        "single_p50_ms": {
            "a": statistics.median(a.single_p50),
            "b": statistics.median(b.single_p50),
        },
        "single_ratio_b_over_a": single,
        "batched_texts_per_s": {
            "a": statistics.median(a.batch_tps),
            "b": statistics.median(b.batch_tps),
        },
        "batched_ratio_b_over_a": batched,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.spec}: {args.rounds} interleaved rounds, A = {a.tree}, B = {b.tree}")
    print("| measure | A | B | B/A (median of rounds) | 95% interval |")
    print("|---|---|---|---|---|")
    print(
        f"| single-text p50 ms | {result['single_p50_ms']['a']:.2f} | "
        f"{result['single_p50_ms']['b']:.2f} | {single[0]:.3f} | {single[1]:.3f}–{single[2]:.3f} |"
    )
    print(
        f"| batched texts/s ({args.batch}) | {result['batched_texts_per_s']['a']:.1f} | "
        f"{result['batched_texts_per_s']['b']:.1f} | {batched[0]:.3f} | "
        f"{batched[1]:.3f}–{batched[2]:.3f} |"
    )
    print(f"load average at the end: {result['loadavg']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
