"""Shortlist benchmark: the student's top-k labels in `llm:local`'s prompt, on many-label sets.

For banking77 (77 labels) and clinc150 (150 labels), on the first ``--limit`` eval cases, all
measured in one run:

- the LLM with all labels: zero-shot (descriptions) and few-shot with 4 dynamic pool examples;
- the student alone: SetFit head-only trained on the eval set's gold few-shot pool
  (`llmclf.pool_student`, what ``llmclf distill --from-pool`` writes);
- the student's top-k recall (the gold label is among its top k) for k = 3, 5, 10;
- shortlist + LLM for k = 3, 5, 10 (few-shot, dynamic examples from the candidates only), and
  k = 5 zero-shot.

Prints a markdown table: accuracy, macro F1, prompt tokens per LLM call, p50 latency per text
(concurrency 1; a shortlisted text's latency includes the student's). Ratios are against the
all-labels LLM with the same prompt on the same set, measured in the same run.

    .venv/bin/python benchmarks/bench_shortlist.py [--limit 40] [--sets banking77,clinc150]
        [--students DIR]    # reuse DIR/<set> when it exists (else trained there)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SETS = ["banking77", "clinc150"]
KS = (3, 5, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--students", default=None, help="directory of pool students by set name")
    args = ap.parse_args()
    os.environ.setdefault("LLMCLF_HOME", tempfile.mkdtemp(prefix="llmclf-bench-"))
    students = Path(args.students or tempfile.mkdtemp(prefix="llmclf-pool-students-"))

    import numpy as np

    from llmclf.backends.local_server import LocalServer
    from llmclf.backends.setfit import SetFitBackend
    from llmclf.datasets import load_eval_set
    from llmclf.evaluate import evaluate
    from llmclf.pool_student import train_pool_student

    header = (
        "| eval set | setup | cases | accuracy | macro F1 | prompt tokens / call "
        "| tokens vs all labels | p50 ms | p50 vs all labels |"
    )
    rows: list[str] = []
    t_start = time.perf_counter()

    def row(
        name: str, title: str, m: dict[str, Any], base: dict[str, Any] | None, keep: bool = True
    ) -> None:
        usage = m.get("usage") or {}
        calls = usage.get("llm_calls") or 0
        tok = usage["prompt_tokens"] / calls if calls else None
        p50 = (m.get("latency_ms") or {}).get("p50")
        tok_s = "-" if tok is None else f"{tok:.0f}"
        tok_r = "-"
        lat_r = "-"
        if base is not None and tok is not None:
            b_usage = base["usage"]
            b_tok = b_usage["prompt_tokens"] / max(1, b_usage["llm_calls"])
            tok_r = f"{b_tok / tok:.1f}x fewer"
        if base is not None and p50:
            lat_r = f"{p50 / base['latency_ms']['p50']:.2f}x"
        line = (
            f"| {name} | {title} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} "
            f"| {tok_s} | {tok_r} | {p50:.0f} | {lat_r} |"
            if p50 is not None
            else f"| {name} | {title} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} "
            f"| {tok_s} | {tok_r} | - | - |"
        )
        if keep:
            rows.append(line)
        print(line, f"  ({time.perf_counter() - t_start:.0f} s so far)", flush=True)

    def run(name: str, spec: str, prompt: str | None = None, dynamic: bool = False) -> Any:
        es = load_eval_set(name)
        r = evaluate(
            es, spec, prompt=prompt, limit=args.limit,
            few_shot_pool=str(es.pool_path) if dynamic else None, concurrency=1, progress=False,
        )  # fmt: skip
        return r.metrics

    # phase 1, every set: the student and the shortlists (short prompts, fast)
    shortlisted: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.sets.split(","):
        es = load_eval_set(name)
        student_dir = students / name
        if not student_dir.exists():
            t0 = time.perf_counter()
            train_pool_student(es, student_dir, int8=True, evaluate_cases=False)
            print(f"{name}: pool student trained in {time.perf_counter() - t0:.0f} s", flush=True)
        row(name, "student alone (pool, head-only)", run(name, f"setfit:{student_dir}"), None)
        student = SetFitBackend(student_dir, task=es.task)
        cases = es.cases[: args.limit]
        matrix = student.score_matrix([c.text for c in cases])
        names = es.task.label_names
        gold = np.asarray([names.index(c.labels[0]) for c in cases])
        order = np.argsort(-matrix, axis=1)
        recall = {k: float(np.mean([g in o[:k] for g, o in zip(gold, order, strict=True)]))
                  for k in (1, *KS)}  # fmt: skip
        line = f"| {name} | student top-k recall | {len(cases)} | " + ", ".join(
            f"k={k}: {v:.3f}" for k, v in recall.items()
        ) + " | | | | | |"
        rows.append(line)
        print(line, flush=True)
        short = shortlisted[name] = {}
        for k in KS:
            title = f"shortlist k={k} + LLM, few-shot (4 dynamic)"
            spec = f"llm:local?shortlist=setfit:{student_dir}&shortlist_k={k}"
            short[title] = run(name, spec, "few_shot", True)
            row(name, title, short[title], None, keep=False)
        spec = f"llm:local?shortlist=setfit:{student_dir}&shortlist_k=5"
        short["shortlist k=5 + LLM, zero-shot"] = run(name, spec, "zero_shot")
        row(name, "shortlist k=5 + LLM, zero-shot", short[list(short)[-1]], None, keep=False)

    # phase 2, every set: the LLM with all labels (long prompts, slow); then the ratios
    for name in args.sets.split(","):
        zero = run(name, "llm:local", "zero_shot")
        row(name, "LLM, all labels, zero-shot", zero, None)
        few = run(name, "llm:local", "few_shot", dynamic=True)
        row(name, "LLM, all labels, few-shot (4 dynamic)", few, None)
        for title, m in shortlisted[name].items():
            row(name, title, m, zero if "zero-shot" in title else few)

    print(f"\n{header}")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    LocalServer.shared().stop()


if __name__ == "__main__":
    main()
