"""Calibration benchmark: `llm:local` before and after each calibration method, on held-out cases.

For each (eval set, prompt, method) it runs `llmclf.calibrate.calibrate` without saving: the
labelled methods (temperature, platt, isotonic) fit on the eval set's hash half 0 and report on
half 1; contextual calibration fits on the content-free inputs ``N/A``, ``""``, ``[MASK]`` only
and reports on every case. "before" is what a user gets today from the same backend and prompt
(the task's own threshold included); "after" decides at 0.5 on the calibrated scores. Prints a
markdown table: accuracy, ECE and Brier before -> after.

    .venv/bin/python benchmarks/bench_calibration.py [--limit 200] [--sets sst2,trec]

Set ``LLMCLF_HOME`` to reuse the response cache between runs (default: a fresh temp dir).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

#: (eval set, prompt (None: the task's default), methods)
PLAN: list[tuple[str, str | None, tuple[str, ...]]] = [
    ("sst2", None, ("temperature", "platt", "contextual")),
    ("sst2", "zero_shot", ("contextual", "platt")),
    ("sms_spam", None, ("temperature", "contextual")),
    ("ag_news", None, ("temperature", "contextual")),
    ("trec", None, ("temperature", "contextual")),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="cases of sst2")
    ap.add_argument("--small-limit", type=int, default=60, help="cases of the other sets")
    ap.add_argument("--sets", default="sst2,sms_spam,ag_news,trec")
    args = ap.parse_args()
    os.environ.setdefault("LLMCLF_HOME", tempfile.mkdtemp(prefix="llmclf-bench-"))

    from llmclf.backends.local_server import LocalServer
    from llmclf.calibrate import calibrate
    from llmclf.datasets import load_eval_set
    from llmclf.errors import ConfigError

    wanted = set(args.sets.split(","))
    rows = []

    def f(before: float | None, after: float | None) -> str:
        if before is None or after is None:
            return "-"
        return f"{before:.3f} → {after:.3f}"

    try:
        for name, prompt, methods in PLAN:
            if name not in wanted:
                continue
            es = load_eval_set(name)
            limit = args.limit if name == "sst2" else args.small_limit
            shown_prompt = prompt or f"{es.task.prompt} (task default)"
            for method in methods:
                t0 = time.perf_counter()
                try:
                    rep = calibrate(
                        es, "llm:local", method=method, prompt=prompt, limit=limit,  # type: ignore[arg-type]
                        save=False, progress=False,
                    )  # fmt: skip
                except ConfigError as exc:
                    print(f"{name} {shown_prompt} {method}: {exc}", flush=True)
                    continue
                b, a = rep.before, rep.after
                row = (
                    f"| {name} | {shown_prompt} | {method} | {rep.fit_cases} | "
                    f"{rep.report_cases} | {f(b['accuracy'], a['accuracy'])} | "
                    f"{f(b['ece'], a['ece'])} | {f(b['brier'], a['brier'])} |"
                )
                rows.append(row)
                print(row, f"({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        LocalServer.shared().stop()

    print()
    print(
        "| set | prompt | method | fitted on | reported on | accuracy before → after "
        "| ECE before → after | Brier before → after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
