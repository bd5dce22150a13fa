"""Record digests: the job's texts, stable across processes, changed by the column set."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.serialize import serialize_ingest_data, value_text
from airflow_provider_salesforce_bulk.sync import RecordDigester

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


@given(a=scalars, b=scalars)
def test_the_texts_are_the_serializers(a: Any, b: Any) -> None:
    digester = RecordDigester(FIELDS, allow_na_marker=True)
    texts = digester.texts({"Ext__c": "X", "A": a, "B": b}, 0)
    assert texts == ["X", *(None if v is None else value_text(v) for v in (a, b))]
    # And what the job's CSV holds for the record is those texts.
    csv = b"".join(
        serialize_ingest_data([dict(zip(FIELDS, texts, strict=True))], FIELDS, allow_na_marker=True)
    )
    assert csv == b"".join(
        serialize_ingest_data([{"Ext__c": "X", "A": a, "B": b}], FIELDS, allow_na_marker=True)
    )


def test_records_the_job_sends_alike_have_one_digest_and_others_differ() -> None:
    empty = RecordDigester(FIELDS)
    null = RecordDigester(FIELDS, none_as="null", allow_na_marker=True)

    def digest(d: RecordDigester, record: dict[str, Any]) -> bytes:
        return d.digest(d.texts(record, 0), 0)

    base = {"Ext__c": "X", "A": None, "B": 1}
    assert digest(empty, base) == digest(empty, {"Ext__c": "X", "A": "", "B": "1"})
    assert digest(empty, base) == digest(empty, {"Ext__c": "X", "B": 1})  # a missing column is empty
    assert digest(null, base) == digest(null, {"Ext__c": "X", "A": "#N/A", "B": 1})
    assert digest(null, base) != digest(null, {"Ext__c": "X", "A": "", "B": 1})
    assert digest(empty, base) != digest(empty, {"Ext__c": "X", "A": None, "B": 2})
    assert digest(empty, {"Ext__c": "X", "A": "a", "B": "b"}) != digest(
        empty, {"Ext__c": "X", "A": "ab", "B": ""}
    )
    assert digest(empty, {"Ext__c": "X", "A": 1.5, "B": True}) == digest(
        empty, {"Ext__c": "X", "A": Decimal("1.5"), "B": "true"}
    )
    renamed = RecordDigester(["Ext__c", "A", "C"])
    assert digest(empty, base) != digest(renamed, {"Ext__c": "X", "A": None, "C": 1})
    assert len(digest(empty, base)) == 16


PROBE = """
from datetime import datetime
from airflow_provider_salesforce_bulk.sync import RecordDigester
d = RecordDigester(["Ext__c", "A", "B"])
record = {"Ext__c": "ünï-\\u4e2d", "A": datetime(2024, 5, 6, 7, 8, 9), "B": 1.25}
print(d.digest(d.texts(record, 0), 0).hex())
"""


def test_the_digest_is_the_same_in_other_processes_and_hash_seeds() -> None:
    digester = RecordDigester(FIELDS)
    record = {"Ext__c": "ünï-中", "A": datetime(2024, 5, 6, 7, 8, 9), "B": 1.25}
    here = digester.digest(digester.texts(record, 0), 0).hex()
    for seed in ("0", "1", "12345"):
        out = subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert out.stdout.strip() == here


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"Ext__c": "X", "A": "a\x00b", "B": 1}, "record 7 holds a NUL character"),
        ({"Ext__c": "X", "A": "#N/A", "B": 1}, "record 7, field 'A': the text '#N/A'"),
        ({"Ext__c": "X", "A": float("nan"), "B": 1}, "record 7, field 'A': nan is not a number"),
        ({"Ext__c": "X", "A": "\ud800", "B": 1}, "record 7 holds a lone surrogate"),
        ({"Ext__c": "X", "A": [1], "B": 1}, "record 7, field 'A': unsupported value type 'list'"),
        ("not a dict", "record 7 is a str"),
    ],
)
def test_values_the_job_cannot_send_are_errors_naming_record_and_field(record: Any, expected: str) -> None:
    digester = RecordDigester(FIELDS)
    with pytest.raises(InputError) as raised:
        digester.digest(digester.texts(record, 7), 7)
    assert expected in str(raised.value)


def test_a_relationship_fills_its_column() -> None:
    digester = RecordDigester(["Ext__c", "Account.Ext__c"])
    assert digester.texts({"Ext__c": "X", "Account": {"Ext__c": date(2024, 1, 2)}}, 0) == ["X", "2024-01-02"]


@given(rows=st.lists(st.tuples(scalars, scalars), max_size=30), mixed=st.booleans())
def test_a_batch_gives_what_records_one_by_one_give(rows: list[tuple[Any, Any]], mixed: bool) -> None:
    digester = RecordDigester(FIELDS, none_as="null", allow_na_marker=True)
    records: list[Any] = [{"Ext__c": f"X{i}", "A": a, "B": b} for i, (a, b) in enumerate(rows)]
    if mixed and records:
        records[-1] = {"Ext__c": "last", "B": 1}  # a missing column: the batch goes record by record
    texts, digests = digester.batch(records, 5)
    one_by_one = [digester.texts(record, i) for i, record in enumerate(records)]
    assert [list(t) for t in texts] == one_by_one
    assert digests == [digester.digest(t, i) for i, t in enumerate(one_by_one)]
