"""Labelling throughput and cost: async vs Ray engines against a teacher with fixed latency.

`FakeProvider` answers every request after ``--latency-s`` (200 ms, like a hosted model), so
throughput measures how many requests are in flight, not local CPU. Prints labels/s of the async
engine with one request in flight (the baseline), async with ``--concurrency``, and Ray with 1,
2 and 4 actors: in steady state (first answer to last; Ray's actor start-up is printed apart)
and over the wall time, each steady rate as a ratio to the baseline measured in the same run.
Then the cost per million texts of sst2 at gpt-4o-mini's published price (litellm's table),
online vs the Batch API, from the tokens the run counted.

    .venv/bin/python benchmarks/bench_label.py [--texts 200] [--latency-s 0.2] [--no-ray]

``--real-teacher N``: label the first N texts of ``eval_sets/sst2/unlabeled.jsonl`` with the
real ``llm:local`` (the embedded Gemma on its loopback llama.cpp server) through
``llmclf label --engine ray`` and then ``--engine async``, each a CLI process with a fresh
``LLMCLF_HOME`` (store and cache; only the assembled GGUF is linked in). Prints labels/s of
each, their agreement text by text (and every disagreement with both engines' scores), then
re-runs the async engine over the Ray run's store and ``llmclf classify`` over it, which must
answer from the store and the response cache with identical labels. ``--compare A B``: the
agreement of two such homes' stores (also of partial runs: labels are committed as they come).

    .venv/bin/python benchmarks/bench_label.py --real-teacher 2000 [--actors 2] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# -- --real-teacher: llm:local through the CLI, ray vs async ------------------------------------
def _fresh_home(root: Path, name: str, gguf: Path) -> Path:
    """An empty LLMCLF_HOME (no store, no cache) with the assembled GGUF linked in, so
    ``llm:local`` starts its own server without re-assembling the model."""
    home = root / name
    models = home / "local-llm" / "models"
    models.mkdir(parents=True)
    (models / gguf.name).symlink_to(gguf)
    marker = gguf.with_suffix(".verified")
    shutil.copy(marker, models / marker.name)
    return home


def _count_labels(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM teacher_labels").fetchone()[0])
    except sqlite3.Error:
        return 0


def _steady_rate(samples: list[tuple[float, int]]) -> float | None:
    """Labels/s from the first stored label to the last (start-up left out), from
    ``(time, labels stored)`` samples."""
    moving = [(t, n) for t, n in samples if n > 0]
    if len(moving) < 2:
        return None
    (t0, n0), (t1, n1) = moving[0], next(x for x in moving if x[1] == moving[-1][1])
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def _cli(
    home: Path, args: list[str], log: Path, samples: list[tuple[float, int]] | None = None
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``llmclf ARGS`` with ``LLMCLF_HOME=home``: (wall seconds, its JSON stdout lines).
    ``samples`` gets ``(time, labels in the store)`` every 2 s while it runs."""
    env = {
        **os.environ,
        "LLMCLF_HOME": str(home),
        "LLMCLF_DATABASE_URL": "",
        "RAY_USAGE_STATS_ENABLED": "0",
        # the server at normal priority (both engines): at nice 10 Ray's own start-up
        # processes starve it on 2 cores and its first requests time out
        "LLMCLF_LOCAL_NICE": os.environ.get("LLMCLF_LOCAL_NICE", "0"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-c", "from llmclf.cli.main import main; main()", *args]
    t0 = time.perf_counter()
    with log.open("ab") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        while proc.poll() is None:
            if samples is not None:
                samples.append((time.perf_counter(), _count_labels(home / "llmclf.db")))
            time.sleep(2)
        dt = time.perf_counter() - t0
        out.seek(0)
        stdout = out.read().decode()
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 and not lines:
        raise SystemExit(f"llmclf {' '.join(args)} failed ({proc.returncode}); log: {log}")
    return dt, lines


def _stored(home: Path) -> dict[str, dict[str, Any]]:
    """``{text: prediction}`` of every teacher label in ``home``'s store (one job)."""
    import sqlite3

    from llmclf.store import Store

    with sqlite3.connect(home / "llmclf.db") as conn:
        jobs = [str(r[0]) for r in conn.execute("SELECT DISTINCT job FROM teacher_labels")]
    store = Store(home / "llmclf.db")
    return {r["text"]: r["prediction"]["prediction"] for j in jobs for r in store.teacher_labels(j)}


def _stop_server(home: Path) -> None:
    """Stop the llama.cpp server a run in ``home`` started and left behind (a Ray actor that
    started it may exit without its atexit hook)."""
    state = home / "local-llm" / "server.json"
    if not state.exists():
        return
    pid = int(json.loads(state.read_text())["pid"])
    try:
        alive = "llama_server_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        alive = False
    if alive:  # started in its own session: its process group is its pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    state.unlink(missing_ok=True)


def compare(
    a_home: Path, b_home: Path, a_name: str = "ray", b_name: str = "async"
) -> dict[str, Any]:
    """Agreement of the labels two homes' stores hold for the same texts (printed)."""
    a, b = _stored(a_home), _stored(b_home)
    both = [t for t in a if t in b]
    same = [t for t in both if a[t]["labels"] == b[t]["labels"]]
    identical = [t for t in same if a[t]["scores"] == b[t]["scores"]]
    diffs = [
        max(abs(a[t]["scores"][k] - b[t]["scores"][k]) for k in a[t]["scores"]) for t in same
    ]
    print(
        f"\n{len(both)} texts labelled by both: {len(same)} same label "
        f"({100 * len(same) / max(1, len(both)):.2f}%), {len(identical)} with identical scores; "
        f"largest score difference among the agreeing: {max(diffs, default=0.0):.6f}"
    )
    rows: list[dict[str, Any]] = []
    for t in both:
        if a[t]["labels"] != b[t]["labels"]:
            rows.append({"text": t, a_name: a[t], b_name: b[t]})
            print(
                f"  {t[:70]!r}\n    {a_name}: {a[t]['labels']} {a[t]['scores']}"
                f"\n    {b_name}: {b[t]['labels']} {b[t]['scores']}"
            )
    return {
        "both": len(both),
        "same": len(same),
        "identical_scores": len(identical),
        "max_score_diff_agreeing": max(diffs, default=0.0),
        "disagreements": [
            {"text": r["text"], **{k: r[k]["labels"] for k in (a_name, b_name)}} for r in rows
        ],
    }


def real_teacher(n: int, actors: int, concurrency: int, work: Path | None) -> None:
    """The ``--real-teacher`` mode (see the module docstring)."""
    root = work or Path(tempfile.mkdtemp(prefix="llmclf-real-teacher-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "stderr.log"
    print(f"work dir {root} (CLI stderr in {log})", flush=True)
    from llmclf.backends.local_server import local_model_path

    gguf = local_model_path().resolve()  # the usual LLMCLF_HOME's copy, assembled once
    rows = [json.loads(x) for x in (REPO / "eval_sets/sst2/unlabeled.jsonl").open()][:n]
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r.get("id", i), "text": r["text"]}) + "\n"
                           for i, r in enumerate(rows)))  # fmt: skip
    print(f"{len(rows)} sst2 texts, teacher llm:local ({gguf.name})", flush=True)
    result: dict[str, Any] = {"texts": len(rows), "actors": actors, "concurrency": concurrency}
    homes = {}
    for engine in ("ray", "async"):
        home = homes[engine] = _fresh_home(root, engine, gguf)
        args = ["label", "--task", "sst2", "--teacher", "llm:local", "--input", str(src),
                "--out", str(home / "labels.jsonl"), "--engine", engine,
                "--concurrency", str(concurrency), "--no-progress"]  # fmt: skip
        if engine == "ray":
            args += ["--actors", str(actors)]
        samples: list[tuple[float, int]] = []
        dt, out = _cli(home, args, log, samples)
        if engine == "ray":
            _stop_server(home)  # the async run starts its own, in its own home
        s = out[-1]
        for failure in s.get("failures", []):  # what a re-run will label again
            print(f"{engine:>5}: not labelled: {json.dumps(failure)[:300]}", flush=True)
        steady = _steady_rate(samples)
        first = next((t for t, n in samples if n > 0), None)
        until_first = None if first is None else first - samples[0][0]
        result[engine] = {"wall_s": dt, "new": s["new"], "labelled": s["labelled"],
                          "complete": s["complete"], "labels_per_s": s["new"] / dt,
                          "failures": s.get("failures", []),
                          "steady_labels_per_s": steady,
                          "first_label_after_s": until_first}  # fmt: skip
        print(
            f"{engine:>5}: {s['labelled']}/{len(rows)} labelled ({s['new']} new, "
            f"{s['usage'].get('llm_calls')} LLM calls, {s['usage'].get('retries')} retries) "
            f"in {dt:.0f} s: {s['new'] / dt:.2f} labels/s wall (CLI start-up included), "
            f"{steady or float('nan'):.2f} labels/s steady (first stored label to the last; "
            f"the first after {until_first or float('nan'):.0f} s)",
            flush=True,
        )
    result["agreement"] = compare(homes["ray"], homes["async"])
    # the async engine over the Ray run's store: every label is found, nothing is asked
    dt, out = _cli(homes["ray"], ["label", "--task", "sst2", "--teacher", "llm:local",
                                  "--input", str(src), "--out", str(root / "rerun.jsonl"),
                                  "--no-progress"], log)  # fmt: skip
    s = out[-1]
    ray_rows = [json.loads(x) for x in (homes["ray"] / "labels.jsonl").open()]
    rerun_rows = [json.loads(x) for x in (root / "rerun.jsonl").open()]
    same_rows = ray_rows == rerun_rows
    print(f"\nasync over the ray store: {s['new']} new, {s['usage'].get('llm_calls')} LLM "
          f"calls, {dt:.1f} s; rows identical to ray's: {same_rows}")  # fmt: skip
    # classify over the Ray run's store: every answer from the response cache
    dt, preds = _cli(homes["ray"], ["classify", "--task", "sst2", "--backend", "llm:local",
                                    "--input", str(src)], log)  # fmt: skip
    cached = sum(bool(p.get("cached")) for p in preds)
    same_labels = sum(
        list(p["labels"]) == list(r["labels"] if "labels" in r else [r["label"]])
        for p, r in zip(preds, ray_rows, strict=False)
    )
    print(f"classify over the ray store: {cached}/{len(preds)} from the cache, "
          f"{same_labels}/{len(ray_rows)} labels identical to ray's, {dt:.1f} s")  # fmt: skip
    result["rerun"] = {"async_new": s["new"], "rows_identical": same_rows,
                       "classify_cached": cached, "classify_same": same_labels}  # fmt: skip
    for home in homes.values():
        _stop_server(home)
    (root / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\n{json.dumps({k: v for k, v in result.items() if k != 'agreement'})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--latency-s", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--real-teacher", type=int, metavar="N", help="llm:local, ray vs async")
    ap.add_argument("--actors", type=int, default=2, help="--real-teacher: Ray actors")
    ap.add_argument("--work", type=Path, help="--real-teacher: work directory (default: temp)")
    ap.add_argument("--compare", type=Path, nargs=2, metavar="HOME", help="agreement of 2 homes")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if args.real_teacher:
        # llama.cpp answers one request at a time: 2 in flight keeps it busy
        conc = 2 if "--concurrency" not in sys.argv else args.concurrency
        real_teacher(args.real_teacher, args.actors, conc, args.work)
        return
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
