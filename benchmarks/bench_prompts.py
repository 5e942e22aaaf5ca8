"""Prompt benchmark: `llm:local` on every single-label eval set, zero-shot against few-shot.

For each set: the zero-shot template (label descriptions) and the few-shot template with the
task's static examples plus 4 dynamic examples from the set's pool (nearest by embedding,
balanced across labels). For AG News and TREC it also runs the `minimal` template (label names
only, no descriptions) and few-shot with static examples only, to show what descriptions, static
and dynamic examples each add. Every set also runs `compact` (one instruction line with the label
names) and `compact_few_shot` with the same examples. Prints a markdown table: accuracy, macro F1,
ECE, p50 latency.

    .venv/bin/python benchmarks/bench_prompts.py [--limit 100] [--sets sst2,trec]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SETS = ["sst2", "sms_spam", "ag_news", "trec", "banking77", "clinc150"]
ABLATION_SETS = {"ag_news", "trec"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args()
    os.environ.setdefault("LLMCLF_HOME", tempfile.mkdtemp(prefix="llmclf-bench-"))

    from llmclf.backends.local_server import LocalServer
    from llmclf.datasets import load_eval_set
    from llmclf.evaluate import evaluate

    rows = []
    for name in args.sets.split(","):
        es = load_eval_set(name)
        variants: list[tuple[str, str, str | None]] = []
        if name in ABLATION_SETS:
            variants.append(("minimal (names only)", "minimal", None))
        variants.append(("zero-shot (descriptions)", "zero_shot", None))
        if name in ABLATION_SETS and es.task.examples:
            variants.append(("few-shot, static examples", "few_shot", None))
        pool = str(es.pool_path) if es.pool_path else None
        variants.append(("few-shot, static + 4 dynamic", "few_shot", pool))
        variants.append(("compact (names, one line)", "compact", None))
        variants.append(("compact few-shot, static + 4 dynamic", "compact_few_shot", pool))
        for title, prompt, few_shot_pool in variants:
            t0 = time.perf_counter()
            run = evaluate(
                es, "llm:local", prompt=prompt, limit=args.limit, few_shot_pool=few_shot_pool,
                concurrency=1, progress=False,
            )  # fmt: skip
            m = run.metrics
            row = (
                f"| {name} | {title} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} "
                f"| {m['calibration']['ece']:.3f} | {m['latency_ms']['p50']:.0f} |"
            )
            rows.append(row)
            print(row, f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| eval set | prompt | cases | accuracy | macro F1 | ECE | p50 ms |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    LocalServer.shared().stop()


if __name__ == "__main__":
    main()
