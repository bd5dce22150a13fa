"""Record lines and digests: the client's CSV lines, one scheme for dicts and Arrow, MD5 as specified."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.serialize import serialize_ingest_data
from airflow_provider_salesforce_bulk.sync import RowFormatter, digest_of
from airflow_provider_salesforce_bulk.sync.digest import DIGEST_SQL

FIELDS = ["Ext__c", "A", "B"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc))),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=5),
)


def lines(formatter: RowFormatter, records: Any, base: int = 0) -> list[str]:
    return [str(line) for line in formatter.lines(records, base).column("line").to_pylist()]


@settings(deadline=None)
@given(rows=st.lists(st.tuples(scalars, scalars), max_size=20))
def test_the_lines_are_the_serializers(rows: list[tuple[Any, Any]]) -> None:
    formatter = RowFormatter(FIELDS, "Ext__c", none_as="null", allow_na_marker=True)
    records = [{"Ext__c": f"X{i}", "A": a, "B": b} for i, (a, b) in enumerate(rows)]
    if not records:
        return
    csv = next(iter(serialize_ingest_data(records, FIELDS, none_as="null", allow_na_marker=True))).decode()
    assert "".join(lines(formatter, records)) == csv.split("\n", 1)[1]


def test_dicts_and_arrow_give_the_same_lines_and_ids() -> None:
    records = [
        {"Ext__c": f"E{i}", "A": None if i % 3 else f'a,{i}"q', "B": i * 0.5, "C": date(2024, 1, i + 1)}
        for i in range(10)
    ]
    fields = [*FIELDS, "C"]
    by_dicts = RowFormatter(fields, "Ext__c").lines(records, 5)
    by_arrow = RowFormatter(fields, "Ext__c").lines(pa.RecordBatch.from_pylist(records), 5)
    assert by_dicts.equals(by_arrow)
    assert by_dicts.column("row").to_pylist() == list(range(5, 15))
    # The external id as sent, unquoted, whatever its type.
    numbered = RowFormatter(["Ext__c", "A"], "Ext__c")
    assert numbered.lines([{"Ext__c": 7, "A": "x"}], 0).column("external_id").to_pylist() == ["7"]
    quoted = numbered.lines(pa.RecordBatch.from_pylist([{"Ext__c": 'a,"b', "A": "x"}]), 0)
    assert quoted.column("external_id").to_pylist() == ['a,"b']
    assert quoted.column("line").to_pylist() == ['"a,""b",x\n']


def test_records_the_job_sends_alike_have_one_line_and_others_differ() -> None:
    empty = RowFormatter(FIELDS, "Ext__c")
    null = RowFormatter(FIELDS, "Ext__c", none_as="null", allow_na_marker=True)
    base = {"Ext__c": "X", "A": None, "B": 1}

    def line(f: RowFormatter, record: dict[str, Any]) -> str:
        return lines(f, [record])[0]

    assert line(empty, base) == line(empty, {"Ext__c": "X", "A": "", "B": "1"})
    assert line(empty, base) == line(empty, {"Ext__c": "X", "B": 1})  # a missing column is empty
    assert line(null, base) == line(null, {"Ext__c": "X", "A": "#N/A", "B": 1})
    assert line(null, base) != line(null, {"Ext__c": "X", "A": "", "B": 1})
    assert line(empty, base) != line(empty, {"Ext__c": "X", "A": None, "B": 2})
    # Values that would run together in a plain concatenation stay apart (CSV quoting).
    assert line(empty, {"Ext__c": "X", "A": "a,", "B": "b"}) != line(
        empty, {"Ext__c": "X", "A": "a", "B": ",b"}
    )
    assert line(empty, {"Ext__c": "X", "A": 1.5, "B": True}) == line(
        empty, {"Ext__c": "X", "A": Decimal("1.5"), "B": "true"}
    )
    assert line(empty, {"Ext__c": "X", "A": datetime(2024, 1, 2, 3, 4, 5), "B": 1}) == (
        "X,2024-01-02T03:04:05.000+00:00,1\n"
    )


def test_the_engine_computes_the_reference_digest() -> None:
    texts = ["X,a,1\n", '"q,""",,\n', "é,ü,€\n", ""]
    lines_table = pa.table({"line": texts})
    con = duckdb.connect()
    con.register("lines_table", lines_table)
    got = con.execute(f"SELECT {DIGEST_SQL} FROM lines_table").fetchall()  # noqa: S608 - a constant
    assert got == [digest_of(text.encode()) for text in texts]
    # The reference is MD5 as specified (RFC 1321), read as a little-endian 128-bit integer.
    lo, hi = digest_of(b"X,a,1\n")
    assert (hi << 64 | lo).to_bytes(16, "little") == hashlib.md5(b"X,a,1\n").digest()  # noqa: S324


PROBE = """
from airflow_provider_salesforce_bulk.sync import RowFormatter, digest_of
line = RowFormatter(["Ext__c", "A", "B"], "Ext__c").lines([{"Ext__c": "X", "A": 1.25, "B": "ü"}], 0)
print(digest_of(line.column("line")[0].as_py().encode()))
"""


def test_the_digest_is_the_same_in_other_processes_and_hash_seeds() -> None:
    outputs = {
        subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.strip()
        for seed in ("0", "1", "12345")
    }
    assert outputs == {str(digest_of(b"X,1.25,\xc3\xbc\n"))}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"Ext__c": "X", "A": "a\x00b", "B": 1}, "record 7, field 'A': the value holds a NUL character"),
        ({"Ext__c": "X", "A": "#N/A", "B": 1}, "record 7, field 'A': the value is the text '#N/A'"),
        ({"Ext__c": "X", "A": float("nan"), "B": 1}, "record 7, field 'A'"),
        ({"Ext__c": "X", "A": "\ud800", "B": 1}, "record 7, field 'A': the value holds a lone surrogate"),
        ({"Ext__c": "X", "A": [1], "B": 1}, "record 7, field 'A': unsupported value type 'list'"),
        ("not a dict", "record 7 is a str"),
    ],
)
def test_values_the_job_cannot_send_are_errors_naming_record_and_field(record: Any, expected: str) -> None:
    with pytest.raises(InputError) as raised:
        RowFormatter(FIELDS, "Ext__c").lines([record], 7)
    assert expected in str(raised.value)


def test_a_relationship_fills_its_column() -> None:
    formatter = RowFormatter(["Ext__c", "Account.Ext__c"], "Ext__c")
    assert lines(formatter, [{"Ext__c": "X", "Account": {"Ext__c": date(2024, 1, 2)}}]) == ["X,2024-01-02\n"]
