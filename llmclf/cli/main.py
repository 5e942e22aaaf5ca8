"""The ``llmclf`` command. Each command group lives in its own module under ``llmclf/cli/``.

Example:
    $ llmclf classify --task eval_sets/sst2/task.yaml "I loved it"
    {"label": "positive", "labels": ["positive"], "scores": {...}, ...}
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

# Hugging Face's own per-file bars ("Loading weights", "Writing model shards") would interleave
# with llmclf's progress bars on every model load; llmclf draws the bars that matter. Set before
# transformers is imported (it reads the flag once); an explicit user setting wins.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from llmclf.errors import LLMClfError

app = typer.Typer(
    name="llmclf",
    help="Text classification with LLMs: classify, evaluate prompts, distill, route and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Text classification with LLMs: classify, evaluate prompts, distill, route and serve."""


# Modules that add commands to `app`, one command (or group) each; each defines `register(app)`
# and imports its heavy dependencies only when its command runs.
COMMAND_MODULES = (
    "llmclf.cli.classify",
    "llmclf.cli.eval",
    "llmclf.cli.calibrate",
    "llmclf.cli.runs",
    "llmclf.cli.report",
    "llmclf.cli.distill",
    "llmclf.cli.label",
    "llmclf.cli.review",
    "llmclf.cli.serve",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Run the CLI; llmclf errors print one clear line and exit 2 instead of a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=True)
    except LLMClfError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
