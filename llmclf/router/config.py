"""The router config file: strict YAML, checked, then resolved into named backends.

Every error names the file, the line and the field (``router.yaml:6: cascade.escalate_to:
unknown backend 'gpt'``). Relative paths are resolved against the config file's directory.
Backends are built by the ``make_backend`` the caller injects (by default
`llmclf.backends.registry.make_backend`), so this module builds trees of any backends without
the registry knowing routers exist. The policies and the `Router` facade are built from the
`ResolvedRouter` this module returns (`llmclf.router.tree`).

```yaml
task: sst2                      # a task.yaml path or an eval-set name
backends:
  student: setfit:models/sst2   # name: spec, or name: {spec, options, timeout_ms, concurrency}
  llm: llm:local
cascade:
  student: student
  escalate_to: llm
  threshold: 0.8                # or {positive: 0.85, negative: 0.75}; default: the model card's
  # target_accuracy: 0.9        # instead of threshold: answer from a calibrated student when its
                                # calibrated probability of being right is at least 0.9
fallbacks: [llm]
timeouts: {default: 30000, student: 1000}     # milliseconds
shadow: {backend: llm, share: 0.02, window: 500, warn_below: 0.85}
review: {strategy: margin, threshold: 0.2, budget: 500, min_per_label: 10}
ab: {arms: {cascade: 0.9, llm: 0.1}}
shortlist: {backend: student, k: 5}           # the LLMs ask among the student's top 5 labels
```

Example:
    >>> plan = resolve_router_config(load_router_config("router.yaml"))    # doctest: +SKIP
    >>> sorted(plan.backends), plan.thresholds
    (['llm', 'student'], {'negative': 0.8, 'positive': 0.8})
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmclf.backends.base import Backend
from llmclf.errors import ConfigError, TaskFileError
from llmclf.router.shortlist import (
    ShortlistConfig,
    apply_shortlist,
    check_shortlist_references,
)
from llmclf.specs import parse_spec
from llmclf.store import Store, open_store
from llmclf.task_refs import find_task_file, task_candidates
from llmclf.types import Task
from llmclf.yamlfile import _line_for, _line_index, load_model_from_yaml_text

__all__ = [
    "CASCADE_ARM",
    "ABConfig",
    "BackendEntry",
    "CascadeConfig",
    "MakeBackend",
    "ResolvedRouter",
    "ReviewConfig",
    "RouterConfig",
    "RouterFile",
    "ShadowConfig",
    "load_router_config",
    "make_named_backend",
    "resolve_router_config",
]

#: The A/B arm name that means "route through the cascade".
CASCADE_ARM = "cascade"

_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"

#: Builds one backend from a spec: ``make_backend(spec, task, store=..., **options)``.
MakeBackend = Callable[..., Backend]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendEntry(_Strict):
    """One named backend: a spec, options for it, and how the router calls it."""

    spec: str = Field(min_length=3)
    options: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=16, ge=1, le=1024)
    microbatch: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    @field_validator("spec")
    @classmethod
    def _spec_parses(cls, v: str) -> str:
        try:
            parse_spec(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


class CascadeConfig(_Strict):
    """Answer from ``student`` when confident enough, else escalate to ``escalate_to``."""

    student: str
    escalate_to: str
    threshold: float | dict[str, float] | None = None
    #: "The student answers when its calibrated probability of being right is at least this":
    #: translated into a threshold on a calibrated student's scores (`llmclf.calibration`).
    target_accuracy: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _threshold_or_target(self) -> CascadeConfig:
        if self.threshold is not None and self.target_accuracy is not None:
            raise ValueError("give threshold or target_accuracy, not both")
        return self

    @field_validator("threshold")
    @classmethod
    def _in_range(cls, v: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        for x in values:
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"a threshold is a score between 0 and 1, got {x}")
        return v


class ShadowConfig(_Strict):
    """Send ``share`` of the answered texts to ``backend`` too, and track agreement."""

    backend: str
    share: float = Field(default=0.05, ge=0.0, le=1.0)
    window: int = Field(default=500, ge=1)
    warn_below: float = Field(default=0.85, ge=0.0, le=1.0)
    min_samples: int = Field(default=50, ge=1)
    queue_size: int = Field(default=64, ge=1)
    workers: int = Field(default=1, ge=1, le=64)


class ReviewConfig(_Strict):
    """Which answers go to the human review queue (see `llmclf.review_strategies`).

    ``strategy``: ``threshold`` (top score below ``threshold``), ``margin`` (top minus
    runner-up below ``threshold``), ``entropy`` (normalised entropy above ``threshold``) or
    ``disagreement`` (the shadow backend gave other labels; needs a ``shadow`` section).
    ``budget``: most rows a UTC day. ``min_per_label``: each label's first N answers a day are
    reviewed, and budget is held back for them (an int for all labels, or ``{label: n}``).
    """

    strategy: Literal["threshold", "margin", "entropy", "disagreement"] = "threshold"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    budget: int | None = Field(default=None, ge=1)
    min_per_label: int | dict[str, int] | None = None
    store: str | None = None

    @field_validator("min_per_label")
    @classmethod
    def _non_negative(cls, v: int | dict[str, int] | None) -> int | dict[str, int] | None:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        for n in values:
            if n < 0:
                raise ValueError(f"a quota is a number of rows >= 0, got {n}")
        return v

    @model_validator(mode="after")
    def _threshold_needed(self) -> ReviewConfig:
        if self.strategy != "disagreement" and self.threshold is None:
            raise ValueError(f"strategy {self.strategy!r} needs a threshold")
        return self


class ABConfig(_Strict):
    """Split traffic between arms (backend names or ``cascade``) by weight."""

    arms: dict[str, float] = Field(min_length=2)
    sticky: Literal["request_key", "text"] = "request_key"

    @field_validator("arms")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            if w <= 0:
                raise ValueError(f"arm {name!r}: a weight must be > 0, got {w}")
        return v


class RouterConfig(_Strict):
    """The whole router file. Cross-references are checked by `resolve_router_config`."""

    task: str | None = None
    backends: dict[str, BackendEntry] = Field(min_length=1)
    cascade: CascadeConfig | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeouts: dict[str, float] = Field(default_factory=dict)
    shadow: ShadowConfig | None = None
    review: ReviewConfig | None = None
    ab: ABConfig | None = None
    shortlist: ShortlistConfig | None = None
    seed: int | None = None

    @field_validator("backends")
    @classmethod
    def _names(cls, v: dict[str, BackendEntry]) -> dict[str, BackendEntry]:
        for name in v:
            if not re.match(_NAME_PATTERN, name):
                raise ValueError(f"backend name {name!r} may use letters, digits, '_', '.', '-'")
            if name == CASCADE_ARM:
                raise ValueError(f"{CASCADE_ARM!r} is reserved (the A/B arm for the cascade)")
        return v

    @field_validator("timeouts")
    @classmethod
    def _positive_ms(cls, v: dict[str, float]) -> dict[str, float]:
        for name, ms in v.items():
            if ms <= 0:
                raise ValueError(f"{name}: a timeout is a number of milliseconds > 0, got {ms}")
        return v



@dataclass(frozen=True)
class RouterFile:
    """A parsed router config and where it came from (for errors and relative paths)."""

    config: RouterConfig
    source: str = "<config>"
    base_dir: Path = Path(".")
    text: str | None = None


def load_router_config(path: str | Path) -> RouterFile:
    """Read and validate a router config file (unknown fields, bad values: file:line: field).

    Example:
        >>> load_router_config("router.yaml").config.cascade.student   # doctest: +SKIP
        'student'
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError("router config not found", path=str(p)) from None
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"not UTF-8 text ({exc.reason})", path=str(p)) from None
    config = load_model_from_yaml_text(text, RouterConfig, path=str(p))
    return RouterFile(config=config, source=str(p), base_dir=p.parent, text=text)


