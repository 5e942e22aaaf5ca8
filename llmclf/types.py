"""Core value types: `Label`, `Example`, `Task`, `Usage`, `Prediction`.

Example:
    >>> task = Task(name="sentiment", kind="binary", positive_label="positive",
    ...             labels=[Label(name="negative", description="dislikes it"),
    ...                     Label(name="positive", description="likes it")])
    >>> task.label_names
    ('negative', 'positive')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from llmclf.yamlfile import load_model_from_yaml, load_model_from_yaml_text

TaskKind = Literal["binary", "multiclass", "multilabel"]
#: Where raw scores come from.
RawScoreSource = Literal["logprobs", "votes", "verbalized", "model"]
#: How raw scores were calibrated (`llmclf.calibration`).
CalibrationMethod = Literal["temperature", "platt", "isotonic", "contextual"]
#: ``<raw source>`` or ``<raw source>+<calibration method>``, e.g. ``logprobs+temperature``.
ScoreSource = Annotated[
    str,
    StringConstraints(
        pattern=r"^(logprobs|votes|verbalized|model)(\+(temperature|platt|isotonic|contextual))?$"
    ),
]

#: The reserved outcome name a model picks to abstain when a task allows it.
ABSTAIN = "abstain"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    """One label of a task, with the description the prompt shows the model."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    examples: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name_is_clean(cls, v: str) -> str:
        if v != v.strip() or "\n" in v:
            raise ValueError("label name must not have surrounding whitespace or newlines")
        if v == ABSTAIN:
            raise ValueError(f"{ABSTAIN!r} is reserved; set allow_abstain: true instead")
        return v


class Example(_Strict):
    """A labelled example for few-shot prompts (``label`` or ``labels``)."""

    text: str = Field(min_length=1)
    label: str | None = None
    labels: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_of_label_or_labels(self) -> Example:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give exactly one of 'label' or 'labels'")
        return self

    @property
    def gold(self) -> tuple[str, ...]:
        """The example's labels as a tuple, for single- and multi-label alike."""
        if self.labels is not None:
            return self.labels
        assert self.label is not None
        return (self.label,)


class Task(_Strict):
    """A classification task: what to label, with which labels, and how.

    Load one from YAML with `Task.from_yaml`; every error names the file, line and field.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: TaskKind
    labels: tuple[Label, ...] = Field(min_length=2)
    description: str = ""
    instructions: str = ""
    allow_abstain: bool = False
    positive_label: str | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    examples: tuple[Example, ...] = ()
    prompt: str = "zero_shot"
    max_text_chars: int = Field(default=20_000, gt=0)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_mapping(cls, v: Any) -> Any:
        # `labels: {positive: "likes it", negative: "dislikes it"}` is accepted as a shorthand.
        if isinstance(v, dict):
            return [
                {"name": k, **(d if isinstance(d, dict) else {"description": d or ""})}
                for k, d in v.items()
            ]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        names = [lab.name for lab in self.labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate label names: {dupes}")
        if self.kind == "binary":
            if len(names) != 2:
                raise ValueError("a binary task has exactly 2 labels")
            if self.positive_label is None:
                raise ValueError("a binary task names its positive_label")
        if self.positive_label is not None and self.positive_label not in names:
            raise ValueError(f"positive_label {self.positive_label!r} is not one of {names}")
        for i, ex in enumerate(self.examples):
            unknown = [g for g in ex.gold if g not in names]
            if unknown:
                raise ValueError(f"examples[{i}] has labels not in the task: {unknown}")
            if self.kind != "multilabel" and ex.labels is not None and len(ex.labels) != 1:
                raise ValueError(f"examples[{i}]: a single-label task takes one label")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Task:
        """Load a task from a YAML file.

        Example:
            >>> Task.from_yaml("eval_sets/sst2/task.yaml").kind  # doctest: +SKIP
            'binary'
        """
        return load_model_from_yaml(path, cls)

    @classmethod
    def from_yaml_text(cls, text: str, *, path: str = "<string>") -> Task:
        """Load a task from YAML text."""
        return load_model_from_yaml_text(text, cls, path=path)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label names in declaration order."""
        return tuple(lab.name for lab in self.labels)

    @property
    def is_multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def negative_label(self) -> str | None:
        """For a binary task, the label that is not the positive one."""
        if self.kind != "binary":
            return None
        return next(n for n in self.label_names if n != self.positive_label)

    def fingerprint(self) -> str:
        """A short hash of everything in the task that changes what a model is asked."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Usage(BaseModel):
    """Token usage, retries and cost of answering one request."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    retries: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        cost = None
        if self.cost_usd is not None or other.cost_usd is not None:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            llm_calls=self.llm_calls + other.llm_calls,
            retries=self.retries + other.retries,
            cost_usd=cost,
        )


class Prediction(BaseModel):
    """What every backend returns for one text.

    ``scores`` holds a score for every label of the task: they sum to 1 for a single-label
    task and are independent per label for a multi-label one. The labels follow the scores
    (`llmclf.decision.decide`): the top score for a single-label task, unless a binary task's
    ``threshold`` (set, when it is not 0.5, on the answer) says why. ``calibrated`` says whether
    the scores went through a fitted calibrator (``score_source`` then names it, e.g.
    ``logprobs+temperature``); ``raw_scores`` then keeps the scores before calibration.

    Example:
        >>> p = Prediction(labels=("positive",), scores={"negative": 0.1, "positive": 0.9},
        ...                score_source="logprobs", backend="llm:local")
        >>> p.label, p.confidence
        ('positive', 0.9)
    """

    model_config = ConfigDict(extra="forbid")

    labels: tuple[str, ...]
    scores: dict[str, float]
    score_source: ScoreSource
    backend: str
    abstained: bool = False
    abstain_score: float | None = None
    route: tuple[str, ...] = ()
    route_reason: str | None = None
    latency_ms: float = 0.0
    usage: Usage = Field(default_factory=Usage)
    prompt_hash: str | None = None
    cached: bool = False
    raw_output: str | None = None
    calibrated: bool = False
    raw_scores: dict[str, float] | None = None
    threshold: float | None = None

    @property
    def label(self) -> str | None:
        """The single label (None when abstained or when a multi-label answer has no label)."""
        return self.labels[0] if self.labels else None

    @property
    def confidence(self) -> float:
        """The top score: how sure the backend is of its answer."""
        if self.abstained:
            return self.abstain_score if self.abstain_score is not None else 0.0
        if not self.scores:
            return 0.0
        if self.labels and len(self.labels) > 1:
            # multi-label: the least sure of the chosen labels
            return min(self.scores.get(lab, 0.0) for lab in self.labels)
        return max(self.scores.values())

    def matches(self, gold: Sequence[str] | str) -> bool:
        """True when this answer is the gold answer: same labels, not abstained.

        Example:
            >>> Prediction(labels=("positive",), scores={"positive": 0.9, "negative": 0.1},
            ...            score_source="logprobs", backend="x").matches(["positive"])
            True
        """
        golds = {gold} if isinstance(gold, str) else set(gold)
        return not self.abstained and set(self.labels) == golds

    def to_json_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict, as the CLI and the service print it."""
        d = self.model_dump(mode="json")
        d["label"] = self.label
        d["confidence"] = round(self.confidence, 6)
        return d
