"""The streamed diff and the advance against a brute-force model, for random inputs and states."""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.sync import DeleteGuardError, plan_sync, read_current, storage_for
from tests.sync.helpers import FIELDS, run, sf_id, spec

ids = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=6)
values = st.one_of(
    st.none(), st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=4), st.integers(-3, 3)
)
tables = st.dictionaries(ids, st.tuples(values, values), max_size=40)


def rows(table: dict[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    return [{"Ext__c": ext, "Name": a, "Amount__c": b} for ext, (a, b) in table.items()]


def sent_text(value: Any) -> str:
    """What the job sends for a value (none_as="empty")."""
    return "" if value is None else str(value)


def same(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    return all(sent_text(x) == sent_text(y) for x, y in zip(a, b, strict=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=tables, second=tables, failing=st.sets(ids, max_size=10), run_rows=st.sampled_from([3, 200_000]))
def test_the_diff_and_the_advance_match_a_model(
    first: dict[str, tuple[Any, Any]], second: dict[str, tuple[Any, Any]], failing: set[str], run_rows: int
) -> None:
    with tempfile.TemporaryDirectory() as root:
        # First run: everything new; the failing records are not accepted and stay out of the state.
        one = run(root, rows(first), accept=lambda ext: ext not in failing, run_rows=run_rows)
        assert (one.counts.read, one.counts.new, one.counts.unchanged) == (len(first), len(first), 0)
        state = {ext: v for ext, v in first.items() if ext not in failing}
        assert one.state_rows == len(state)
        # Second run, with deletes (no guard): the model says what is sent and deleted.
        two = run(root, rows(second), spec(delete_missing=True, max_delete_ratio=1.0), run_rows=run_rows)
        new = {ext for ext in second if ext not in state}
        changed = {ext for ext in second if ext in state and not same(state[ext], second[ext])}
        gone = {ext for ext in state if ext not in second}
        assert two.counts.new == len(new)
        assert two.counts.changed == len(changed)
        assert two.counts.unchanged == len(second) - len(new) - len(changed)
        assert two.counts.to_delete == len(gone)
        assert two.counts.state_rows == len(state)
        # Sent in input order, as the job's texts (a None may come back as "": the job sends the same).
        order = [ext for ext in second if ext in new | changed]
        assert [r["Ext__c"] for r in two.sent] == order
        for record in two.sent:
            a, b = second[str(record["Ext__c"])]
            assert (sent_text(record["Name"]), sent_text(record["Amount__c"])) == (sent_text(a), sent_text(b))
        assert sorted(two.deleted) == sorted((ext, sf_id(ext)) for ext in gone)
        # A third run of the same input sends nothing and deletes nothing.
        three = run(root, rows(second), spec(delete_missing=True), run_rows=run_rows)
        assert (three.counts.sent, three.counts.to_delete, three.counts.unchanged) == (0, 0, len(second))


def test_failed_records_are_sent_again_and_the_others_not(tmp_path: pathlib.Path) -> None:
    records = [{"Ext__c": f"E{i}", "Name": f"n{i}", "Amount__c": i} for i in range(10)]
    first = run(tmp_path, records, accept=lambda ext: ext not in {"E3", "E7"})
    assert (first.counts.new, first.state_rows, first.version) == (10, 8, 1)
    records[1]["Amount__c"] = 100  # changed, and its update fails: the old entry stays
    second = run(tmp_path, records, accept=lambda ext: ext != "E1")
    assert [r["Ext__c"] for r in second.sent] == ["E1", "E3", "E7"]
    assert (second.counts.new, second.counts.changed, second.counts.unchanged) == (2, 1, 7)
    third = run(tmp_path, records)
    assert [r["Ext__c"] for r in third.sent] == ["E1"]
    assert run(tmp_path, records).counts.sent == 0


def test_a_failed_delete_stays_in_the_state_and_is_deleted_next_run(tmp_path: pathlib.Path) -> None:
    records = [{"Ext__c": f"E{i}", "Name": "n", "Amount__c": i} for i in range(10)]
    run(tmp_path, records)
    deletes = spec(delete_missing=True, max_delete_ratio=0.5)
    second = run(tmp_path, records[:7], deletes, delete_ok=lambda ext: ext != "E8")
    assert sorted(e for e, _ in second.deleted) == ["E7", "E8", "E9"]
    assert second.state_rows == 8
    third = run(tmp_path, records[:7], deletes)
    assert third.deleted == [("E8", sf_id("E8"))]
    assert third.state_rows == 7
    # Without delete_missing an absent record is neither deleted nor forgotten.
    fourth = run(tmp_path, records[:5])
    assert (fourth.deleted, fourth.counts.to_delete, fourth.state_rows) == ([], 0, 7)


def test_the_delete_guard_fails_before_anything_is_sent_naming_the_numbers(tmp_path: pathlib.Path) -> None:
    records = [{"Ext__c": f"E{i:02d}", "Name": "n", "Amount__c": i} for i in range(50)]
    run(tmp_path, records)
    with tempfile.TemporaryDirectory() as workdir, pytest.raises(DeleteGuardError) as raised:
        plan_sync(tmp_path, records[:44], spec(delete_missing=True), workdir)
    message = str(raised.value)
    assert "6 of the 50 records" in message
    assert "max_delete_ratio=0.1" in message
    assert "at most 5" in message
    # Exactly at the ratio passes.
    assert run(tmp_path, records[:45], spec(delete_missing=True)).counts.to_delete == 5
    assert read_current(storage_for(tmp_path))[0].row_count == 45  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (
            [{"Ext__c": "A", "Name": "x", "Amount__c": 1}, {"Ext__c": "A", "Name": "y", "Amount__c": 2}],
            "the external id 'A' is given twice in the input (records 0 and 1)",
        ),
        (
            [{"Ext__c": "A", "Name": "x", "Amount__c": 1}, {"Ext__c": None, "Name": "y", "Amount__c": 2}],
            "record 1 has no Ext__c (the external id field is None)",
        ),
        (
            [{"Ext__c": "", "Name": "y", "Amount__c": 2}],
            "record 0 has no Ext__c (the external id field is empty)",
        ),
        ([{"Name": "y", "Amount__c": 2}], "record 0 has no Ext__c"),
        (
            [{"Ext__c": "A", "Name": b"x", "Amount__c": 1}],
            "record 0, field 'Name': unsupported value type 'bytes'",
        ),
        ([{"Ext__c": "A", "Other": 1}], "record 0 has the field 'Other', which is not in fieldnames"),
    ],
)
def test_bad_input_is_an_error_naming_the_row(
    tmp_path: pathlib.Path, records: list[dict[str, Any]], expected: str
) -> None:
    with tempfile.TemporaryDirectory() as workdir, pytest.raises(InputError) as raised:
        plan_sync(tmp_path / "state", records, spec(), workdir, run_rows=1)
    assert expected in str(raised.value)
    assert not (tmp_path / "state").exists()


def test_arrow_batches_and_dicts_give_the_same_plan(tmp_path: pathlib.Path) -> None:
    import pyarrow as pa

    records = [
        {"Ext__c": f"E{i}", "Name": None if i % 3 else f"n{i}", "Amount__c": i * 0.5} for i in range(20)
    ]
    run(tmp_path, records)
    batch = pa.RecordBatch.from_pylist(records[:10])
    table = pa.Table.from_pylist(records[10:])
    again = run(tmp_path, [batch, table])
    assert (again.counts.read, again.counts.unchanged) == (20, 20)


def test_a_changed_column_set_sends_every_record_once(tmp_path: pathlib.Path) -> None:
    records = [{"Ext__c": f"E{i}", "Name": "n", "Amount__c": i} for i in range(5)]
    run(tmp_path, records)
    wider = spec(fieldnames=(*FIELDS, "Phone"))
    assert run(tmp_path, records, wider).counts.changed == 5
    assert run(tmp_path, records, wider).counts.sent == 0


def test_a_record_not_accepted_under_a_new_column_set_is_sent_again(tmp_path: pathlib.Path) -> None:
    records = [{"Ext__c": f"E{i}", "Name": "n", "Amount__c": i} for i in range(5)]
    run(tmp_path, records)
    wider = spec(fieldnames=(*FIELDS, "Phone"))
    # Its old entry is kept (its Id is still needed), but never compares equal under the new columns.
    assert run(tmp_path, records, wider, accept=lambda ext: ext != "E0").counts.changed == 5
    again = run(tmp_path, records, wider)
    assert (again.counts.changed, [r["Ext__c"] for r in again.sent]) == (1, ["E0"])
    assert run(tmp_path, records, wider).counts.sent == 0


def test_none_comes_back_as_the_job_writes_it(tmp_path: pathlib.Path) -> None:
    records = [
        {"Ext__c": "A", "Name": None, "Amount__c": 'x,"y"\nz'},
        {"Ext__c": "B", "Name": "", "Amount__c": 1},
    ]
    nulls = run(tmp_path / "null", records, spec(none_as="null"))
    assert nulls.sent == [
        {"Ext__c": "A", "Name": None, "Amount__c": 'x,"y"\nz'},
        {"Ext__c": "B", "Name": "", "Amount__c": "1"},
    ]
    empty = run(tmp_path / "empty", records)
    assert [r["Name"] for r in empty.sent] == ["", ""]  # None and "" are the same empty field


@settings(max_examples=50, deadline=None)
@given(
    first=tables,
    second=tables,
    failing=st.sets(ids, max_size=10),
    read_rows=st.sampled_from([1, 2, 5, 65_536]),
)
def test_the_merged_advance_writes_the_bytes_of_the_sorted_one(
    first: dict[str, tuple[Any, Any]], second: dict[str, tuple[Any, Any]], failing: set[str], read_rows: int
) -> None:
    """Few changes are merged into the old state's order (read a row group at a time), many are sorted
    with it in DuckDB: the same next state, byte for byte, whatever the row groups."""
    from airflow_provider_salesforce_bulk.sync import advance

    states = []
    with tempfile.TemporaryDirectory() as root:
        for merge_rows in (advance.MERGE_ROWS, 0):
            location = f"{root}/{merge_rows}"
            run(location, rows(first))
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(advance, "MERGE_ROWS", merge_rows)
                patch.setattr(advance, "ROW_GROUP_ROWS", read_rows)
                two = run(
                    location,
                    rows(second),
                    spec(delete_missing=True, max_delete_ratio=1.0),
                    accept=lambda ext: ext not in failing,
                    delete_ok=lambda ext: ext not in failing,
                )
            version = f"v{two.version}"
            states.append((two.version, pathlib.Path(location, version, "state.parquet").read_bytes()))
    assert states[0] == states[1]
