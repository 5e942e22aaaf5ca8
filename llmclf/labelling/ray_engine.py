"""``--engine ray``: Ray Data over a Ray cluster (the optional extra ``llmclf[ray]``).

```
missing items ──► ray.data.from_items ──► map_batches(Labeller, actor pool of N actors)
   each actor: its own teacher backend, bounded concurrency, skips keys already stored,
   commits every label to the store as it arrives ──► the driver counts what came back
```

Ray restarts an actor whose node died and retries its batch; the retried batch skips the
keys the store already holds, so nothing is labelled (or stored) twice and nothing is lost.
The actors write to the same store as the driver: on a cluster of several machines use a shared
PostgreSQL store (``--db postgresql://...``); the SQLite default suits one machine's cluster.
``address`` is a running cluster (``ray://host:10001``, ``host:6379``, ``auto``); without one a
local Ray instance is started and stopped again. Ray's usage stats stay off.

Example:
    >>> report = run_ray(job, address="auto", actors=8, concurrency=16)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llmclf.errors import BackendError, ConfigError, InputTextError
from llmclf.labelling.job import Item, LabelJob
from llmclf.types import Task, Usage

#: Texts per Ray task: small, so a dead node loses (and a retry repeats) little.
BATCH_SIZE = 16
#: Ray Data passes over what is still missing when a pass stops on a Ray error.
PASSES = 3

log = logging.getLogger("llmclf.labelling.ray")


@dataclass
class RayReport:
    """What one run of the Ray engine did."""

    n_new: int = 0
    usage: Usage = field(default_factory=Usage)
    failures: list[tuple[Item, str]] = field(default_factory=list)


class Labeller:
    """A Ray actor: labels batches of items with its own teacher backend and commits each
    label to the store at once (a retried batch skips the keys already stored)."""

    def __init__(
        self,
        task: Task,
        teacher: str,
        options: dict[str, Any],
        store_path: str,
        job: str,
        concurrency: int,
    ) -> None:
        from llmclf.backends.registry import make_backend
        from llmclf.store import open_store

        self.store = open_store(store_path)
        self.backend = make_backend(teacher, task, store=self.store, **options)
        self.job = job
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llmclf-ray")

    def _one(self, item: Item) -> dict[str, Any]:
        try:
            pred = self.backend.predict_batch([item.text])[0]
        except (BackendError, InputTextError) as exc:
            return {
                "key": item.key,
                "ok": False,
                "new": False,
                "error": f"{type(exc).__name__}: {exc}",
                "usage": "{}",
            }
        record = {
            "position": item.position,
            "id": item.id,
            "line": item.line,
            "prediction": pred.model_dump(mode="json"),
        }
        self.store.put_teacher_label(self.job, item.key, item.position, item.text, record)
        return {
            "key": item.key,
            "ok": True,
            "new": True,
            "error": "",
            "usage": pred.usage.model_dump_json(),
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [
            Item(str(k), int(p), str(t), int(ln), None if i is None or i == "" else str(i))
            for k, p, t, ln, i in zip(
                batch["key"],
                batch["position"],
                batch["text"],
                batch["line"],
                batch["id"],
                strict=True,
            )
        ]
        present = self.store.teacher_keys_present(self.job, [it.key for it in items])
        todo = [it for it in items if it.key not in present]
        results = list(self.pool.map(self._one, todo))
        results += [
            {"key": it.key, "ok": True, "new": False, "error": "", "usage": "{}"}
            for it in items
            if it.key in present
        ]
        return {name: [r[name] for r in results] for name in ("key", "ok", "new", "error", "usage")}


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'llmclf[ray]'") from None
    return ray


def run_ray(
    job: LabelJob,
    *,
    address: str | None = None,
    actors: int = 2,
    concurrency: int = 4,
    progress: bool = True,
    batch_size: int = BATCH_SIZE,
    actor_cpus: float = 0.25,
) -> RayReport:
    """Label the job's missing items on Ray (see the module docstring)."""
    if actors < 1:
        raise ConfigError(f"actors must be at least 1, got {actors}")
    if job.store.path == ":memory:":
        raise ConfigError("--engine ray needs a store file its actors can open, not :memory:")
    ray = _ray()
    report = RayReport()
    if not job.missing():
        return report
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        for attempt in range(1, PASSES + 1):
            missing = job.missing()
            failed = {it.key for it, _ in report.failures}
            missing = [it for it in missing if it.key not in failed]
            if not missing:
                break
            try:
                _one_pass(
                    ray, job, missing, report, actors, concurrency, progress, batch_size, actor_cpus
                )
            except ray.exceptions.RayError as exc:
                # e.g. a result block lost with its node: the store knows what is done
                log.warning("ray pass %d stopped (%s); labelling what is missing", attempt, exc)
        left = [it for it in job.missing() if it.key not in {f.key for f, _ in report.failures}]
        report.failures += [(it, f"not labelled after {PASSES} Ray passes") for it in left]
    finally:
        if started:
            ray.shutdown()
    return report


def _one_pass(
    ray: Any,
    job: LabelJob,
    missing: list[Item],
    report: RayReport,
    actors: int,
    concurrency: int,
    progress: bool,
    batch_size: int,
    actor_cpus: float,
) -> None:
    """One Ray Data pass over ``missing``; adds what came back to ``report``."""
    by_key = {it.key: it for it in missing}
    ds = ray.data.from_items(
        [
            {
                "key": it.key,
                "position": it.position,
                "text": it.text,
                "line": it.line,
                "id": it.id or "",
            }
            for it in missing
        ]
    )
    labelled = ds.map_batches(
        Labeller,
        fn_constructor_kwargs={
            "task": job.task,
            "teacher": job.teacher,
            "options": job.options,
            # the full URL (a PostgreSQL password too): every actor opens the same store
            "store_path": job.store.url.url
            if job.store.dialect == "postgresql"
            else job.store.path,
            "job": job.job,
            "concurrency": concurrency,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        scheduling_strategy="SPREAD",
    )
    with contextlib.ExitStack() as stack:
        bar: Any = None
        if progress:
            from llmclf.progress import open_bar

            bar, tid = open_bar(stack, f"ray {job.teacher_shown}", total=len(missing))
        seen: set[str] = set()
        for row in labelled.iter_rows():
            key = str(row["key"])
            if key in seen:  # a retried batch that had already reported this key
                continue
            seen.add(key)
            if row["ok"]:
                report.n_new += int(bool(row["new"]))
                if row["usage"] and row["usage"] != "{}":
                    report.usage = report.usage + Usage.model_validate_json(row["usage"])
            else:
                report.failures.append((by_key[key], str(row["error"])))
            if bar is not None:
                bar.update(tid, advance=1)
