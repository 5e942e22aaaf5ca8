"""The progress bar of long commands (eval, distill): rich, on stderr, with ETA.

Example:
    >>> with contextlib.ExitStack() as stack:                          # doctest: +SKIP
    ...     bar, tid = open_bar(stack, "labelling", total=400, done=0, stats="0 tokens")
    ...     bar.update(tid, advance=1, stats="164 tokens")
"""

from __future__ import annotations

import contextlib
from typing import Any


def open_bar(
    stack: contextlib.ExitStack, label: str, *, total: int, done: int = 0, stats: str | None = None
) -> tuple[Any, Any]:
    """Start a bar (closed with ``stack``): label, bar, n/total, elapsed, ETA and, when ``stats``
    is given, a free-text field updated with ``bar.update(tid, stats=...)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    fields: dict[str, Any] = {}
    if stats is not None:
        columns.append(TextColumn("{task.fields[stats]}"))
        fields["stats"] = stats
    bar = stack.enter_context(Progress(*columns, console=Console(stderr=True)))
    return bar, bar.add_task(label, total=total, completed=done, **fields)
