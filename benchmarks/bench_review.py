"""What a human label is worth: 100 human labels added to a teacher-labelled SST-2 set, chosen
three ways, and how fast a person gets through the review page.

1. The teacher (``--teacher``, default ``llm:local``) labels the unlabelled set
   (``eval_sets/sst2/unlabeled.jsonl``, 2,000 train sentences; cached and resumable in the store).
2. A head-only student (frozen MiniLM body, logistic-regression head) is trained on it.
3. ``--n-human`` texts of a pool the student never saw (SST-2 ``validation``, 2,000 rows) get
   their gold label (standing in for the human), chosen
   - at random;
   - by the router's threshold (`ReviewGate(strategy="threshold", budget=N)` over the pool in
     arrival order: the first N answers below the student's threshold);
   - by ``review suggest`` (margin + k-center on the student's embeddings).
4. The student is retrained with them, and scored on SST-2 ``test`` (436 sentences it never saw),
   for each ``--seeds`` (the seed orders the pool's arrival, draws the random picks, and seeds
   the head).
5. A scripted browser session (Selenium + Debian's chromium-driver) works through
   ``--browser-items`` queued items on the review page by keyboard; items per minute.

The embeddings are computed once; only heads are retrained (a head-only student is exactly a
head on the frozen body's embeddings).

Usage:
    python benchmarks/bench_review.py                       # llm:local teacher, 3 seeds
    python benchmarks/bench_review.py --teacher setfit:models/sst2 --n-unlabeled 500 --json
    # where the embedded LLM cannot run (a loaded machine): a weaker real teacher, a head-only
    # student trained on N gold train rows that are not among the unlabelled texts
    python benchmarks/bench_review.py --build-teacher 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SST2 = Path("/work/shared/datasets/sst2")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def teacher_labels(task: Any, teacher: str, n: int) -> tuple[list[str], list[list[str]]]:
    from llmclf.distill import label_unlabeled

    tl = label_unlabeled(task, teacher, REPO / "eval_sets" / "sst2" / "unlabeled.jsonl",
                         limit=n, progress=True)  # fmt: skip
    rows = [r for r in tl.rows if r.labels]
    return [r.text for r in rows], [list(r.labels) for r in rows]


def build_teacher(n: int, out: Path) -> str:
    """A head-only student on the last ``n`` gold SST-2 train rows (disjoint from the
    unlabelled texts, which are early train rows): a real, weaker teacher. Returns its spec."""
    from llmclf.distill import save_student, train_student
    from llmclf.types import Task

    task = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    unl = {r["text"] for r in _rows(REPO / "eval_sets" / "sst2" / "unlabeled.jsonl")}
    rows = [r for r in _rows(SST2 / "train.jsonl") if r["text"] not in unl][-n:]
    student = train_student([r["text"] for r in rows], [[r["label"]] for r in rows], task,
                            mode="head-only")  # fmt: skip
    save_student(student, task, out)
    return f"setfit:{out}"


def accuracy(head: Any, emb: np.ndarray, gold: list[str], names: list[str]) -> float:
    pred = head.scores(emb).argmax(1)
    return float(np.mean([names[p] == g for p, g in zip(pred, gold, strict=True)]))


def learning(args: argparse.Namespace) -> dict[str, Any]:
    from llmclf.distill import fit_head
    from llmclf.distill.train.body import encode as _encode
    from llmclf.distill.train.body import load_body as _load_body
    from llmclf.review_strategies import ReviewGate, suggest
    from llmclf.types import Task

    task = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    names = list(task.label_names)
    t0 = time.perf_counter()
    texts, labels = teacher_labels(task, args.teacher, args.n_unlabeled)
    teacher_s = time.perf_counter() - t0
    pool = _rows(SST2 / "validation.jsonl")[: args.n_pool]
    test = _rows(SST2 / "test.jsonl")
    t0 = time.perf_counter()
    body: list[Any] = []

    def embed(name: str, items: list[str]) -> np.ndarray:
        """The frozen body's embeddings, cached under $LLMCLF_HOME by the texts' hash."""
        from llmclf.paths import home

        key = hashlib.sha256("\0".join(items).encode()).hexdigest()[:16]
        cache = home() / "bench-review" / f"{name}-{key}.npy"
        if cache.exists():
            return np.load(cache)
        if not body:
            body.append(_load_body(None)[0])
        vecs = _encode(body[0], items)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vecs)
        return vecs

    e_unl = embed("unlabeled", texts)
    e_pool = embed("pool", [r["text"] for r in pool])
    e_test = embed("test", [r["text"] for r in test])
    embed_s = time.perf_counter() - t0
    gold_test = [r["label"] for r in test]
    unl_gold = {r["text"]: r["label"] for r in _rows(SST2 / "train.jsonl")}
    teacher_acc = float(np.mean([unl_gold.get(t) == ls[0] for t, ls in zip(texts, labels,
                                                                            strict=True)]))
    results: dict[str, list[float]] = {"teacher only": [], "random": [], "threshold": [],
                                       "suggest": []}  # fmt: skip
    picked_wrong: dict[str, list[float]] = {k: [] for k in ("random", "threshold", "suggest")}
    diag: list[dict[str, Any]] = []
    for seed in args.seeds:
        head, c = fit_head(e_unl, labels, task, seed=seed)
        results["teacher only"].append(accuracy(head, e_test, gold_test, names))
        scores = head.scores(e_pool)
        order = np.random.default_rng(seed).permutation(len(pool))
        picks: dict[str, list[int]] = {}
        picks["random"] = [int(i) for i in order[: args.n_human]]
        gate = ReviewGate(strategy="threshold", threshold=args.threshold, budget=args.n_human)
        thr = []
        for i in order:
            s = {n: float(v) for n, v in zip(names, scores[i], strict=True)}
            if gate.admit((names[int(scores[i].argmax())],), s).admitted:
                thr.append(int(i))
        picks["threshold"] = thr
        picks["suggest"] = suggest(scores, e_pool, args.n_human)
        below = int((scores.max(1) < args.threshold).sum())
        diag.append({"seed": seed, "head_c": c, "pool_below_threshold": below,
                     "threshold_overlap_with_random": len(set(thr) & set(picks["random"])),
                     "suggest_overlap_with_threshold": len(set(picks["suggest"]) & set(thr))})
        for way, idx in picks.items():
            x = np.concatenate([e_unl, e_pool[idx]])
            y = labels + [[pool[i]["label"]] for i in idx]
            h2, _ = fit_head(x, y, task, c=c, seed=seed)
            results[way].append(accuracy(h2, e_test, gold_test, names))
            student_wrong = [names[int(scores[i].argmax())] != pool[i]["label"] for i in idx]
            picked_wrong[way].append(float(np.mean(student_wrong)) if idx else 0.0)
    return {
        "teacher": args.teacher,
        "n_teacher_labelled": len(texts),
        "teacher_accuracy_on_its_texts": round(teacher_acc, 4),
        "n_human": args.n_human,
        "n_pool": len(pool),
        "n_test": len(test),
        "seeds": list(args.seeds),
        "threshold": args.threshold,
        "teacher_seconds": round(teacher_s, 1),
        "embed_seconds": round(embed_s, 1),
        "accuracy": {k: [round(v, 4) for v in vs] for k, vs in results.items()},
        "mean": {k: round(statistics.mean(vs), 4) for k, vs in results.items()},
        "diagnostics": diag,
        "student_wrong_on_picks": {k: round(statistics.mean(v), 3)
                                   for k, v in picked_wrong.items()},
    }


def browser_rate(n_items: int) -> dict[str, Any] | None:
    """Items per minute of a scripted keyboard session on the review page (None: no browser)."""
    import shutil

    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_exe:
        print("no chromium/chromedriver: browser rate skipped", file=sys.stderr)
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from llmclf.service import ServiceSettings
    from llmclf.service.app import create_review_app
    from llmclf.store import Store
    from tests.helpers import Server

    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    store = Store(tmp / "store.db")
    info = {"name": "sst2", "kind": "binary", "labels": ["negative", "positive"]}
    texts = [r["text"] for r in _rows(SST2 / "test.jsonl")][:n_items]
    for i, t in enumerate(texts):
        p = 0.5 + (i % 10) / 40
        store.review_add("sst2", t, {"labels": ["positive"], "scores": {"positive": p,
                         "negative": 1 - p}, "confidence": p, "route": ["student"],
                         "task": info})  # fmt: skip
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp / 'profile'}"):  # fmt: skip
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(driver_exe))
    js = "return document.getElementById('counter').textContent"
    try:
        with Server(create_review_app(store, ServiceSettings())) as srv:
            driver.get(srv.url + "/review")
            WebDriverWait(driver, 30).until(lambda d: "left" in d.execute_script(js))
            keys = ["1", "2", "\n"]
            start = time.perf_counter()
            for i in range(len(texts)):
                webdriver.ActionChains(driver).send_keys(keys[i % 3]).perform()
                WebDriverWait(driver, 30, poll_frequency=0.005).until(
                    lambda d, i=i: f"done {i + 1} " in d.execute_script(js)
                )
            seconds = time.perf_counter() - start
    finally:
        driver.quit()
    assert store.review_counts("sst2")["labelled"] == len(texts)
    return {"items": len(texts), "seconds": round(seconds, 2),
            "items_per_minute": round(len(texts) / seconds * 60, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="llm:local")
    ap.add_argument("--build-teacher", type=int, default=0, metavar="N",
                    help="Use a head-only student on N gold train rows as the teacher.")
    ap.add_argument("--n-unlabeled", type=int, default=2000)
    ap.add_argument("--n-pool", type=int, default=2000)
    ap.add_argument("--n-human", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.8,
                    help="The router's review threshold on the student's top score.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--browser-items", type=int, default=60)
    ap.add_argument("--skip-learning", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    if args.build_teacher:
        where = Path(tempfile.mkdtemp(prefix="bench-review-teacher-")) / "teacher"
        args.teacher = build_teacher(args.build_teacher, where)
    if not args.skip_learning:
        out["learning"] = learning(args)
    if args.browser_items > 0:
        out["browser"] = browser_rate(args.browser_items)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if "learning" in out:
        lr = out["learning"]
        who = (f"a head-only student on {args.build_teacher} gold rows" if args.build_teacher
               else lr["teacher"])  # fmt: skip
        print(f"teacher {who}: {lr['n_teacher_labelled']} texts "
              f"(accuracy on them {lr['teacher_accuracy_on_its_texts']:.3f}); "
              f"+{lr['n_human']} human labels from a pool of {lr['n_pool']}; "
              f"test {lr['n_test']}, seeds {lr['seeds']}")  # fmt: skip
        base = lr["mean"]["teacher only"]
        for way, accs in lr["accuracy"].items():
            m = lr["mean"][way]
            wrong = lr["student_wrong_on_picks"].get(way)
            extra = f"  student wrong on {wrong:.0%} of the picks" if wrong is not None else ""
            print(f"  {way:13s} accuracy {m:.4f} (x{m / base:.3f} vs teacher only) "
                  f"seeds {accs}{extra}")  # fmt: skip
    if out.get("browser"):
        b = out["browser"]
        print(f"review page: {b['items']} items by keyboard in {b['seconds']} s = "
              f"{b['items_per_minute']} items/min")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
