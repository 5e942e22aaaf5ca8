"""Student latency: sentence-transformers on torch vs ONNX fp32 vs ONNX int8, in one process.

Measures the whole serving path of `SetFitBackend` (tokenize, body, pooling, head, Prediction
objects) for each runtime of one student directory, one runtime after the other: single-text
p50/p95 latency (texts one at a time) and batched throughput (``predict_batch`` over all texts
in batches). Prints ratios against the torch baseline and
checks the targets of the distill issue (int8: single p50 <= 3 ms, batched >= 700 texts/s).

Usage:
    python benchmarks/bench_student.py                    # builds a head-only student first
    python benchmarks/bench_student.py --model models/sst2 --batch-size 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SST2 = Path("/work/shared/datasets/sst2")
TARGET_SINGLE_MS = 3.0
TARGET_BATCHED = 700.0


def _texts(n: int) -> list[str]:
    path = SST2 / "test.jsonl"
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["text"] for r in rows][:n]


def build_student(out: Path) -> Path:
    """A head-only student on 200 SST-2 train texts (gold labels, no LLM), exported."""
    from llmclf.distill import save_student, train_student
    from llmclf.export import export_student
    from llmclf.types import Task

    task = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    path = SST2 / "train.jsonl"
    if not path.exists():
        path = REPO / "eval_sets" / "sst2" / "cases.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][:200]
    student = train_student(
        [r["text"] for r in rows], [[r["label"]] for r in rows], task, mode="head-only"
    )
    save_student(student, task, out)
    export_student(out, _texts(96), int8=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a student dir written by `llmclf distill`")
    ap.add_argument("--texts", type=int, default=400, help="texts for the batched runs")
    ap.add_argument("--single", type=int, default=300, help="texts timed one at a time")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="batched runs per runtime")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llmclf.backends.setfit import SetFitBackend

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_student(Path(tmp) / "student")
        backends = {
            "torch (sentence-transformers)": SetFitBackend(model, runtime="torch"),
            "onnx fp32": SetFitBackend(model, runtime="onnx", threads=args.threads),
        }
        if (Path(model) / "model.int8.onnx").exists():
            backends["onnx int8"] = SetFitBackend(model, runtime="int8", threads=args.threads)
        texts = _texts(args.texts)
        single_texts = texts[: args.single]

        ref = backends["torch (sentence-transformers)"].score_matrix(texts)
        parity = {
            name: float(np.abs(b.score_matrix(texts) - ref).max()) for name, b in backends.items()
        }
        # one runtime at a time: interleaving them lets one runtime's idle worker threads
        # (ONNX Runtime and OpenMP spin after a call) steal the cores from the next one
        single: dict[str, list[float]] = {name: [] for name in backends}
        batched: dict[str, list[float]] = {name: [] for name in backends}
        for name, b in backends.items():
            for t in single_texts[:20]:  # warm up
                b.predict_batch([t])
            b.predict_batch(texts[: args.batch_size])
            for t in single_texts:
                t0 = time.perf_counter()
                b.predict_batch([t])
                single[name].append((time.perf_counter() - t0) * 1000)
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for i in range(0, len(texts), args.batch_size):
                    b.predict_batch(texts[i : i + args.batch_size])
                batched[name].append(len(texts) / (time.perf_counter() - t0))

    base = "torch (sentence-transformers)"
    base_single = statistics.median(single[base])
    base_batched = statistics.median(batched[base])
    results = []
    for name in backends:
        p50 = statistics.median(single[name])
        p95 = float(np.percentile(single[name], 95))
        tput = statistics.median(batched[name])
        results.append(
            {
                "setup": name,
                "single_p50_ms": round(p50, 3),
                "single_p95_ms": round(p95, 3),
                "batched_texts_per_s": round(tput, 1),
                "single_speedup_vs_torch": round(base_single / p50, 2),
                "batched_speedup_vs_torch": round(tput / base_batched, 2),
                "max_score_diff_vs_torch": parity[name],
            }
        )
    int8 = next((r for r in results if r["setup"] == "onnx int8"), None)
    verdict = None
    if int8 is not None:
        verdict = {
            "single_p50_ok": int8["single_p50_ms"] <= TARGET_SINGLE_MS,
            "batched_ok": int8["batched_texts_per_s"] >= TARGET_BATCHED,
        }
    if args.json:
        print(json.dumps({"results": results, "targets": verdict, "cpus": os.cpu_count()}))
        return 0
    print(
        f"student: {model}; {len(single_texts)} single texts, {len(texts)} batched "
        f"(batch {args.batch_size}); {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'setup':32} {'p50 ms':>8} {'p95 ms':>8} {'texts/s':>9} {'x single':>9} "
        f"{'x batched':>10} {'max diff':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['setup']:32} {r['single_p50_ms']:8.2f} {r['single_p95_ms']:8.2f} "
            f"{r['batched_texts_per_s']:9.0f} {r['single_speedup_vs_torch']:9.2f} "
            f"{r['batched_speedup_vs_torch']:10.2f} {r['max_score_diff_vs_torch']:9.2g}"
        )
    if verdict is not None:
        print(
            f"targets (int8): single p50 <= {TARGET_SINGLE_MS} ms: "
            f"{'PASS' if verdict['single_p50_ok'] else 'FAIL'}; batched >= {TARGET_BATCHED:.0f} "
            f"texts/s: {'PASS' if verdict['batched_ok'] else 'FAIL'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
