"""Review decisions in the store (migration 005): decide, undo, get, counts; one decision per
item when two people label it at once; an old store upgrades with its rows kept. The suite runs
on SQLite and on a real PostgreSQL (``db_url``)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from llmclf.errors import ReviewConflict, StoreError
from llmclf.store import MIGRATIONS, Store


@pytest.fixture
def store(db_url: str) -> Store:
    """Each test runs on a SQLite file and on a PostgreSQL database (conftest's ``db_url``)."""
    return Store(db_url)


def pred(label: str) -> dict:
    return {"labels": [label], "scores": {label: 0.6}}


def test_decide_get_counts_and_undo(db_url: str) -> None:
    store = Store(db_url)
    a = store.review_add("sst2", "meh", pred("positive"))
    b = store.review_add("sst2", "fine", pred("positive"))
    store.review_add("other", "x", pred("a"))
    d = store.review_decide(a, "labelled", ["negative"], reviewer="ann")
    assert (d["action"], d["gold"], d["reviewer"], d["task"]) == (
        "labelled", ["negative"], "ann", "sst2"
    )
    s = store.review_decide(b, "skipped")
    row = store.review_get(a)
    assert row is not None
    assert (row["status"], row["gold"], row["decision"]) == ("labelled", ["negative"], d["id"])
    assert store.review_counts("sst2") == {"pending": 0, "labelled": 1, "skipped": 1}
    assert store.review_counts() == {"pending": 1, "labelled": 1, "skipped": 1}
    assert store.review_tasks() == ["other", "sst2"]

    back = store.review_undo(s["id"])
    assert (back["id"], back["status"], back["gold"], back["decision"]) == (
        b, "pending", None, None
    )
    assert store.review_counts("sst2") == {"pending": 1, "labelled": 1, "skipped": 0}
    # nothing is lost: the undone decision is kept, marked undone
    (hist,) = store.review_decisions(b)
    assert hist["action"] == "skipped" and hist["undone"] is not None
    with pytest.raises(ReviewConflict, match="no longer the current one"):
        store.review_undo(s["id"])
    assert store.review_get(999) is None


def test_a_second_decision_on_one_item_is_a_conflict_naming_the_first(db_url: str) -> None:
    store = Store(db_url)
    rid = store.review_add("sst2", "meh", pred("positive"))
    store.review_decide(rid, "labelled", ["negative"], reviewer="ann")
    with pytest.raises(ReviewConflict) as err:
        store.review_decide(rid, "labelled", ["positive"], reviewer="bob")
    assert str(err.value).startswith(f"review #{rid} was already labelled negative by ann at ")
    assert err.value.current is not None and err.value.current["reviewer"] == "ann"
    row = store.review_get(rid)
    assert row is not None and row["gold"] == ["negative"]
    assert len(store.review_decisions(rid)) == 1
    with pytest.raises(StoreError, match="no review row with id 4242"):
        store.review_decide(4242, "skipped")
    with pytest.raises(StoreError, match="needs the gold labels"):
        store.review_decide(rid, "labelled", [])


def test_two_people_at_once_end_with_one_recorded_decision(db_url: str) -> None:
    path = db_url
    ids = [Store(path).review_add("sst2", f"text {i}", pred("positive")) for i in range(20)]
    results: dict[str, list[object]] = {"ann": [], "bob": []}
    barrier = threading.Barrier(2)

    def person(name: str, label: str) -> None:
        st = Store(path)  # each person has their own connections, as two servers would
        barrier.wait()
        for rid in ids:
            try:
                results[name].append(st.review_decide(rid, "labelled", [label], reviewer=name))
            except ReviewConflict as exc:
                results[name].append(exc)

    threads = [threading.Thread(target=person, args=("ann", "negative")),
               threading.Thread(target=person, args=("bob", "positive"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = Store(path)
    for i, rid in enumerate(ids):
        outcomes = [results["ann"][i], results["bob"][i]]
        wins = [o for o in outcomes if isinstance(o, dict)]
        assert len(wins) == 1, outcomes
        (decisions,) = [st.review_decisions(rid)]
        assert len(decisions) == 1 and decisions[0]["id"] == wins[0]["id"]
        row = st.review_get(rid)
        assert row is not None and row["gold"] == wins[0]["gold"]
    assert st.count("review_decisions") == 20


def test_a_store_from_before_005_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied REAL)")
    for name, sql in MIGRATIONS:
        if name.startswith("005"):
            break
        conn.executescript(sql)
        conn.execute("INSERT INTO _migrations VALUES (?, 0)", (name,))
    conn.execute(
        "INSERT INTO review (created, task, text, prediction, status, gold) "
        "VALUES (1, 'sst2', 'old row', ?, 'labelled', '[\"negative\"]')",
        ('{"labels": ["positive"]}',),
    )
    conn.commit()
    conn.close()
    st = Store(path)
    (row,) = st.review_list(status="labelled")
    assert (row["text"], row["gold"], row["decision"]) == ("old row", ["negative"], None)
    rid = st.review_add("sst2", "new", pred("positive"))
    assert st.review_decide(rid, "skipped")["action"] == "skipped"
    assert st.review_labels_since("sst2", 0) == [["positive"], ["positive"]]
