"""Core benchmark: the embedded default (`llm:local`) on the sst2 eval set, through the full path.

Prints accuracy, p50/p95 latency per call (cold cache, one request at a time, so a call's latency
is the model's and not queueing), and the speed-up of a second, warm-cache pass measured in the
same process. Target: accuracy >= 0.85 zero-shot and p50 <= 400 ms per text on 2 cores.

    .venv/bin/python benchmarks/bench_core.py [--limit 200] [--prompt zero_shot]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-set", default="sst2")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--prompt", default=None)
    args = ap.parse_args()
    os.environ.setdefault("LLMCLF_HOME", tempfile.mkdtemp(prefix="llmclf-bench-"))

    from llmclf import Classifier
    from llmclf.backends.local_server import LocalServer
    from llmclf.datasets import load_eval_set

    es = load_eval_set(args.eval_set)
    cases = es.cases[: args.limit]
    options = {"concurrency": 1, **({"prompt": args.prompt} if args.prompt else {})}
    clf = Classifier(es.task, backend="llm:local", **options)
    clf.predict("warm-up: the server starts and loads the model")  # not timed

    t0 = time.perf_counter()
    cold = [clf.predict(c.text) for c in cases]
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = [clf.predict(c.text) for c in cases]
    warm_s = time.perf_counter() - t0

    lat = np.array([p.latency_ms for p in cold])
    acc = float(np.mean([p.label == c.label for p, c in zip(cold, cases, strict=True)]))
    assert all(p.cached for p in warm), "the warm pass must be served from the cache"
    print(f"eval set        {es.name} ({len(cases)} cases), prompt {cold[0].prompt_hash}")
    print(f"accuracy        {acc:.3f}   (target >= 0.85)")
    print(f"latency p50     {np.percentile(lat, 50):.0f} ms   (target <= 400 ms)")
    print(f"latency p95     {np.percentile(lat, 95):.0f} ms")
    print(f"cold pass       {cold_s:.1f} s ({len(cases) / cold_s:.2f} texts/s)")
    print(f"warm pass       {warm_s:.3f} s ({len(cases) / warm_s:.0f} texts/s)")
    print(f"warm-cache speed-up  {cold_s / warm_s:.0f}x")
    LocalServer.shared().stop()


if __name__ == "__main__":
    main()
