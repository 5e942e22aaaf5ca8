"""Artifact stage: the model directory, written whole or not at all, and its model card.

Everything is written into a temporary directory next to ``out`` (`staged_dir`) and renamed
into place, so a half-written model directory never exists; an existing ``out`` (``--force``)
is swapped out by renames. Leftovers of a process that died (``kill -9``) are tidied by the
next run (`clean_stale_temp_dirs`). The model card (``README.md``) is rendered from
``card.md.j2``, shipped with the package, from the same dict that is written to ``card.json``.

Example:
    >>> with staged_dir(Path("models/sst2"), force=False) as tmp:        # doctest: +SKIP
    ...     save_student(student, task, tmp)
    ...     write_card(tmp, card)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from llmclf.backends.setfit import ONNX_FP32, ONNX_INT8, refuse_pickles
from llmclf.distill.teacher import TeacherRow
from llmclf.errors import ConfigError

__all__ = [
    "check_out",
    "clean_stale_temp_dirs",
    "data_hash",
    "render_card",
    "staged_dir",
    "write_card",
    "write_json",
]

CARD_TEMPLATE = "card.md.j2"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp_dirs(out: Path) -> None:
    """Tidy up after a distill process that died (e.g. ``kill -9``) next to ``out``: remove its
    temp dirs; if it died between the two renames of a ``--force`` swap, put the old model back."""
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, rest = p.name[len(out.name) + 2 :].partition("-")
        try:
            pid = int(rest.split("-", 1)[0])
        except ValueError:
            continue
        if kind not in ("tmp", "old") or pid_alive(pid):
            continue
        if kind == "old" and not (out.exists() or out.is_symlink()):
            os.replace(p, out)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def make_temp_dir(out: Path) -> Path:
    """A fresh ``.NAME.tmp-PID-RANDOM`` directory next to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force`` (checked before any work and at the swap)."""
    if (out.exists() or out.is_symlink()) and not force:
        raise ConfigError(
            f"{out} already exists; choose another --out or pass --force to replace it"
        )


def replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` into place; an existing ``out`` (with ``force``) is swapped out
    by renames, so ``out`` is always either the old or the new complete model."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    check_out(out, force)
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def data_hash(rows: Sequence[TeacherRow]) -> str:
    """A hash of the training set (texts and labels, order-free)."""
    blob = json.dumps(sorted([r.text, sorted(r.labels)] for r in rows), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@contextlib.contextmanager
def staged_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory next to ``out``, moved into place when the block ends without an
    exception (after refusing pickles in it) and removed when it raises."""
    tmp = make_temp_dir(out)
    try:
        yield tmp
        refuse_pickles(tmp)
        replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented UTF-8 JSON with a final newline."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_card(card: dict[str, Any]) -> str:
    """The model card's Markdown, rendered from the ``card.md.j2`` template shipped with the
    package (filters: ``fmt(spec)`` is Python's `format`, ``num`` prints a metric or ``-``).

    Example:
        >>> render_card(card).splitlines()[0]                            # doctest: +SKIP
        '# sst2: a distilled student for task `sst2`'
    """
    import jinja2

    source = resources.files("llmclf.distill").joinpath(CARD_TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fmt"] = _fmt
    env.filters["num"] = _num
    files = {"onnx": ONNX_FP32, "int8": ONNX_INT8}
    return env.from_string(source).render(card=card, onnx_files=files)


def write_card(model_dir: Path, card: dict[str, Any]) -> None:
    """``card.json`` and the rendered ``README.md``."""
    write_json(model_dir / "card.json", card)
    (model_dir / "README.md").write_text(render_card(card), encoding="utf-8")
