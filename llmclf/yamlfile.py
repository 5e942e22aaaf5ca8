"""Load a YAML file into a strict pydantic model, with errors that name the file, line and field.

Example:
    >>> from pydantic import BaseModel
    >>> class Cfg(BaseModel):
    ...     n: int
    >>> load_model_from_yaml_text("n: three\\n", Cfg, path="cfg.yaml")
    Traceback (most recent call last):
    ...
    llmclf.errors.TaskFileError: cfg.yaml:1: n: Input should be a valid integer, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from llmclf.errors import TaskFileError

M = TypeVar("M", bound=BaseModel)


def _line_index(node: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map every path in a composed YAML document to its 1-based line."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = key_node.value
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
                # keep the key's own line for the entry, which is what an editor shows
                lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    return lines


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def load_model_from_yaml_text(text: str, model: type[M], *, path: str = "<string>") -> M:
    """Parse YAML text and validate it as ``model``; errors carry path, line and field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise TaskFileError(f"invalid YAML: {exc.problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:  # e.g. a control character the YAML reader refuses
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise TaskFileError(f"invalid YAML: {reason}", path=path, line=line) from None
    if data is None:
        raise TaskFileError("file is empty", path=path, line=1)
    if not isinstance(data, dict):
        raise TaskFileError("must be a mapping at the top level", path=path, line=1)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line = _line_for(loc, _line_index(node))
        field = ".".join(str(p) for p in loc) or None
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        raise TaskFileError(msg, path=path, line=line, field=field) from None


def load_model_from_yaml(path: str | Path, model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError("file not found", path=str(p)) from None
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"not UTF-8 text ({exc.reason})", path=str(p)) from None
    return load_model_from_yaml_text(text, model, path=str(p))
