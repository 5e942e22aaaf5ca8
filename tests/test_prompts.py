"""The shipped prompt templates and the embedded model's plain chat format."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmclf import Task
from llmclf.backends.llama_server_main import render_plain
from llmclf.prompts import PromptTemplate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sst2() -> Task:
    return Task.from_yaml(ROOT / "eval_sets" / "sst2" / "task.yaml")


def test_compact_names_every_label_in_one_sentence(sst2: Task) -> None:
    system = PromptTemplate.load("compact").render(sst2, "fine")[0]["content"]
    assert system.splitlines()[0] == (
        "Classify the text (sentiment of a movie review) as negative or positive."
    )
    assert "the reviewer likes" not in system  # label descriptions left out on purpose


def test_compact_multilabel_and_abstain() -> None:
    task = Task.from_yaml(ROOT / "eval_sets" / "goemotions" / "task.yaml")
    system = PromptTemplate.load("compact").render(task, "wow")[0]["content"]
    assert system.startswith("Tag the text (emotions expressed in a Reddit comment) with every")
    assert '"labels"' in system
    three = Task.from_yaml_text(
        "name: t\nkind: multiclass\nallow_abstain: true\nlabels: [{name: a}, {name: b}, {name: c}]"
    )
    line = PromptTemplate.load("compact").render(three, "x")[0]["content"].splitlines()[0]
    assert line.startswith("Classify the text as a, b or c; answer ")


def test_plain_format_lays_out_few_shot_examples_as_blocks(sst2: Task) -> None:
    messages = PromptTemplate.load("compact_few_shot").render(sst2, "a delight", sst2.examples[:2])
    prompt = render_plain(messages)
    first, second = sst2.examples[:2]
    assert prompt.startswith("<bos>Classify the text (sentiment of a movie review)")
    assert f'Text: {first.text}\n{{"label": "{first.gold[0]}"}}\n\nText: {second.text}' in prompt
    assert prompt.endswith("Text: a delight\n")  # the model answers right after the input
    assert "<start_of_turn>" not in prompt
