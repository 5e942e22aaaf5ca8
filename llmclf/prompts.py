"""Versioned prompt templates: ``prompts/<name>.v<N>.yaml``, sandboxed Jinja with strict undefined.

A published version is never edited; a change is a new version. Every prediction records the
template's ``name.vN`` and the hash of its file, so runs can be compared prompt against prompt.

Example:
    >>> from llmclf.types import Task
    >>> tpl = PromptTemplate.load("zero_shot")                       # doctest: +SKIP
    >>> msgs = tpl.render(task, "I loved it")                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field

from llmclf.errors import TaskFileError
from llmclf.types import ABSTAIN, Example, Task
from llmclf.yamlfile import load_model_from_yaml_text

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True)
_FILE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)\.v(?P<version>\d+)\.ya?ml$")


class PromptSpec(BaseModel):
    """The YAML schema of a prompt file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    description: str = ""
    system: str
    user: str
    example_user: str | None = None
    example_assistant: str | None = None
    few_shot: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


def prompt_dirs() -> list[Path]:
    """Prompt lookup order: ``$LLMCLF_PROMPTS_DIR``, ``./prompts``, then the shipped ones."""
    dirs = []
    if os.environ.get("LLMCLF_PROMPTS_DIR"):
        dirs.append(Path(os.environ["LLMCLF_PROMPTS_DIR"]))
    dirs.append(Path.cwd() / "prompts")
    dirs.append(Path(__file__).resolve().parent.parent / "prompts")
    return dirs


def answer_json(task: Task, labels: Sequence[str]) -> str:
    """The JSON answer the model is asked to produce (also used to render few-shot answers)."""
    if task.is_multilabel:
        return json.dumps({"labels": list(labels)})
    return json.dumps({"label": labels[0] if labels else ABSTAIN})


class PromptTemplate:
    """A loaded prompt file; `render` turns a task and a text into chat messages."""

    def __init__(self, spec: PromptSpec, *, source: str, path: str = "<string>") -> None:
        self.spec = spec
        self.path = path
        self.hash = hashlib.sha256(source.encode()).hexdigest()[:12]
        self._compiled = {}
        for field in ("system", "user", "example_user", "example_assistant"):
            text = getattr(spec, field)
            if text is None:
                continue
            try:
                self._compiled[field] = _ENV.from_string(text)
            except TemplateSyntaxError as exc:
                raise TaskFileError(
                    f"template syntax error: {exc.message} (template line {exc.lineno})",
                    path=path,
                    field=field,
                ) from None

    @property
    def id(self) -> str:
        """``name.vN@hash``, recorded with every run and prediction."""
        return f"{self.spec.name}.v{self.spec.version}@{self.hash}"

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTemplate:
        p = Path(path)
        try:
            source = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TaskFileError("prompt file not found", path=str(p)) from None
        spec = load_model_from_yaml_text(source, PromptSpec, path=str(p))
        m = _FILE_RE.match(p.name)
        if m and (m["name"] != spec.name or int(m["version"]) != spec.version):
            raise TaskFileError(
                f"file name says {m['name']}.v{m['version']} but the file says "
                f"{spec.name}.v{spec.version}",
                path=str(p),
                line=1,
                field="name",
            )
        return cls(spec, source=source, path=str(p))

    @classmethod
    def load(cls, ref: str) -> PromptTemplate:
        """Load by path, by ``name.vN``, or by ``name`` (its latest version).

        Example:
            >>> PromptTemplate.load("zero_shot").spec.name                  # doctest: +SKIP
            'zero_shot'
        """
        if ref.endswith((".yaml", ".yml")) or os.sep in ref:
            return cls.from_file(ref)
        name, _, ver = ref.partition(".v")
        for d in prompt_dirs():
            if not d.is_dir():
                continue
            found: list[tuple[int, Path]] = []
            for f in d.iterdir():
                m = _FILE_RE.match(f.name)
                if m and m["name"] == name:
                    found.append((int(m["version"]), f))
            if ver:
                found = [(v, f) for v, f in found if str(v) == ver]
            if found:
                return cls.from_file(max(found)[1])
        known = sorted({f.name for d in prompt_dirs() if d.is_dir() for f in d.glob("*.v*.yaml")})
        raise TaskFileError(
            f"no prompt {ref!r} in {[str(d) for d in prompt_dirs()]}; known: {known}",
            field="prompt",
        )

    def _render_one(self, field: str, ctx: dict[str, Any]) -> str:
        try:
            return str(self._compiled[field].render(**ctx)).strip()
        except UndefinedError as exc:
            raise TaskFileError(
                f"template uses an undefined variable: {exc.message}", path=self.path, field=field
            ) from None
        except TemplateError as exc:
            raise TaskFileError(f"template error: {exc}", path=self.path, field=field) from None

    def render(
        self, task: Task, text: str, examples: Sequence[Example] = ()
    ) -> list[dict[str, str]]:
        """Chat messages for one text. ``examples`` are few-shot examples (static + dynamic)."""
        labels = [
            {"name": lab.name, "description": lab.description, "examples": list(lab.examples)}
            for lab in task.labels
        ]
        shots = [
            {"text": ex.text, "labels": list(ex.gold), "answer": answer_json(task, ex.gold)}
            for ex in examples
        ]
        ctx: dict[str, Any] = {
            "task": {
                "name": task.name,
                "kind": task.kind,
                "description": task.description,
                "instructions": task.instructions,
            },
            "labels": labels,
            "label_names": list(task.label_names),
            "multilabel": task.is_multilabel,
            "allow_abstain": task.allow_abstain,
            "abstain": ABSTAIN,
            "examples": shots,
            "text": text,
        }
        system = self._render_one("system", ctx)
        messages = [{"role": "system", "content": system}] if system else []
        if "example_user" in self._compiled and "example_assistant" in self._compiled:
            for shot in shots:
                shot_ctx = {**ctx, "text": shot["text"], "example": shot}
                messages.append(
                    {"role": "user", "content": self._render_one("example_user", shot_ctx)}
                )
                messages.append(
                    {
                        "role": "assistant",
                        "content": self._render_one("example_assistant", shot_ctx),
                    }
                )
        messages.append({"role": "user", "content": self._render_one("user", ctx)})
        return messages
