"""Task files: strict schema, and errors that name the file, the line and the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclf.errors import TaskFileError
from llmclf.types import Task


def write(tmp_path, text: str):
    p = tmp_path / "task.yaml"
    p.write_text(text)
    return p


def test_shipped_sst2_task_loads():
    from tests.helpers import REPO

    task = Task.from_yaml(REPO / "eval_sets/sst2/task.yaml")
    assert task.kind == "binary" and task.positive_label == "positive"
    assert all(lab.description for lab in task.labels)


def test_bad_kind_names_file_line_and_field(tmp_path):
    p = write(tmp_path, "name: t\nlabels: {a: x, b: y}\nkind: ternary\n")
    with pytest.raises(TaskFileError) as err:
        Task.from_yaml(p)
    assert err.value.path == str(p) and err.value.line == 3 and err.value.field == "kind"
    assert str(err.value).startswith(f"{p}:3: kind:")


def test_unknown_field_is_rejected_with_its_line(tmp_path):
    p = write(
        tmp_path,
        "name: t\nkind: multiclass\nlabels:\n  - name: a\n    descripton: typo\n  - name: b\n",
    )
    with pytest.raises(TaskFileError) as err:
        Task.from_yaml(p)
    assert err.value.line == 5 and err.value.field == "labels.0.descripton"
    assert "unknown field" in str(err.value)


def test_binary_task_needs_positive_label(tmp_path):
    p = write(tmp_path, "name: t\nkind: binary\nlabels: {a: x, b: y}\n")
    with pytest.raises(TaskFileError, match="positive_label"):
        Task.from_yaml(p)


def test_invalid_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "name: t\nkind: binary\nlabels: [a, b\n")
    with pytest.raises(TaskFileError) as err:
        Task.from_yaml(p)
    assert err.value.path == str(p) and err.value.line is not None


def test_missing_file_and_duplicate_labels(tmp_path):
    with pytest.raises(TaskFileError, match="file not found"):
        Task.from_yaml(tmp_path / "nope.yaml")
    p = write(tmp_path, "name: t\nkind: multiclass\nlabels:\n  - name: a\n  - name: a\n")
    with pytest.raises(TaskFileError, match="duplicate label names"):
        Task.from_yaml(p)


def test_example_with_unknown_label_is_rejected():
    with pytest.raises(TaskFileError, match="examples\\[0\\] has labels not in the task"):
        Task.from_yaml_text(
            "name: t\nkind: multiclass\nlabels: {a: x, b: y}\nexamples:\n  - {text: hi, label: c}\n"
        )


def test_abstain_is_reserved():
    with pytest.raises(TaskFileError, match="reserved"):
        Task.from_yaml_text("name: t\nkind: multiclass\nlabels: {abstain: x, b: y}\n")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_text_either_loads_or_raises_task_file_error(text):
    try:
        task = Task.from_yaml_text(text, path="fuzz.yaml")
    except TaskFileError as exc:
        assert str(exc).startswith("fuzz.yaml")
    else:
        assert len(task.labels) >= 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12),
        min_size=2,
        max_size=6,
        unique=True,
    ).filter(lambda names: "abstain" not in names)
)
def test_valid_label_sets_round_trip(names):
    task = Task(name="t", kind="multiclass", labels=[{"name": n} for n in names])
    assert task.label_names == tuple(names)
    assert Task.model_validate(task.model_dump()).fingerprint() == task.fingerprint()
