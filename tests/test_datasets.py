"""Labelled-case loading (`llmclf.datasets`): every format, every case error, and property tests.

File-format errors (malformed JSON/CSV, bad UTF-8, unreadable Parquet, missing columns) are
in the loader-error table of ``tests/test_readers.py``, for cases and unlabelled inputs alike.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmclf.datasets import (
    Case,
    generated_id,
    list_eval_sets,
    load_cases,
    load_eval_set,
    to_hf_dataset,
    write_cases_jsonl,
)
from llmclf.errors import TaskFileError
from llmclf.types import Task


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def raises_at(path: Path | str, line: int | None, match: str) -> Any:
    """Expect a TaskFileError at ``path:line`` whose message matches ``match``."""
    where = re.escape(f"{path}:{line}:" if line else f"{path}:")
    return pytest.raises(TaskFileError, match=f"^{where}.*{match}")


# --------------------------------------------------------------------------- formats


def test_jsonl_single_label(tmp_path: Path, sentiment_task: Task) -> None:
    p = write(
        tmp_path / "c.jsonl",
        '{"id": "a", "text": "loved it", "label": "positive"}\n'
        "\n"
        '{"id": 7, "text": "awful", "labels": ["negative"]}\n'
        '{"text": "fine I guess", "label": "positive", "note": "extra fields are ignored"}\n',
    )
    cases = load_cases(p, sentiment_task)
    assert [(c.id, c.text, c.labels, c.line) for c in cases] == [
        ("a", "loved it", ("positive",), 1),
        ("7", "awful", ("negative",), 3),
        (generated_id("fine I guess"), "fine I guess", ("positive",), 4),
    ]
    assert cases[1].label == "negative"


def test_jsonl_with_bom_and_crlf(tmp_path: Path, sentiment_task: Task) -> None:
    p = tmp_path / "c.jsonl"
    p.write_bytes(
        b'\xef\xbb\xbf{"text": "ok", "label": "positive"}\r\n'
        b'{"text": "no", "label": "negative"}\r\n'
    )
    assert [c.label for c in load_cases(p, sentiment_task)] == ["positive", "negative"]


def test_jsonl_multilabel_and_empty_list(tmp_path: Path, tags_task: Task) -> None:
    p = jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "1", "text": "wow, yay", "labels": ["surprise", "joy"]},
            {"id": "2", "text": "just a fact", "labels": []},
        ],
    )
    cases = load_cases(p, tags_task)
    assert cases[0].labels == ("surprise", "joy")
    assert cases[1].labels == () and cases[1].label is None


def test_generated_ids_are_stable_and_unique_for_repeated_texts(
    tmp_path: Path, sentiment_task: Task
) -> None:
    rows = [
        {"text": "same", "label": "positive"},
        {"text": "other", "label": "negative"},
        {"text": "same", "label": "positive"},
    ]
    ids = [c.id for c in load_cases(rows, sentiment_task)]
    assert ids == [generated_id("same"), generated_id("other"), generated_id("same") + "-2"]
    # adding a row in front does not change the ids of the others
    ids2 = [c.id for c in load_cases([{"text": "new", "label": "negative"}, *rows], sentiment_task)]
    assert ids2[1:] == ids
    assert re.fullmatch(r"text-[0-9a-f]{12}", generated_id("x"))


def test_csv_with_multiline_text_and_labels_cells(tmp_path: Path, tags_task: Task) -> None:
    p = write(
        tmp_path / "c.csv",
        'id,text,labels\na,"two\nlines",joy|surprise\nb,plain,"[""anger""]"\n,no id,\n',
    )
    cases = load_cases(p, tags_task)
    assert [(c.id, c.text, c.labels, c.line) for c in cases] == [
        ("a", "two\nlines", ("joy", "surprise"), 2),
        ("b", "plain", ("anger",), 4),
        (generated_id("no id"), "no id", (), 5),
    ]


def test_tsv(tmp_path: Path, topic_task: Task) -> None:
    p = write(tmp_path / "c.tsv", "id\ttext\tlabel\nx1\tStocks fell, again\tbusiness\n")
    (case,) = load_cases(p, topic_task)
    assert (case.id, case.text, case.label) == ("x1", "Stocks fell, again", "business")


def test_parquet_plain(tmp_path: Path, tags_task: Task) -> None:
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "labels": [["joy"], ["anger", "joy"]]}), p)
    cases = load_cases(p, tags_task)
    assert [(c.labels, c.line) for c in cases] == [(("joy",), 1), (("anger", "joy"), 2)]


def test_parquet_error_names_the_row(tmp_path: Path, sentiment_task: Task) -> None:
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["positive", "meh"]}), p)
    with raises_at(p, 2, "unknown label 'meh'"):
        load_cases(p, sentiment_task)


def test_hf_dataset_round_trip_single(sentiment_task: Task) -> None:
    cases = load_cases(
        [
            {"id": "a", "text": "good", "label": "positive"},
            {"id": "b", "text": "bad", "label": "negative"},
        ],
        sentiment_task,
    )
    ds = to_hf_dataset(cases, sentiment_task)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["id", "text", "label"]
    assert ds.features["label"].names == ["negative", "positive"]
    assert ds["label"] == [1, 0]
    back = load_cases(ds, sentiment_task)
    assert [(c.id, c.text, c.labels) for c in back] == [(c.id, c.text, c.labels) for c in cases]


def test_hf_dataset_round_trip_multilabel_via_parquet(tmp_path: Path, tags_task: Task) -> None:
    cases = [Case("1", "wow", ("surprise", "joy")), Case("2", "hmm", ())]
    ds = to_hf_dataset(cases, tags_task)
    assert ds.column_names == ["id", "text", "labels"]
    assert ds[0]["labels"] == [2, 0]
    p = tmp_path / "c.parquet"
    ds.to_parquet(str(p))
    # the ClassLabel names travel in the Parquet metadata and are decoded back
    back = load_cases(p, tags_task)
    assert [(c.id, c.labels) for c in back] == [("1", ("surprise", "joy")), ("2", ())]


def test_hf_dataset_with_string_labels_and_custom_fields(topic_task: Task) -> None:
    ds = datasets.Dataset.from_dict({"sentence": ["Goal!"], "topic": ["sports"]})
    (case,) = load_cases(ds, topic_task, text_field="sentence", label_field="topic")
    assert (case.text, case.label, case.line) == ("Goal!", "sports", 1)


def test_hf_dataset_error_names_the_source(sentiment_task: Task) -> None:
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "label": ["positive", "other"]})
    with raises_at("<dataset>", 2, "unknown label 'other'"):
        load_cases(ds, sentiment_task)


def test_to_hf_dataset_rejects_invalid_case(sentiment_task: Task) -> None:
    with pytest.raises(TaskFileError, match="unknown label 'meh'"):
        to_hf_dataset([Case("a", "t", ("meh",), line=3)], sentiment_task)
    with pytest.raises(TaskFileError, match="exactly one label"):
        to_hf_dataset([Case("a", "t", ("negative", "positive"))], sentiment_task)


def test_write_cases_jsonl_round_trip(tmp_path: Path, tags_task: Task, topic_task: Task) -> None:
    p = tmp_path / "out.jsonl"
    cases = [Case("1", "wow – ünïcode", ("surprise",)), Case("2", "x", ())]
    assert write_cases_jsonl(cases, p, tags_task) == 2
    assert json.loads(p.read_text(encoding="utf-8").splitlines()[0]) == {
        "id": "1",
        "text": "wow – ünïcode",
        "labels": ["surprise"],
    }
    assert [(c.id, c.text, c.labels) for c in load_cases(p, tags_task)] == [
        (c.id, c.text, c.labels) for c in cases
    ]
    write_cases_jsonl([Case("z", "goal", ("sports",))], p, topic_task)
    assert json.loads(p.read_text()) == {"id": "z", "text": "goal", "label": "sports"}


def test_custom_field_names(sentiment_task: Task) -> None:
    rows = [{"uid": "u1", "body": "nice", "y": "positive"}]
    (case,) = load_cases(rows, sentiment_task, text_field="body", label_field="y", id_field="uid")
    assert (case.id, case.text, case.label) == ("u1", "nice", "positive")


# --------------------------------------------------------------------------- errors


def test_unknown_label_lists_valid_labels_and_suggests(tmp_path: Path, topic_task: Task) -> None:
    p = jsonl(
        tmp_path / "c.jsonl", [{"text": "a", "label": "world"}, {"text": "b", "label": "sport"}]
    )
    with raises_at(
        p,
        2,
        "label: unknown label 'sport' \\(did you mean 'sports'\\?\\); "
        "valid labels: world, sports, business, scitech",
    ):
        load_cases(p, topic_task)


def test_unknown_label_in_labels_list(tmp_path: Path, tags_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"text": "a", "labels": ["joy", "fear"]}])
    with raises_at(p, 1, "labels: unknown label 'fear'.*valid labels: joy, anger, surprise"):
        load_cases(p, tags_task)


def test_abstain_is_not_a_gold_label(sentiment_task: Task) -> None:
    with raises_at("<rows>", 1, "'abstain' is not a gold label"):
        load_cases([{"text": "a", "label": "abstain"}], sentiment_task)


def test_non_string_label(tmp_path: Path, sentiment_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": 1}])
    with raises_at(p, 1, "label: a label must be a label name \\(string\\), got int 1"):
        load_cases(p, sentiment_task)


def test_duplicate_id_names_both_lines(tmp_path: Path, sentiment_task: Task) -> None:
    p = jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "a", "text": "x", "label": "positive"},
            {"id": "b", "text": "y", "label": "positive"},
            {"id": "a", "text": "z", "label": "negative"},
        ],
    )
    with raises_at(p, 3, "id: duplicate id 'a': already used on line 1"):
        load_cases(p, sentiment_task)


def test_duplicate_id_int_and_string(sentiment_task: Task) -> None:
    rows = [
        {"id": 1, "text": "x", "label": "positive"},
        {"id": "1", "text": "y", "label": "negative"},
    ]
    with raises_at("<rows>", 2, "duplicate id '1'"):
        load_cases(rows, sentiment_task)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_or_blank_text(tmp_path: Path, sentiment_task: Task, text: str) -> None:
    p = jsonl(
        tmp_path / "c.jsonl",
        [{"text": "ok", "label": "positive"}, {"text": text, "label": "positive"}],
    )
    with raises_at(p, 2, "text: text is empty or blank"):
        load_cases(p, sentiment_task)


def test_missing_text_field(tmp_path: Path, sentiment_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"txt": "a", "label": "positive"}])
    with raises_at(p, 1, "text: missing 'text'"):
        load_cases(p, sentiment_task)


def test_non_string_text(sentiment_task: Task) -> None:
    with raises_at("<rows>", 1, "text: must be a string, got int"):
        load_cases([{"text": 5, "label": "positive"}], sentiment_task)


def test_multilabel_case_in_single_label_task(tmp_path: Path, topic_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"text": "a", "labels": ["world", "business"]}])
    with raises_at(
        p, 1, "labels: task 'topics' is multiclass: a case takes exactly one label, got 2 labels"
    ):
        load_cases(p, topic_task)


def test_empty_labels_in_single_label_task(tmp_path: Path, topic_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"text": "a", "labels": []}])
    with raises_at(p, 1, "exactly one label, got no label"):
        load_cases(p, topic_task)


def test_single_label_case_in_multilabel_task(tmp_path: Path, tags_task: Task) -> None:
    p = jsonl(
        tmp_path / "c.jsonl", [{"text": "a", "labels": ["joy"]}, {"text": "b", "label": "joy"}]
    )
    with raises_at(p, 2, "label: task 'tags' is multilabel: give 'labels' as a list"):
        load_cases(p, tags_task)


def test_labels_must_be_a_list(tags_task: Task) -> None:
    with raises_at("<rows>", 1, "labels: must be a list of label names, got str"):
        load_cases([{"text": "a", "labels": "joy"}], tags_task)


def test_repeated_label_in_list(tags_task: Task) -> None:
    with raises_at("<rows>", 1, "label listed more than once: \\['joy'\\]"):
        load_cases([{"text": "a", "labels": ["joy", "joy"]}], tags_task)


def test_missing_label(tmp_path: Path, sentiment_task: Task, tags_task: Task) -> None:
    p = jsonl(tmp_path / "c.jsonl", [{"text": "a"}])
    with raises_at(p, 1, "label: missing the gold label: give 'label'"):
        load_cases(p, sentiment_task)
    with raises_at(p, 1, "labels: missing the gold label: give 'labels'"):
        load_cases(p, tags_task)


def test_both_label_and_labels(sentiment_task: Task) -> None:
    with raises_at("<rows>", 1, "give one of 'label' or 'labels', not both"):
        load_cases([{"text": "a", "label": "positive", "labels": ["positive"]}], sentiment_task)


@pytest.mark.parametrize("rid", ["", "  ", 1.5, True, ["a"]])
def test_bad_id(sentiment_task: Task, rid: Any) -> None:
    with raises_at("<rows>", 1, "id: "):
        load_cases([{"id": rid, "text": "a", "label": "positive"}], sentiment_task)


def test_unsupported_source_type(sentiment_task: Task) -> None:
    with pytest.raises(TaskFileError, match="cannot read cases from a int"):
        load_cases(42, sentiment_task)  # type: ignore[arg-type]


def test_list_rows_named_in_errors(sentiment_task: Task) -> None:
    with raises_at("my-rows", 1, "unknown label"):
        load_cases([{"text": "a", "label": "x"}], sentiment_task, name="my-rows")


# --------------------------------------------------------------------------- eval sets


def make_set(root: Path, name: str, rows: list[dict[str, Any]], pool: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    write(
        d / "task.yaml",
        f"name: {name}\nkind: binary\npositive_label: pos\n"
        "labels:\n  neg: dislikes it\n  pos: likes it\n",
    )
    jsonl(d / "cases.jsonl", rows)
    if pool:
        jsonl(d / "pool.jsonl", [{"id": "p1", "text": "meh", "label": "neg"}])
    return d


ROWS = [{"id": "c1", "text": "great", "label": "pos"}, {"id": "c2", "text": "bad", "label": "neg"}]


def test_load_eval_set_by_dir_and_task_file(tmp_path: Path) -> None:
    d = make_set(tmp_path, "mine", ROWS)
    es = load_eval_set(d)
    assert es.name == "mine" and es.dir == d and es.task.name == "mine"
    assert [c.id for c in es.cases] == ["c1", "c2"]
    assert es.pool_path == d / "pool.jsonl"
    assert [c.label for c in es.load_pool()] == ["neg"]
    assert es.cases_path == d / "cases.jsonl"
    assert load_eval_set(d / "task.yaml").cases == es.cases
    assert load_eval_set(str(d)).cases == es.cases


def test_load_eval_set_by_name_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_set(tmp_path / "eval_sets", "local_set", ROWS, pool=False)
    monkeypatch.chdir(tmp_path)
    es = load_eval_set("local_set")
    assert es.pool_path is None and es.load_pool() == []
    assert "local_set" in list_eval_sets()
    # a local set shadows a shipped one of the same name
    make_set(tmp_path / "eval_sets", "sst2", ROWS)
    assert load_eval_set("sst2").task.label_names == ("neg", "pos")


def test_load_shipped_eval_set_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./eval_sets here
    es = load_eval_set("sst2")
    assert es.task.name == "sst2" and es.task.positive_label == "positive"


def test_unknown_eval_set_lists_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskFileError, match=r"no eval set named 'nope'.*known sets: .*sst2"):
        load_eval_set("nope")
    with pytest.raises(TaskFileError, match="no such eval-set directory"):
        load_eval_set("./nope")


def test_eval_set_dir_without_task_or_cases(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskFileError, match=r"needs a task\.yaml"):
        load_eval_set(tmp_path / "empty")
    d = make_set(tmp_path, "nocases", ROWS)
    (d / "cases.jsonl").unlink()
    with pytest.raises(TaskFileError, match=r"no cases file: expected one of cases\.jsonl"):
        load_eval_set(d)
    write(d / "cases.jsonl", "\n")
    with raises_at(d / "cases.jsonl", None, "the eval set has no cases"):
        load_eval_set(d)


def test_eval_set_with_csv_cases(tmp_path: Path) -> None:
    d = make_set(tmp_path, "csvset", ROWS)
    (d / "cases.jsonl").unlink()
    write(d / "cases.csv", "id,text,label\nk,nice,pos\n")
    es = load_eval_set(d)
    assert [c.id for c in es.cases] == ["k"] and es.cases_path.name == "cases.csv"


def test_eval_set_errors_carry_the_cases_file(tmp_path: Path) -> None:
    d = make_set(tmp_path, "bad", [*ROWS, {"id": "c3", "text": "x", "label": "neutral"}])
    with raises_at(d / "cases.jsonl", 3, "unknown label 'neutral'.*valid labels: neg, pos"):
        load_eval_set(d)


# --------------------------------------------------------------------------- properties

LABELS = ("negative", "positive")
texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40
).filter(lambda t: t.strip() != "")
valid_rows = st.lists(
    st.fixed_dictionaries(
        {"text": texts, "label": st.sampled_from(LABELS)},
        optional={
            "id": st.one_of(
                st.integers(0, 10**6),
                st.text(min_size=1, max_size=8).filter(lambda s: s.strip() != ""),
            )
        },
    ),
    max_size=15,
)


def _expected(rows: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(str(r["id"]), r["text"], (r["label"],)) for r in rows]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=valid_rows)
def test_valid_rows_round_trip(
    tmp_path: Path, sentiment_task: Task, rows: list[dict[str, Any]]
) -> None:
    # give every row an id, unique within the list (hypothesis may draw repeats)
    seen: set[str] = set()
    for i, r in enumerate(rows):
        if "id" not in r or str(r["id"]) in seen:
            r["id"] = f"gen{i}"
        seen.add(str(r["id"]))
    expected = _expected(rows)
    got = [(c.id, c.text, c.labels) for c in load_cases(rows, sentiment_task)]
    assert got == expected
    p = jsonl(tmp_path / "p.jsonl", rows)
    cases = load_cases(p, sentiment_task)
    assert [(c.id, c.text, c.labels) for c in cases] == expected
    # through the writer and the HF export and back
    write_cases_jsonl(cases, tmp_path / "w.jsonl", sentiment_task)
    assert [
        (c.id, c.text, c.labels) for c in load_cases(tmp_path / "w.jsonl", sentiment_task)
    ] == expected
    ds = to_hf_dataset(cases, sentiment_task)
    assert [(c.id, c.text, c.labels) for c in load_cases(ds, sentiment_task)] == expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "text": texts,
                "labels": st.lists(st.sampled_from(("joy", "anger", "surprise")), unique=True),
            }
        ),
        max_size=10,
    )
)
def test_multilabel_rows_round_trip_without_ids(
    tmp_path: Path, tags_task: Task, rows: list[dict[str, Any]]
) -> None:
    p = jsonl(tmp_path / "m.jsonl", rows)
    cases = load_cases(p, tags_task)
    assert [(c.text, c.labels) for c in cases] == [(r["text"], tuple(r["labels"])) for r in rows]
    assert len({c.id for c in cases}) == len(cases)
    assert all(c.id.startswith(generated_id(c.text)) for c in cases)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["text", "label", "labels", "id", "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


def _only_task_file_errors(call: Any) -> None:
    with contextlib.suppress(TaskFileError):
        call()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=60),
        min_size=1,
        max_size=6,
    )
)
def test_garbage_text_lines_only_ever_raise_task_file_error(
    tmp_path: Path, sentiment_task: Task, lines: list[str]
) -> None:
    p = tmp_path / "g.jsonl"
    p.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    lines[0] = lines[0].removeprefix("\ufeff")  # a leading BOM is dropped, as editors do
    nonblank = [i + 1 for i, s in enumerate(lines) if s.strip()]
    try:
        load_cases(p, sentiment_task)
    except TaskFileError as exc:
        assert str(exc).startswith(f"{p}:")
        assert exc.line in nonblank
    else:
        # random text is never a valid case line: only blank files load (as no cases)
        assert not nonblank


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(json_values, min_size=1, max_size=6))
def test_garbage_json_rows_only_ever_raise_task_file_error(
    tmp_path: Path, tags_task: Task, sentiment_task: Task, values: list[Any]
) -> None:
    p = jsonl(tmp_path / "j.jsonl", values)
    for task in (sentiment_task, tags_task):
        _only_task_file_errors(lambda t=task: load_cases(p, t))
        _only_task_file_errors(lambda t=task: load_cases(values, t))
        q = tmp_path / "j.parquet"
        try:
            pq.write_table(
                pa.table(
                    {
                        "text": [json.dumps(v) for v in values],
                        "labels": [json.dumps(v) for v in values],
                    }
                ),
                q,
            )
        except pa.ArrowException:
            continue
        _only_task_file_errors(lambda t=task, q=q: load_cases(q, t))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".parquet"]))
def test_garbage_bytes_only_ever_raise_task_file_error(
    tmp_path: Path, sentiment_task: Task, data: bytes, suffix: str
) -> None:
    p = tmp_path / f"b{suffix}"
    p.write_bytes(data)
    _only_task_file_errors(lambda: load_cases(p, sentiment_task))