def parse_router_config(config: RouterConfig | Mapping[str, Any], source: str) -> RouterConfig:
    """A `RouterConfig` from a mapping (validated as the YAML file would be)."""
    if isinstance(config, RouterConfig):
        return config
    return load_model_from_yaml_text(yaml.safe_dump(dict(config)), RouterConfig, path=source)


@dataclass(frozen=True)
class ResolvedRouter:
    """A checked config with everything it names: the task, the backends by name, the cascade
    thresholds per label and the review store. What `llmclf.router.Router` is built from."""

    config: RouterConfig
    task: Task
    backends: dict[str, Backend]
    thresholds: dict[str, float]
    store: Store | None
    source: str
    #: How the cascade thresholds were chosen, when a target was translated into them.
    threshold_note: str | None = None


def resolve_router_config(
    file: RouterFile,
    *,
    make_backend: MakeBackend,
    task: Task | None = None,
    store: Store | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> ResolvedRouter:
    """Check every reference of ``file``'s config and build its backends with ``make_backend``
    (``backends`` supplies ready-made ones by name; they are not built).

    On an error, the backends built so far are closed. Example:
        >>> plan = resolve_router_config(load_router_config("router.yaml"),
        ...                              make_backend=make_backend)      # doctest: +SKIP
    """
    config = file.config
    base = file.base_dir
    where = _Where(file.source, file.text)
    given = dict(backends or {})
    task = _resolve_task(config, task, base, where)
    _check_references(config, set(config.backends) | set(given), task, where)
    built: dict[str, Backend] = {}
    try:
        for bname, entry in config.backends.items():
            if bname in given:
                continue
            spec = _resolve_spec(entry.spec, base)
            built[bname] = make_backend(spec, task, store=store, **entry.options)
        all_backends = {**built, **given}
        if config.shortlist is not None:
            all_backends = apply_shortlist(config.shortlist, all_backends, task, where.error)
        thresholds = _resolve_thresholds(config, task, all_backends, where)
        threshold_note = _target_note(config, all_backends)
        review_store = store
        if config.review is not None and config.review.store is not None:
            if "://" in config.review.store:  # a store URL (sqlite:///..., postgresql://...)
                review_store = open_store(config.review.store)
            else:
                review_path = Path(config.review.store).expanduser()
                if not review_path.is_absolute():
                    review_path = base / review_path
                review_store = open_store(review_path)
    except BaseException:
        for b in built.values():
            with contextlib.suppress(Exception):
                b.close()
        raise
    return ResolvedRouter(
        config=config,
        task=task,
        backends=all_backends,
        thresholds=thresholds,
        store=review_store,
        source=file.source,
        threshold_note=threshold_note,
    )


def make_named_backend(
    file: RouterFile, name: str, *, make_backend: MakeBackend, store: Store | None = None
) -> Backend:
    """Build only backend ``name`` of ``file``'s config, for the router's task, as
    `resolve_router_config` would (for a process that serves one backend of a router, e.g. a
    Ray Serve deployment).

    Example:
        >>> make_named_backend(load_router_config("router.yaml"), "student",
        ...                    make_backend=make_backend).name             # doctest: +SKIP
        'setfit:models/sst2'
    """
    config = file.config
    where = _Where(file.source, file.text)
    entry = config.backends.get(name)
    if entry is None:
        known = ", ".join(sorted(config.backends))
        raise where.error(("backends",), f"no backend named {name!r}; the backends are: {known}")
    task = _resolve_task(config, None, file.base_dir, where)
    return make_backend(_resolve_spec(entry.spec, file.base_dir), task, store=store,
                        **entry.options)  # fmt: skip


def _resolve_spec(spec: str, base_dir: Path) -> str:
    """Make a ``setfit:``/``router:`` path relative to the config file's directory."""
    kind, target, _ = parse_spec(spec)
    if kind in {"setfit", "router"} and not Path(target).expanduser().is_absolute():
        rest = spec[len(kind) + 1 + len(target) :]
        return f"{kind}:{(base_dir / target).as_posix()}{rest}"
    return spec


class _Where:
    """Turns a config location into a `TaskFileError` naming the file and the line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.lines: dict[tuple[Any, ...], int] = {}
        if text is not None:
            with contextlib.suppress(yaml.YAMLError):
                self.lines = _line_index(yaml.compose(text, Loader=yaml.SafeLoader))

    def error(self, loc: tuple[Any, ...], message: str) -> TaskFileError:
        line = _line_for(loc, self.lines) if self.lines else None
        return TaskFileError(
            message, path=self.source, line=line, field=".".join(str(p) for p in loc) or None
        )


def _resolve_task(config: RouterConfig, task: Task | None, base: Path, where: _Where) -> Task:
    if config.task is None:
        if task is None:
            raise where.error(("task",), "no task: name a task.yaml path or an eval-set name")
        return task
    try:
        task_path = find_task_file(config.task, base)
    except TaskFileError:
        candidates = ", ".join(str(c) for c in task_candidates(config.task, base))
        raise where.error(
            ("task",), f"task {config.task!r} not found (looked at {candidates})"
        ) from None
    loaded = Task.from_yaml(task_path)
    if task is not None and (
        task.name != loaded.name
        or task.kind != loaded.kind
        or task.label_names != loaded.label_names
    ):
        raise where.error(
            ("task",),
            f"the router serves task {loaded.name!r} {list(loaded.label_names)}, "
            f"but task {task.name!r} {list(task.label_names)} was given",
        )
    return loaded

def _check_references(
    config: RouterConfig, names: set[str], task: Task, where: _Where
) -> None:
    known = ", ".join(sorted(names))

    def need(loc: tuple[Any, ...], name: str) -> None:
        if name not in names:
            raise where.error(loc, f"unknown backend {name!r}; the backends are: {known}")

    if config.cascade is not None:
        need(("cascade", "student"), config.cascade.student)
        need(("cascade", "escalate_to"), config.cascade.escalate_to)
        if config.cascade.student == config.cascade.escalate_to:
            raise where.error(("cascade", "escalate_to"), "must differ from cascade.student")
        if isinstance(config.cascade.threshold, dict):
            for label in config.cascade.threshold:
                if label not in task.label_names:
                    raise where.error(
                        ("cascade", "threshold", label),
                        f"unknown label {label!r}; labels: {', '.join(task.label_names)}",
                    )
    for i, name in enumerate(config.fallbacks):
        need(("fallbacks", i), name)
    for name in config.timeouts:
        if name != "default":
            need(("timeouts", name), name)
    if config.shadow is not None:
        need(("shadow", "backend"), config.shadow.backend)
    if config.shortlist is not None:
        check_shortlist_references(config.shortlist, names, where.error)
    if config.review is not None:
        if config.review.strategy == "disagreement" and config.shadow is None:
            raise where.error(
                ("review", "strategy"),
                "strategy 'disagreement' compares with the shadow backend: add a shadow section",
            )
        quotas = config.review.min_per_label
        if isinstance(quotas, dict):
            for label in quotas:
                if label not in task.label_names:
                    raise where.error(
                        ("review", "min_per_label", label),
                        f"unknown label {label!r}; labels: {', '.join(task.label_names)}",
                    )
    if config.ab is not None:
        for arm in config.ab.arms:
            if arm == CASCADE_ARM:
                if config.cascade is None:
                    raise where.error(
                        ("ab", "arms", arm), "the 'cascade' arm needs a cascade section"
                    )
                continue
            need(("ab", "arms", arm), arm)
    if config.cascade is None and config.ab is None and not config.fallbacks:
        raise where.error(
            (),
            "nothing to route to: give a cascade, an ab split, or a fallbacks list "
            "(its first backend is the primary one)",
        )

def _target_note(config: RouterConfig, backends: Mapping[str, Backend]) -> str | None:
    """What ``cascade.target_accuracy`` was translated into, for the logs and the service."""
    if config.cascade is None or config.cascade.target_accuracy is None:
        return None
    student = backends[config.cascade.student]
    cal = student.calibration
    assert cal is not None
    t = config.cascade.target_accuracy
    return (
        f"cascade.target_accuracy {t:g}: {student.name} answers when its {cal.method}-calibrated "
        f"confidence is at least {t:g}, else {config.cascade.escalate_to} does"
    )


def _resolve_thresholds(
    config: RouterConfig, task: Task, backends: Mapping[str, Backend], where: _Where
) -> dict[str, float]:
    if config.cascade is None:
        return {}
    given = config.cascade.threshold
    out: dict[str, float] = {}
    target = config.cascade.target_accuracy
    if target is not None:
        student = backends[config.cascade.student]
        if student.calibration is None:
            raise where.error(
                ("cascade", "target_accuracy"),
                f"needs a calibrated student, and {student.name} is not: fit its calibrator with "
                f"`llmclf calibrate --backend {student.name}` (calibration.json), or set "
                "cascade.threshold",
            )
        # calibrated scores are probabilities of being right: the target is the threshold
        return {lab: float(target) for lab in task.label_names}
    if isinstance(given, float | int):
        return {lab: float(given) for lab in task.label_names}
    if isinstance(given, dict):
        out.update({k: float(v) for k, v in given.items()})
    student = backends[config.cascade.student]
    card = student.escalation_threshold
    for lab in task.label_names:
        if lab in out:
            continue
        if isinstance(card, dict) and lab in card:
            out[lab] = float(card[lab])
        elif isinstance(card, float | int):
            out[lab] = float(card)
    missing = [lab for lab in task.label_names if lab not in out]
    if missing:
        raise where.error(
            ("cascade", "threshold"),
            f"no threshold for labels {missing}: set cascade.threshold, or use a student "
            "whose model directory has a calibrated escalation_threshold (router.json)",
        )
    return out

