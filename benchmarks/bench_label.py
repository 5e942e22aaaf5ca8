"""Labelling throughput and cost: async vs Ray engines against a teacher with fixed latency.

`FakeProvider` answers every request after ``--latency-s`` (200 ms, like a hosted model), so
throughput measures how many requests are in flight, not local CPU. Prints labels/s of the async
engine with one request in flight (the baseline), async with ``--concurrency``, and Ray with 1,
2 and 4 actors: in steady state (first answer to last; Ray's actor start-up is printed apart)
and over the wall time, each steady rate as a ratio to the baseline measured in the same run.
Then the cost per million texts of sst2 at gpt-4o-mini's published price (litellm's table),
online vs the Batch API, from the tokens the run counted.

    .venv/bin/python benchmarks/bench_label.py [--texts 200] [--latency-s 0.2] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--latency-s", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="llmclf-bench-label-"))
    os.environ["LLMCLF_HOME"] = str(home)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from llmclf.labelling import label
    from llmclf.store import Store
    from llmclf.task_refs import load_task
    from llmclf.testing import FakeProvider

    task = load_task("sst2")
    rows = [json.loads(x) for x in Path("eval_sets/sst2/unlabeled.jsonl").read_text().splitlines()]
    src = home / "in.jsonl"
    src.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[: args.texts]))

    answered: list[float] = []

    def slow(text: str) -> str:
        time.sleep(args.latency_s)
        answered.append(time.monotonic())
        return "positive" if ("good" in text or "fun" in text) else "negative"

    results: list[tuple[str, float]] = []

    def t_start(t0: float) -> float:
        return time.monotonic() - (time.perf_counter() - t0)

    usage = None
    with FakeProvider(labeler=slow) as fp:
        spec = f"llm:openai/gpt-4o-mini?api_base={fp.base_url}&api_key=sk-bench&cache=false"

        def run(name: str, **kw: object) -> None:
            nonlocal usage
            store = Store(home / f"{name.replace(' ', '_')}.db")
            answered.clear()
            t0 = time.perf_counter()
            r = label(task, spec, src, None, store=store, progress=False, **kw)  # type: ignore[arg-type]
            dt = time.perf_counter() - t0
            assert r.complete, r.summary()
            usage = usage or r.usage
            # steady state: answers per second from the first answer to the last (Ray's actor
            # start-up, seconds on a loaded machine, is left out and printed apart)
            span = answered[-1] - answered[0] if len(answered) > 1 else dt
            rate = (len(answered) - 1) / span if span > 0 else float("nan")
            results.append((name, rate))
            print(
                f"{name:>22}: {rate:7.1f} labels/s steady, {r.n_new / dt:6.1f} labels/s wall "
                f"({dt:.1f} s, first answer after {answered[0] - t_start(t0):.1f} s)",
                flush=True,
            )

        run("async, 1 in flight", concurrency=1)
        run(f"async, {args.concurrency} in flight", concurrency=args.concurrency)
        if not args.no_ray:
            import ray

            ray.init(include_dashboard=False, log_to_driver=False)
            try:
                for actors in (1, 2, 4):
                    run(f"ray, {actors} actor(s) x 2", engine="ray", actors=actors, concurrency=2)
            finally:
                ray.shutdown()
    base = results[0][1]
    print("\nsteady-state throughput vs async with 1 request in flight (same run):")
    for name, rate in results:
        print(f"  {name:>22}: x{rate / base:.2f}")
    assert usage is not None
    import litellm

    info = litellm.get_model_info("openai/gpt-4o-mini")
    n = max(1, usage.llm_calls)
    p_in, p_out = usage.prompt_tokens / n, usage.completion_tokens / n
    online = 1e6 * (p_in * info["input_cost_per_token"] + p_out * info["output_cost_per_token"])
    batch_in = info.get("input_cost_per_token_batches") or info["input_cost_per_token"] / 2
    batch_out = info.get("output_cost_per_token_batches") or info["output_cost_per_token"] / 2
    batch = 1e6 * (p_in * batch_in + p_out * batch_out)
    print(
        f"\ncost per million sst2 texts at gpt-4o-mini prices ({p_in:.0f} prompt + "
        f"{p_out:.0f} completion tokens a text, as FakeProvider counts them): "
        f"online ${online:,.2f}, "
        f"Batch API ${batch:,.2f} (x{batch / online:.2f})"
    )


if __name__ == "__main__":
    main()
