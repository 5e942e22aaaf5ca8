"""Calibration benchmark: `llm:local` before and after each calibration method, on held-out cases.

For each (eval set, prompt, method) it runs `llmclf.calibrate.calibrate` without saving: the
labelled methods (temperature, platt, isotonic) fit on the eval set's hash half 0 and report on
half 1; contextual calibration fits on the content-free inputs ``N/A``, ``""``, ``[MASK]`` only
and reports on every case. "before" is what a user gets today from the same backend and prompt
(the task's own threshold included); "after" decides at 0.5 on the calibrated scores. Prints a
markdown table: accuracy, ECE and Brier before -> after.

    .venv/bin/python benchmarks/bench_calibration.py [--limit 200] [--sets sst2,trec]

With ``--student N`` it also trains a head-only SetFit student (MiniLM body, logistic head) on
the first N gold rows of SST-2's train split, calibrates it the same way (platt, temperature)
and reports it; ``--student 0`` skips it.

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


def route_at_target(es, student_dir, llm_spec: str, target: float) -> list[str]:  # type: ignore[no-untyped-def]
    """The router with ``cascade: {target_accuracy: target}`` over a student calibrated (platt)
    on one hash half, measured on the other half: does the student keep its promise?"""
    from llmclf.calibrate import calibrate_student
    from llmclf.metrics import split_half
    from llmclf.router import Router

    out = []
    for half in (0, 1):
        fit_cases = [c for c in es.cases if split_half(c.id) == half]
        held_out = [c for c in es.cases if split_half(c.id) != half]
        calibrate_student(student_dir, es.task, fit_cases, held_out, method="platt")
        cfg = {
            "backends": {"student": f"setfit:{student_dir}", "llm": llm_spec},
            "cascade": {"student": "student", "escalate_to": "llm", "target_accuracy": target},
        }
        with Router.from_config(cfg, task=es.task) as router:
            preds = router.predict_batch([c.text for c in held_out])
            threshold = router.thresholds[es.task.label_names[0]]
        by_student = [
            (c, p) for c, p in zip(held_out, preds, strict=True) if p.route == ("student",)
        ]
        s_acc = sum(p.matches(c.labels) for c, p in by_student) / max(1, len(by_student))
        r_acc = sum(p.matches(c.labels) for c, p in zip(held_out, preds, strict=True)) / len(
            held_out
        )
        row = (
            f"| sst2, target_accuracy {target:g} | platt, half {half} | {threshold:g} | "
            f"{len(by_student)}/{len(held_out)} | {s_acc:.3f} | {r_acc:.3f} |"
        )
        print(row, flush=True)
        out.append(row)
    (student_dir / "calibration.json").unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="cases of sst2")
    ap.add_argument("--small-limit", type=int, default=60, help="cases of the other sets")
    ap.add_argument("--sets", default="sst2,sms_spam,ag_news,trec")
    ap.add_argument("--spec", default="llm:local?timeout_s=300", help="the llm:local spec")
    ap.add_argument("--student", type=int, default=400, help="gold train rows of the student")
    ap.add_argument("--no-llm", action="store_true", help="only the student")
    ap.add_argument(
        "--target", type=float, default=0.9, help="router cascade target_accuracy (0: skip)"
    )
    args = ap.parse_args()
    os.environ.setdefault("LLMCLF_HOME", tempfile.mkdtemp(prefix="llmclf-bench-"))

    from llmclf.backends.local_server import LocalServer
    from llmclf.calibrate import calibrate
    from llmclf.datasets import load_eval_set
    from llmclf.errors import ConfigError

    wanted = set(args.sets.split(","))
    rows = []
    router_rows: list[str] = []

    def f(before: float | None, after: float | None) -> str:
        if before is None or after is None:
            return "-"
        return f"{before:.3f} → {after:.3f}"

    def run(es, spec: str, prompt: str | None, method: str, limit: int, shown: str) -> None:  # type: ignore[no-untyped-def]
        # labelled methods: both folds (fit on hash half 0, report on half 1, and back)
        folds = [("all cases", "half")] if method == "contextual" else [
            ("half 0 → 1", "half"), ("half 1 → 0", "other-half"),
        ]  # fmt: skip
        for fold, split in folds:
            t0 = time.perf_counter()
            try:
                rep = calibrate(
                    es, spec, method=method, prompt=prompt, limit=limit,  # type: ignore[arg-type]
                    split=split, save=False, progress=False,
                )  # fmt: skip
            except ConfigError as exc:
                print(f"{es.name} {shown} {method}: {exc}", flush=True)
                continue
            b, a = rep.before, rep.after
            fitted = "content-free" if method == "contextual" else f"{rep.fit_cases} ({fold})"
            row = (
                f"| {es.name} | {shown} | {method} | {fitted} | "
                f"{rep.report_cases} | {f(b['accuracy'], a['accuracy'])} | "
                f"{f(b['ece'], a['ece'])} | {f(b['brier'], a['brier'])} |"
            )
            rows.append(row)
            print(row, f"({time.perf_counter() - t0:.0f}s)", flush=True)

    if args.student:
        import json
        from pathlib import Path

        from llmclf.distill import save_student, train_student

        es = load_eval_set("sst2")
        train = Path("/work/shared/datasets/sst2/train.jsonl")
        if not train.exists():
            train = es.dir / "pool.jsonl"
        rows_ = [json.loads(x) for x in train.read_text().splitlines() if x.strip()]
        rows_ = rows_[: args.student]
        student = train_student(
            [r["text"] for r in rows_], [[r["label"]] for r in rows_], es.task,
            mode="head-only",
        )  # fmt: skip
        d = Path(tempfile.mkdtemp(prefix="llmclf-bench-student-")) / "sst2"
        save_student(student, es.task, d)
        shown = f"head-only student ({len(rows_)} gold train rows)"
        for method in ("platt", "temperature", "isotonic"):
            run(es, f"setfit:{d}", None, method, args.limit, shown)
        if args.target:
            router_rows.extend(route_at_target(es, d, args.spec, args.target))

    try:
        for name, prompt, methods in PLAN if not args.no_llm else []:
            if name not in wanted:
                continue
            es = load_eval_set(name)
            limit = args.limit if name == "sst2" else args.small_limit
            shown_prompt = prompt or f"{es.task.prompt} (task default)"
            for method in methods:
                run(es, args.spec, prompt, method, limit, shown_prompt)
    finally:
        LocalServer.shared().stop()

    if router_rows:
        print()
        print(
            "| router (student → llm:local few-shot) | student calibrated on | threshold "
            "| answered by student | student accuracy (promised ≥ target) | router accuracy |"
        )
        print("|---|---|---|---|---|---|")
        for row in router_rows:
            print(row)
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
